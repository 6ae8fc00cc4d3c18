"""Where text comes from: local files (txt, jsonl, csv, parquet; files, folders or globs) or a HF dataset.

Every source yields plain document strings. A bad record inside good data (invalid JSON, a missing or
non-string field, an empty document) is skipped and counted; undecodable bytes are replaced and counted.
A missing path or a file without the requested column is a one-line error.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fmkit.errors import DataError

logger = logging.getLogger(__name__)

SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv",
            ".tsv": "tsv", ".parquet": "parquet"}  # fmt: skip
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class TextSource:
    """Local files, or a Hugging Face dataset when `dataset_name` is set."""

    files: tuple[str, ...] = ()
    dataset_name: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = False

    def describe(self) -> str:
        if self.dataset_name:
            config = f" ({self.dataset_config})" if self.dataset_config else ""
            return f"Hugging Face dataset {self.dataset_name}{config}, split {self.split}"
        return ", ".join(self.files)


@dataclass
class ReadStats:
    """What was skipped or repaired while reading, reported once reading ends."""

    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    replaced_bytes: int = 0

    def as_dict(self) -> dict:
        return {"documents": self.documents, "skipped": dict(self.skipped), "replaced_bytes": self.replaced_bytes}


def report_read_stats(what: str, stats: dict) -> None:
    """Warn about what reading skipped or repaired; read from the shard, so cached runs warn too."""
    skipped = stats.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        logger.warning("%s: skipped %d bad records (%s)", what, sum(skipped.values()), reasons)
    if stats.get("replaced_bytes"):
        logger.warning("%s: replaced %d undecodable byte sequences with U+FFFD", what, stats["replaced_bytes"])


def expand_files(patterns: tuple[str, ...] | list[str]) -> list[Path]:
    """Files, folders (recursively, known suffixes only) and globs, in sorted order."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and _kind(p, strict=False))
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
            if not matches:
                raise DataError(f"{pattern}: the pattern matches no file")
            found += [p for p in matches if p.is_file()]
        else:
            raise DataError(f"{pattern}: no such file or folder")
    if not found:
        raise DataError(f"{', '.join(patterns)}: no text files found (expected {', '.join(sorted(SUFFIXES))})")
    return found


def file_identity(source: TextSource) -> list[tuple[str, int, int]]:
    """Files change → identity changes: path, size and modification time of every file."""
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in expand_files(source.files)]


def _kind(path: Path, strict: bool = True) -> str | None:
    suffixes = path.suffixes[-2:] if path.suffix.lower() == ".gz" else path.suffixes[-1:]
    kind = SUFFIXES.get(suffixes[0].lower()) if suffixes else None
    if kind is None and strict:
        raise DataError(
            f"{path}: unsupported file type (expected one of {', '.join(sorted(SUFFIXES))}, optionally .gz)"
        )
    return kind


def iter_documents(source: TextSource, stats: ReadStats) -> Iterator[str]:
    if source.dataset_name:
        yield from _hf_documents(source, stats)
        return
    for path in expand_files(source.files):
        reader = {"txt": _txt, "jsonl": _jsonl, "csv": _csv, "tsv": _csv, "parquet": _parquet}[_kind(path)]
        for text in reader(path, source.text_field, stats):
            if text.strip():
                stats.documents += 1
                yield text
            else:
                stats.skipped["empty documents"] += 1


def _decode(raw: bytes, stats: ReadStats) -> str:
    """UTF-8 with undecodable bytes replaced and counted; a byte-order mark (Excel's UTF-8) is dropped."""
    text = raw.decode("utf-8", errors="replace")
    stats.replaced_bytes += text.count(REPLACEMENT) - raw.count(REPLACEMENT.encode())
    return text.removeprefix("\ufeff")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _txt(path: Path, _field: str, stats: ReadStats) -> Iterator[str]:
    """Paragraphs (blank-line separated) are the documents of a plain text file."""
    paragraph: list[str] = []
    with _open_bytes(path) as handle:
        for raw in handle:
            line = _decode(raw, stats)
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph).strip()
                paragraph = []
    if paragraph:
        yield "".join(paragraph).strip()


def _jsonl(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    with _open_bytes(path) as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                record = json.loads(_decode(raw, stats))
            except json.JSONDecodeError:
                stats.skipped["invalid JSON lines"] += 1
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if isinstance(text, str):
                yield text
            else:
                stats.skipped[f"records without a string '{text_field}'"] += 1


def _csv(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    delimiter = "\t" if _kind(path) == "tsv" else ","
    with _open_bytes(path) as handle:
        reader = csv.DictReader((_decode(raw, stats) for raw in handle), delimiter=delimiter)
        if text_field not in (reader.fieldnames or []):
            raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(reader.fieldnames or [])})")
        for row in reader:
            text = row.get(text_field)
            if text is None:
                stats.skipped["short CSV rows"] += 1
                continue
            yield text


def _parquet(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(parquet.schema_arrow.names)})")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text
            else:
                stats.skipped[f"null '{text_field}' values"] += 1


def _hf_documents(source: TextSource, stats: ReadStats) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(
            source.dataset_name, source.dataset_config, split=source.split, streaming=source.streaming
        )
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise DataError(f"dataset {source.dataset_name}: {str(error).splitlines()[0]}") from None
    columns = dataset.column_names or []
    if columns and source.text_field not in columns:
        raise DataError(
            f"dataset {source.dataset_name}: no column '{source.text_field}' (columns: {', '.join(columns)})"
        )
    for record in dataset:
        text = record.get(source.text_field)
        if isinstance(text, str) and text.strip():
            stats.documents += 1
            yield text
        else:
            stats.skipped["empty or non-string records"] += 1
