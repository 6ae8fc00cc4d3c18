"""Where images come from, and how their bytes become RGB pixels.

Sources are image files, folders or globs (ImageFolder layout for labels), WebDataset tar shards, or a
Hugging Face dataset (`hf:NAME[:SPLIT]`); named sources (`fashion-mnist:...`, `embedded:...`) are arrays made in
code, which `fmkit.data.named_images` builds. Listing a source yields small picklable records that re-read their
bytes on demand, so worker processes decode them in parallel without the bytes ever being held in memory.
Bad bytes never raise anything but `BadImage`, whose reason is the key they are counted under.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageOps

from fmkit.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SHARD_SUFFIX = ".tar"
HF_PREFIX = "hf:"
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L"})
NAMED_PREFIXES = ("fashion-mnist:", "embedded:")
NAMED_SOURCES = "fashion-mnist:train|test[:COUNT], embedded:photos, embedded:digits:train|test"
FILE_SOURCES = f"image files ({', '.join(sorted(IMAGE_SUFFIXES))}), .tar shards or hf:NAME[:SPLIT]"
EXPECTED_SOURCES = f"{FILE_SOURCES}, or a named source ({NAMED_SOURCES})"


class BadImage(Exception):
    """An image training must never meet; `reason` is the short key it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """RGB pixels as displayed (EXIF orientation, first frame, alpha over white), or BadImage."""
    if not data:
        raise BadImage("empty")
    with warnings.catch_warnings():
        # Per-image warnings (corrupt EXIF, ...) would flood the log; an unusable image is counted instead.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, max_pixels)
        try:
            return _to_rgb(ImageOps.exif_transpose(image))
        except Exception as error:  # plugins raise OSError, ValueError, SyntaxError, struct.error... on bad data
            raise BadImage("truncated" if "truncated" in str(error).lower() else "undecodable") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only, so an oversized image is refused before its pixels are decompressed."""
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage("too_large") from None
    except Exception:  # UnidentifiedImageError, or whatever a plugin raises on a malformed header
        raise BadImage("undecodable") from None
    if image.width * image.height > max_pixels:
        raise BadImage("too_large")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale to 8 bits; Pillow's own conversion clips 16-bit values instead of scaling them."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    white = 65535.0 if image.mode in SIXTEEN_BIT_MODES else _white_level(values, image.mode)
    gray = np.clip(np.rint(values * (255.0 / white)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _white_level(values: np.ndarray, mode: str) -> float:
    """I and F images carry no bit depth: floats up to 1 are unit-scaled, values above 255 are 16-bit."""
    peak = float(values.max(initial=0.0))
    if mode == "F" and peak <= 1.0:
        return 1.0
    return 255.0 if peak <= 255 else 65535.0


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic, antialiased), centre crop: uint8 [size, size, 3]."""
    return np.asarray(ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC), dtype=np.uint8)


def is_named_source(source: str) -> bool:
    """Whether `source` names an array made in code rather than files on disk."""
    return source.startswith(NAMED_PREFIXES)


def resize_grey_squares(grey: np.ndarray, size: int) -> np.ndarray:
    """Square grey uint8 images [N, s, s] as uint8 RGB [N, size, size, 3], resized like `resize_square`.

    Pillow resizes a 28-pixel image in about 0.1 ms, so even 70,000 of them need no worker pool.
    """
    resized = np.empty((len(grey), size, size), dtype=np.uint8)
    for i, image in enumerate(grey):
        resized[i] = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.repeat(resized[..., None], 3, axis=3)


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """One image that a worker process can read again later, without its bytes held in memory."""

    name: str
    label: str | None = None
    LABEL_LAYOUT: ClassVar[str] = ""

    def read(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class FileImage(ImageRecord):
    path: str
    LABEL_LAYOUT: ClassVar[str] = "one folder per class: {source}/<class name>/<image>"

    def read(self) -> bytes:
        return Path(self.path).read_bytes()


@dataclass(frozen=True, kw_only=True)
class ShardImage(ImageRecord):
    shard: str
    offset: int
    size: int
    LABEL_LAYOUT: ClassVar[str] = "a .cls member, or a .json member with a 'label', in every sample"

    def read(self) -> bytes:
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) < self.size:
            raise BadImage("truncated_shard")
        return data


@dataclass(frozen=True, kw_only=True)
class DatasetImage(ImageRecord):
    dataset: str
    split: str
    column: str
    row: int
    LABEL_LAYOUT: ClassVar[str] = "a ClassLabel column, or a column named 'label' or 'labels'"

    def read(self) -> bytes:
        value = hf_dataset(self.dataset, self.split).dataset[self.row][self.column] or {}
        if value.get("bytes"):
            return value["bytes"]
        return Path(value["path"]).read_bytes() if value.get("path") else b""


@dataclass
class Listing:
    """What listing found besides records: losses that no record stands for, and declared class lists."""

    skipped: Counter = field(default_factory=Counter)
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The class names of each source that declares them (a HF ClassLabel column), in the source's order."""


def iter_image_records(sources: Sequence[str], labelled: bool, listing: Listing | None = None) -> Iterator[ImageRecord]:
    """Every image of every source in a fixed order; labels only when `labelled`, and then on every record."""
    listing = Listing() if listing is None else listing
    for source in sources:
        found = 0
        for record in _source_records(source, labelled, listing):
            if labelled and record.label is None:
                layout = record.LABEL_LAYOUT.format(source=source)
                raise DataError(f"{source}: {record.name} has no label (expected {layout})")
            found += 1
            yield record
        if not found:
            raise DataError(f"{source}: no images found (expected {EXPECTED_SOURCES})")


def source_files(source: str) -> list[Path]:
    """The local files a source reads (images, shards, a HF dataset's Arrow files): what a cache key covers."""
    if source.startswith(HF_PREFIX):
        return [Path(entry["filename"]) for entry in hf_dataset(*hf_spec(source)).dataset.cache_files]
    return [path for path, _root in local_files(source)]


def _source_records(source: str, labelled: bool, listing: Listing) -> Iterator[ImageRecord]:
    if is_named_source(source):
        raise DataError(f"{source}: a named source cannot be listed as files here (expected {FILE_SOURCES})")
    if source.startswith(HF_PREFIX):
        yield from _dataset_records(source, labelled, listing)
        return
    for path, root in local_files(source):
        if path.suffix.lower() == SHARD_SUFFIX:
            yield from _shard_records(path, labelled, listing.skipped)
        else:
            yield FileImage(name=str(path), path=str(path), label=_folder_label(path, root) if labelled else None)


def local_files(source: str) -> list[tuple[Path, Path | None]]:
    """(file, root for ImageFolder labels) for a file, a folder (recursive) or a glob, in sorted order."""
    path = Path(source).expanduser()
    if path.is_file():
        if not _readable_suffix(path):
            raise DataError(f"{source}: unsupported file type (expected {EXPECTED_SOURCES})")
        return [(path, None)]
    if path.is_dir():
        return [(file, path) for file in _walk(path)]
    if not any(ch in source for ch in "*?["):
        raise DataError(f"{source}: no such file or folder")
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
    if not matches:
        raise DataError(f"{source}: the pattern matches no file")
    root = _glob_root(path)
    files = [file for match in matches for file in (_walk(match) if match.is_dir() else [match])]
    return [(file, root) for file in files if file.is_file() and _readable_suffix(file)]


def _walk(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _readable_suffix(p))


def _readable_suffix(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == SHARD_SUFFIX


def _glob_root(pattern: Path) -> Path:
    """The folder a glob starts from: its components before the first wildcard."""
    parts = pattern.parts
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    return Path(*parts[:fixed]) if fixed else Path()


def _folder_label(path: Path, root: Path | None) -> str | None:
    """ImageFolder layout: the first folder below the root the user gave is the class."""
    parts = path.relative_to(root).parts if root is not None else ()
    return parts[0] if len(parts) > 1 else None


def _shard_records(shard: Path, labelled: bool, skipped: Counter) -> Iterator[ShardImage]:
    """One record per WebDataset sample; a cut or corrupt shard keeps the samples before the damage."""
    samples, intact = shard_samples(shard)
    if not intact:
        skipped["truncated_shard"] += 1
        if samples:
            samples.popitem()  # the sample at the damage may have lost members (its label, say)
    with open(shard, "rb") as handle:
        for key, members in samples.items():
            image = next((info for ext, info in members.items() if f".{ext}" in IMAGE_SUFFIXES), None)
            if image is None:
                skipped["sample_without_image"] += 1
                continue
            yield ShardImage(
                name=f"{shard}:{key}",
                label=_sample_label(handle, members) if labelled else None,
                shard=str(shard),
                offset=image.offset_data,
                size=image.size,
            )


def shard_samples(shard: Path) -> tuple[dict[str, dict[str, tarfile.TarInfo]], bool]:
    """Members grouped by WebDataset key, in shard order, and whether the shard ends where a tar should.

    tarfile stops silently at a cut or corrupt header, so the block after the last member is checked:
    an intact archive has its zero end-of-archive block there.
    """
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if info.isfile():
                    key, ext = split_member(info.name)
                    samples.setdefault(key, {})[ext] = info
            end = tar.offset
    except tarfile.TarError:
        return samples, False
    with open(shard, "rb") as handle:
        handle.seek(end)
        block = handle.read(tarfile.BLOCKSIZE)
    return samples, len(block) == tarfile.BLOCKSIZE and not any(block)


def split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename, the rest the extension."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample_label(handle, members: dict[str, tarfile.TarInfo]) -> str | None:
    """The text of a .cls member, else the "label" of a .json member."""
    try:
        if "cls" in members:
            return _label_text(member_bytes(handle, members["cls"]).decode())
        if "json" in members:
            record = json.loads(member_bytes(handle, members["json"]))
            return _label_text(record.get("label")) if isinstance(record, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def member_bytes(handle, info: tarfile.TarInfo) -> bytes:
    handle.seek(info.offset_data)
    return handle.read(info.size)


def _label_text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


@dataclass(frozen=True)
class _HFDataset:
    dataset: object
    image_column: str
    label_column: str | None
    class_names: tuple[str, ...]


def hf_spec(source: str) -> tuple[str, str]:
    """`hf:NAME[:SPLIT]` as (name, split); the split defaults to "train"."""
    spec = source[len(HF_PREFIX) :]
    name, colon, split = spec.rpartition(":")
    return (name, split) if colon and name else (spec, "train")


@functools.lru_cache(maxsize=8)
def hf_dataset(name: str, split: str) -> _HFDataset:
    """The dataset with its image column left as bytes; cached, so each worker process opens it once."""
    import datasets

    where = f"{HF_PREFIX}{name}"
    local = Path(name).expanduser()
    try:
        dataset = datasets.load_from_disk(str(local)) if local.is_dir() else datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise DataError(f"{where}: {str(error).splitlines()[0]}") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{where}: no split '{split}' (splits: {', '.join(dataset)})")
        dataset = dataset[split]
    features = dataset.features
    image = next((column for column, kind in features.items() if isinstance(kind, datasets.Image)), None)
    if image is None:
        raise DataError(f"{where}: no Image column (columns: {', '.join(features)})")
    class_label = next((column for column, kind in features.items() if isinstance(kind, datasets.ClassLabel)), None)
    label = class_label or next((column for column in ("label", "labels") if column in features), None)
    names = tuple(features[class_label].names) if class_label else ()
    return _HFDataset(dataset.cast_column(image, datasets.Image(decode=False)), image, label, names)


def _dataset_records(source: str, labelled: bool, listing: Listing) -> Iterator[DatasetImage]:
    name, split = hf_spec(source)
    hf = hf_dataset(name, split)
    if hf.class_names:
        listing.classes[source] = hf.class_names
    labels = hf.dataset[hf.label_column] if labelled and hf.label_column else [None] * len(hf.dataset)
    for row, value in enumerate(labels):
        label = _class_name(value, hf.class_names) if labelled else None
        yield DatasetImage(
            name=f"{source}[{row}]", label=label, dataset=name, split=split, column=hf.image_column, row=row
        )


def _class_name(value: object, class_names: tuple[str, ...]) -> str | None:
    """A ClassLabel index as its name (-1 means no label); other label values as text."""
    if class_names and isinstance(value, int):
        return class_names[value] if 0 <= value < len(class_names) else None
    return _label_text(value)
