"""Image-text WebDataset shards, from a folder of captioned images or from a list of image URLs (img2dataset).

Both modes write OUT/00000.tar, 00001.tar, ... whose samples hold the image under its format's extension
(jpg, png, webp), the caption as `txt` and metadata as `json`, then OUT/stats.json, which counts every image
left out by reason with a few examples. stats.json is written last, so its presence means the run finished.

Folder mode keeps each image's original bytes, after checking that `decode_image` accepts them: training must
never meet an image that the shards let through. URL mode downloads with img2dataset in a staging folder inside
OUT, moves each shard in only once img2dataset has finished it and removes the staging folder even when
interrupted, so neither mode leaves a cut shard under a shard's name (a killed run leaves hidden files only).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from fmkit.data.image_array import PIL_MAX_PIXELS
from fmkit.data.images import IMAGE_SUFFIXES, BadImage, decode_image
from fmkit.errors import ConfigError, DataError

SHARD_EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
"""Image files kept as they are, under the extension WebDataset decoders expect; other formats are skipped."""
CAPTION_SUFFIXES = (".csv", ".jsonl", ".parquet", ".tsv")
URL_SUFFIXES = (*CAPTION_SUFFIXES, ".txt")
ENCODE_FORMATS = ("jpg", "png", "webp")
ENCODE_QUALITY = {"jpg": 95, "webp": 95, "png": 3}
"""img2dataset's encode_quality is a compression level 0-9 for png; its default of 95 is refused there."""
STATS = "stats.json"
STAGING = ".img2dataset"
EXAMPLES_PER_REASON = 5
PREVIOUS_OUTPUT = ("[0-9]*.tar", "[0-9]*.parquet", STATS, ".*.tmp")
"""What --overwrite removes: the shards, status tables and stats of an earlier run, and its temporary files."""


@dataclass(frozen=True)
class OutputOptions:
    output_dir: Path
    samples_per_shard: int = 1000
    max_pixels: int = PIL_MAX_PIXELS
    """Larger images are skipped as too_large, before their pixels are decompressed."""
    overwrite: bool = False

    def __post_init__(self) -> None:
        _require_positive(samples_per_shard=self.samples_per_shard, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class FolderOptions:
    images: Path
    captions: Path | None = None
    """A CSV/TSV/JSONL/parquet table of image paths (relative to `images`) and captions; without it, each
    image's caption is the text of the NAME.txt next to it."""
    image_column: str = "file"
    caption_column: str = "caption"


@dataclass(frozen=True)
class UrlOptions:
    urls: Path
    url_column: str = "url"
    caption_column: str = "caption"
    image_size: int | None = None
    """Shrink images whose shorter side is longer to this size (keeping the aspect ratio); None keeps the pixels."""
    encode_format: str = "jpg"
    """What img2dataset stores; images already in this format keep their downloaded bytes unless resized."""
    processes: int = 1
    threads: int = 8
    timeout: int = 10
    """Seconds to wait for a server before counting the URL as failed."""

    def __post_init__(self) -> None:
        if self.encode_format not in ENCODE_FORMATS:
            raise ConfigError(f"encode_format '{self.encode_format}': expected one of {', '.join(ENCODE_FORMATS)}")
        _require_positive(processes=self.processes, threads=self.threads, timeout=self.timeout)
        if self.image_size is not None:
            _require_positive(image_size=self.image_size)


def _require_positive(**settings: int) -> None:
    for name, value in settings.items():
        if value < 1:
            raise ConfigError(f"{name} {value}: expected a positive integer")


@dataclass
class ShardStats:
    samples: int = 0
    shards: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    """The first few file names (or URLs) of each skip reason, to look at."""

    def skip(self, reason: str, name: str) -> None:
        self.skipped[reason] += 1
        names = self.examples.setdefault(reason, [])
        if len(names) < EXAMPLES_PER_REASON:
            names.append(name)

    def as_json(self) -> dict:
        skipped = dict(self.skipped.most_common())
        return {"samples": self.samples, "shards": self.shards, "skipped": skipped, "examples": self.examples}

    def summary(self, output_dir: Path) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        skipped = f"skipped {self.skipped.total()} ({reasons})" if self.skipped else "skipped none"
        return f"{self.samples} samples in {self.shards} shards in {output_dir}; {skipped}; see {output_dir / STATS}"


# ---------------------------------------------------------------- folder mode


def shards_from_folder(source: FolderOptions, output: OutputOptions) -> ShardStats:
    """Shards of the images that decode and have a caption; every input is checked before OUT is touched."""
    entries = _folder_entries(source)
    _claim(output)
    stats = ShardStats()
    with _ShardSink(output.output_dir, output.samples_per_shard) as sink:
        for name, caption in entries:
            try:
                sink.write(_folder_sample(source.images, name, caption, output.max_pixels))
            except BadImage as bad:
                stats.skip(bad.reason, name)
    stats.samples, stats.shards = sink.samples, sink.shards
    _write_stats(output.output_dir, stats)
    return stats


def _folder_entries(source: FolderOptions) -> list[tuple[str, str | None]]:
    """(image path relative to the folder, caption); a None caption is read from the sidecar file later."""
    if not source.images.is_dir():
        raise DataError(f"--images {source.images}: no such folder")
    if source.captions is None:
        return [(name, None) for name in _image_names(source.images)]
    columns = [source.image_column, source.caption_column]
    table = _read_table(source.captions, "--captions", CAPTION_SUFFIXES, columns)
    return [(row[source.image_column] or "", row[source.caption_column] or "") for row in table.to_pylist()]


def _image_names(folder: Path) -> list[str]:
    names = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not names:
        raise DataError(f"--images {folder}: no images found (expected {', '.join(sorted(SHARD_EXTENSIONS))})")
    return names


def _folder_sample(folder: Path, name: str, caption: str | None, max_pixels: int) -> dict:
    path = folder / name
    if not path.is_file():
        raise BadImage("missing_image")
    extension = SHARD_EXTENSIONS.get(path.suffix.lower())
    if extension is None:
        raise BadImage("unsupported_format")
    caption = (_sidecar_caption(path) if caption is None else caption).strip()
    if not caption:
        raise BadImage("empty_caption")
    try:
        data = path.read_bytes()
    except OSError:  # permissions, a disk error: this image is lost, not the run
        raise BadImage("unreadable") from None
    decode_image(data, max_pixels)
    return {extension: data, "txt": caption, "json": {"caption": caption, "source": name}}


def _sidecar_caption(image: Path) -> str:
    try:
        return image.with_suffix(".txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadImage("missing_caption") from None
    except UnicodeDecodeError:
        raise BadImage("caption_not_utf8") from None


class _ShardSink:
    """Numbered shards, each written under a hidden temporary name and renamed only when complete."""

    def __init__(self, folder: Path, samples_per_shard: int) -> None:
        self.folder = folder
        self.samples_per_shard = samples_per_shard
        self.samples = 0
        self.shards = 0
        self._stream = None
        self._writer = None

    def write(self, sample: dict) -> None:
        if self._writer is None:
            self._open()
        self._writer.write({"__key__": f"{self.samples:09d}", **sample})
        self.samples += 1
        if self.samples % self.samples_per_shard == 0:
            self._finish()

    def _open(self) -> None:
        import webdataset  # imports torch (seconds): a run that stops at a bad argument should not wait for it

        self._stream = open(self._temporary(), "wb")  # noqa: SIM115 - closed in _finish or __exit__
        self._writer = webdataset.TarWriter(self._stream)

    def _finish(self) -> None:
        self._writer.close()
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.replace(self._temporary(), self.folder / f"{self.shards:05d}.tar")
        self.shards += 1
        self._writer = None

    def _temporary(self) -> Path:
        return self.folder / f".{self.shards:05d}.tar.tmp"

    def __enter__(self) -> _ShardSink:
        return self

    def __exit__(self, error_type, *_) -> None:
        if self._writer is None:
            return
        if error_type is None:
            self._finish()
        else:
            self._stream.close()
            self._temporary().unlink()


# ---------------------------------------------------------------- URL mode


def shards_from_urls(source: UrlOptions, output: OutputOptions) -> ShardStats:
    """Download with img2dataset into OUT's staging folder, then move its finished shards into OUT."""
    stats = ShardStats()
    table = _url_table(source, stats)
    _claim(output)
    staging = output.output_dir / STAGING
    downloads = staging / "shards"
    staging.mkdir()
    try:
        pq.write_table(table, staging / "urls.parquet")
        _download(staging / "urls.parquet", downloads, "caption" in table.column_names, source, output)
        _collect(downloads, table, output, stats)
    finally:  # a loader globbing OUT recursively must not find the cut shards of an interrupted download
        shutil.rmtree(staging, ignore_errors=True)
    _write_stats(output.output_dir, stats)
    return stats


def _url_table(source: UrlOptions, stats: ShardStats) -> pa.Table:
    """Columns url and caption, without the URLs whose caption is blank; a .txt list is URLs without captions."""
    captioned = source.urls.suffix.lower() != ".txt"
    columns = [source.url_column, source.caption_column] if captioned else [source.url_column]
    table = _read_table(source.urls, "--urls", URL_SUFFIXES, columns)
    if not captioned:
        return table.rename_columns(["url"])
    kept: dict[str, list[str]] = {"url": [], "caption": []}
    for row in table.to_pylist():
        caption = (row[source.caption_column] or "").strip()
        if caption:
            kept["url"].append(row[source.url_column])
            kept["caption"].append(caption)
        else:
            stats.skip("empty_caption", row[source.url_column] or "")
    return pa.table(kept, schema=pa.schema({"url": pa.string(), "caption": pa.string()}))


def _download(url_list: Path, folder: Path, captions: bool, source: UrlOptions, output: OutputOptions) -> None:
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations asks PyPI for a newer version on import
    import img2dataset

    if source.image_size is None:
        resize = {"resize_mode": "no"}
    else:
        resize = {"resize_mode": "keep_ratio", "image_size": source.image_size, "resize_only_if_bigger": True}
    with _interrupt_is_not_success():
        img2dataset.download(
            url_list=str(url_list),
            input_format="parquet",
            url_col="url",
            caption_col="caption" if captions else None,
            output_folder=str(folder),
            output_format="webdataset",
            number_sample_per_shard=output.samples_per_shard,
            encode_format=source.encode_format,
            encode_quality=ENCODE_QUALITY[source.encode_format],
            skip_reencode=True,
            max_image_area=output.max_pixels,
            processes_count=source.processes,
            thread_count=source.threads,
            timeout=source.timeout,
            retries=0,
            enable_wandb=False,
            distributor="multiprocessing",
            **resize,
        )


@contextlib.contextmanager
def _interrupt_is_not_success() -> Iterator[None]:
    """img2dataset answers Ctrl-C with sys.exit(0) and leaves its handler installed; neither may outlive it."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _collect(downloads: Path, table: pa.Table, output: OutputOptions, stats: ShardStats) -> None:
    """Move each shard img2dataset finished (it writes {shard}_stats.json last) into OUT, with its per-URL status
    table; img2dataset cuts the URL list into shards 00000, 00001, ... of samples_per_shard rows."""
    for shard_id, start in enumerate(range(0, table.num_rows, output.samples_per_shard)):
        shard = f"{shard_id:05d}"
        if not (downloads / f"{shard}_stats.json").exists():  # img2dataset gave up on it after its one retry
            for url in table["url"].slice(start, output.samples_per_shard).to_pylist():
                stats.skip("unfinished_shard", url)
            continue
        stats.samples += json.loads((downloads / f"{shard}_stats.json").read_text())["successes"]
        urls = pq.read_table(downloads / f"{shard}.parquet", columns=["key", "url", "status", "error_message"])
        for row in sorted(urls.to_pylist(), key=lambda row: row["key"]):
            if row["status"] != "success":
                stats.skip(f"{row['status']}: {row['error_message']}", row["url"])
        for suffix in (".tar", ".parquet"):
            os.replace(downloads / f"{shard}{suffix}", output.output_dir / f"{shard}{suffix}")
        stats.shards += 1


# ---------------------------------------------------------------- shared


def _read_table(path: Path, flag: str, suffixes: tuple[str, ...], columns: list[str]) -> pa.Table:
    """`columns` of a CSV/TSV/JSONL/parquet file (or the one column of a .txt list) as strings: a file named 007
    stays 007."""
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise DataError(f"{flag} {path}: unknown file type '{suffix}' (expected {', '.join(suffixes)})")
    try:
        table = _parse_table(path, suffix, columns)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise DataError(f"{flag} {path}: {str(error).strip().splitlines()[0]}") from None
    for column in columns:
        if column not in table.column_names:
            found = ", ".join(table.column_names) or "none"
            raise DataError(f"{flag} {path}: no column '{column}' (columns: {found})")
    return pa.table({column: table[column].cast(pa.string()) for column in columns})


def _parse_table(path: Path, suffix: str, columns: list[str]) -> pa.Table:
    if suffix == ".txt":
        return pa.table({columns[0]: pa.array(path.read_text(encoding="utf-8").split(), pa.string())})
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix == ".jsonl":
        return pyarrow.json.read_json(path)
    return pyarrow.csv.read_csv(
        path,
        parse_options=pyarrow.csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
        convert_options=pyarrow.csv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string())),
    )


def _claim(output: OutputOptions) -> None:
    """Refuse to mix two runs' shards: OUT must be empty, or the earlier run's outputs go with --overwrite."""
    folder = output.output_dir
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--output_dir {folder}: not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not output.overwrite:
            raise DataError(f"--output_dir {folder}: not empty (pass --overwrite to replace its shards)")
        for path in (path for pattern in PREVIOUS_OUTPUT for path in folder.glob(pattern)):
            path.unlink()
        shutil.rmtree(folder / STAGING, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def _write_stats(output_dir: Path, stats: ShardStats) -> None:
    temporary = output_dir / f".{STATS}.tmp"
    temporary.write_text(json.dumps(stats.as_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, output_dir / STATS)
