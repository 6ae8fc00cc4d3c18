"""Image–text pairs: where they come from, and how a batch of them is made in data-loader workers.

Sources are WebDataset tar shards (an image member plus a `.txt` caption or a `.json` holding one), CSV / TSV /
JSONL tables (an image-path column and a caption column), and Hugging Face datasets with an image and a text
column. Listing reads only tar headers and table rows; images and shard captions are read and decoded on
demand, in the workers, so memory does not grow with the dataset and the model is not kept waiting.

Pairs are addressed by index, which is what makes mid-epoch resume exact in sharded data: the resumable
sampler (fmkit.data.loader) picks indices, and an index always names the same shard member. A pair whose
image does not decode or whose caption is empty is replaced by the next good pair, so every batch keeps its
size (ranks must agree on it to gather features); each replacement is reported with its reason.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmkit.data.images import (
    HF_PREFIX,
    IMAGE_SUFFIXES,
    SHARD_SUFFIX,
    BadImage,
    DatasetImage,
    FileImage,
    ImageRecord,
    ShardImage,
    decode_image,
    hf_dataset,
    hf_spec,
    local_files,
    shard_samples,
)
from fmkit.data.loader import sample_seeds
from fmkit.errors import DataError

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
EXPECTED_PAIR_SOURCES = (
    "WebDataset .tar shards (or folders or globs of them), .csv/.tsv/.jsonl tables or hf:NAME[:SPLIT]"
)
MAX_REPLACEMENTS = 64
"""Bad pairs in a row before a batch gives up: past this the data, not a stray file, is broken."""
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
"""open_clip's training crop: a random 90-100% of the image area at aspect 3:4 to 4:3."""


@dataclass(frozen=True)
class ShardCaption:
    """A caption left in its shard until a worker needs it: a `.txt` member, or a key of a `.json` member."""

    shard: str
    offset: int
    size: int
    json_key: str | None = None

    def read(self) -> str:
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if self.json_key is None:
            return data.decode("utf-8", errors="replace")
        try:
            record = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadImage("bad_caption_json") from None
        value = record.get(self.json_key) if isinstance(record, dict) else None
        return value if isinstance(value, str) else ""


@dataclass
class Images:
    """Images by index: records read and decoded on demand, or uint8 [N, H, W, 3] pixels already in memory."""

    records: Sequence[ImageRecord] = ()
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.records)

    def name(self, index: int) -> str:
        return self.records[index].name if self.pixels is None else f"image {index}"

    def load(self, index: int, max_pixels: int) -> Image.Image:
        """RGB pixels, or BadImage with the reason it is unusable."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[index])
        try:
            data = self.records[index].read()
        except OSError:
            raise BadImage("unreadable_file") from None
        return decode_image(data, max_pixels)


@dataclass
class ImageTextPairs:
    images: Images
    captions: Sequence[str | ShardCaption]
    description: str
    skipped: Counter = field(default_factory=Counter)
    """Pairs dropped while listing (rows without a caption, samples without an image, ...), by reason."""

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, index: np.ndarray) -> ImageTextPairs:
        images = self.images
        picked = (
            Images(pixels=images.pixels[index])
            if images.pixels is not None
            else Images(records=[images.records[i] for i in index])
        )
        description = f"{len(index):,} of {self.description}"
        return ImageTextPairs(picked, [self.captions[i] for i in index], description, self.skipped)

    def caption(self, index: int) -> str:
        caption = self.captions[index]
        text = (caption if isinstance(caption, str) else caption.read()).strip()
        if not text:
            raise BadImage("empty_caption")
        return text


@dataclass
class ClassifiedImages:
    """Labelled images for zero-shot classification."""

    images: Images
    labels: np.ndarray
    class_names: list[str]
    description: str
    templates: tuple[str, ...] = ("a photo of a {}.",)
    """Prompts that suit these classes, used unless the run gives its own."""


def load_pairs(sources: str | Sequence[str], image_column: str, caption_column: str) -> ImageTextPairs:
    """Every pair of every source, in a fixed order (what makes an index a stable address)."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    records: list[ImageRecord] = []
    captions: list[str | ShardCaption] = []
    skipped: Counter = Counter()
    for source in sources:
        before = len(records)
        if source.startswith(HF_PREFIX):
            _dataset_pairs(source, caption_column, records, captions)
        elif Path(source).suffix.lower() in TABLE_SUFFIXES:
            _table_pairs(Path(source), image_column, caption_column, records, captions, skipped)
        else:
            _shard_pairs(source, caption_column, records, captions, skipped)
        if len(records) == before:
            raise DataError(f"{source}: no image-text pairs found (expected {EXPECTED_PAIR_SOURCES})")
    description = f"{len(records):,} image-text pairs from {', '.join(sources)}"
    if skipped:
        description += f" ({_reasons(skipped)} skipped while listing)"
    return ImageTextPairs(Images(records=records), captions, description, skipped)


def _table_pairs(table: Path, image_column: str, caption_column: str, records, captions, skipped: Counter) -> None:
    """Rows of a CSV/TSV/JSONL file; image paths are relative to the table's folder unless absolute."""
    if not table.is_file():
        raise DataError(f"{table}: no such file")
    rows = list(_table_rows(table, skipped))
    if rows:
        columns = set(rows[0])
        for column, what in ((image_column, "image_column"), (caption_column, "caption_column")):
            if column not in columns:
                raise DataError(f"{table}: no column '{column}' ({what}); columns: {', '.join(sorted(columns))}")
    for row in rows:
        image, caption = row.get(image_column), row.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            skipped["empty_caption"] += 1
            continue
        path = table.parent / str(image or "")
        if not image or not path.is_file():
            skipped["missing_image_file"] += 1
            continue
        records.append(FileImage(name=str(path), path=str(path)))
        captions.append(caption)


def _table_rows(table: Path, skipped: Counter):
    delimiter = TABLE_SUFFIXES[table.suffix.lower()]
    with table.open(encoding="utf-8-sig", newline="") as handle:  # -sig: spreadsheets start with a BOM
        if delimiter is not None:
            yield from csv.DictReader(handle, delimiter=delimiter)
            return
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                yield row
            else:
                skipped["bad_json_line"] += 1


def _shard_pairs(source: str, caption_key: str, records, captions, skipped: Counter) -> None:
    shards = [path for path, _root in local_files(source) if path.suffix.lower() == SHARD_SUFFIX]
    if not shards:
        raise DataError(f"{source}: no .tar shards found (expected {EXPECTED_PAIR_SOURCES})")
    for shard in shards:
        samples, intact = shard_samples(shard)
        if not intact:
            skipped["truncated_shard"] += 1
            if samples:
                samples.popitem()  # the sample at the damage may have lost members
        for key, members in samples.items():
            image = next((info for ext, info in members.items() if f".{ext}" in IMAGE_SUFFIXES), None)
            text, as_json = members.get("txt"), members.get("json")
            if image is None or (text is None and as_json is None):
                skipped["sample_without_image" if image is None else "sample_without_caption"] += 1
                continue
            member, json_key = (text, None) if text is not None else (as_json, caption_key)
            name = f"{shard}:{key}"
            records.append(ShardImage(name=name, shard=str(shard), offset=image.offset_data, size=image.size))
            captions.append(ShardCaption(str(shard), member.offset_data, member.size, json_key))


def _dataset_pairs(source: str, caption_column: str, records, captions) -> None:
    name, split = hf_spec(source)
    hf = hf_dataset(name, split)
    columns = hf.dataset.column_names
    fallback = next((c for c in ("caption", "text") if c in columns), None)
    column = caption_column if caption_column in columns else fallback
    if column is None:
        raise DataError(f"{source}: no caption column '{caption_column}' (columns: {', '.join(columns)})")
    kind = hf.dataset.features[column]
    if getattr(kind, "dtype", None) not in ("string", "large_string"):
        raise DataError(f"{source}: caption column '{column}' holds {kind}, expected one string per row")
    for row, caption in enumerate(hf.dataset[column]):
        records.append(
            DatasetImage(name=f"{source}[{row}]", dataset=name, split=split, column=hf.image_column, row=row)
        )
        captions.append(caption if isinstance(caption, str) else "")


def _reasons(counts: Counter) -> str:
    return ", ".join(f"{count:,} {reason}" for reason, count in sorted(counts.items()))


# -- pixels ----------------------------------------------------------------------------------------------------


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic), then the centre: what the exported CLIPImageProcessor does."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, int(width * scale)), max(size, int(height * scale))), Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """open_clip's training crop, drawn from a per-sample generator so a resumed run sees the same pixels."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    return center_crop(image, size)


def to_uint8_tensor(images: list[Image.Image]) -> torch.Tensor:
    """[B, 3, H, W] uint8: batches cross process and device boundaries at a quarter of the float size."""
    return torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images])).permute(0, 3, 1, 2)


# -- batches ---------------------------------------------------------------------------------------------------


@dataclass
class PairBatches:
    """Makes a micro-batch of pairs by index, in data-loader workers (picklable, no CUDA)."""

    pairs: ImageTextPairs
    tokenize: object
    """texts -> LongTensor [B, context_length] of token ids."""
    image_size: int
    max_pixels: int
    seed: int
    stream: int
    train: bool

    def __call__(self, indices: np.ndarray, positions: np.ndarray) -> dict:
        seeds = sample_seeds(self.seed, self.stream, positions)
        images, captions, skipped = [], [], []
        for index, seed in zip(indices, seeds, strict=True):
            image, caption = self._first_good(int(index), skipped)
            crop = (
                random_resized_crop(image, self.image_size, np.random.default_rng(seed))
                if self.train
                else center_crop(image, self.image_size)
            )
            images.append(crop)
            captions.append(caption)
        return {
            "pixel_values": to_uint8_tensor(images),
            "input_ids": self.tokenize(captions),
            "captions": captions,
            "skipped": skipped,
        }

    def _first_good(self, index: int, skipped: list[tuple[str, str]]) -> tuple[Image.Image, str]:
        """The pair at `index`, or the next good one after it; bad ones are noted as (reason, name)."""
        for step in range(MAX_REPLACEMENTS):
            candidate = (index + step) % len(self.pairs)
            try:
                caption = self.pairs.caption(candidate)
                return self.pairs.images.load(candidate, self.max_pixels), caption
            except BadImage as bad:
                skipped.append((bad.reason, self.pairs.images.name(candidate)))
        raise DataError(
            f"{MAX_REPLACEMENTS} bad image-text pairs in a row from {self.pairs.images.name(index)} on "
            f"({', '.join(sorted({reason for reason, _ in skipped}))}): the data, not a stray file, is broken"
        )


def classified_pixels(data: ClassifiedImages, indices: np.ndarray, image_size: int, max_pixels: int) -> dict:
    """A batch of evaluation images and their labels; unusable images are left out and reported."""
    images, labels, skipped = [], [], []
    for index in indices:
        try:
            images.append(center_crop(data.images.load(int(index), max_pixels), image_size))
            labels.append(int(data.labels[index]))
        except BadImage as bad:
            skipped.append((bad.reason, data.images.name(int(index))))
    pixels = to_uint8_tensor(images) if images else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
    return {"pixel_values": pixels, "labels": torch.tensor(labels, dtype=torch.long), "skipped": skipped}
