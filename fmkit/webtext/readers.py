"""Read WARC files, saved HTML pages and JSONL text into datatrove Documents.

Ours rather than datatrove's WarcReader because a crawl is full of damage that must be skipped and counted,
never raised: truncated or corrupt gzip, non-HTTP and non-HTML records, binary payloads labelled as HTML,
undecodable bytes, empty and enormous pages. warcio parses the records (FastWARC needs a seekable stream,
which a damaged gzip file cannot give); resiliparse detects encodings.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from fmkit.errors import DataError

WARC_SUFFIXES = (".warc", ".warc.gz")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")
_BINARY_SIGNATURES = (b"%PDF-", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"PK\x03\x04", b"\x1f\x8b", b"RIFF", b"OggS",
                      b"ID3", b"\x00\x00\x01\x00", b"\x7fELF", b"BM", b"II*\x00", b"MM\x00*")  # fmt: skip
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def input_kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("warc", WARC_SUFFIXES), ("html", HTML_SUFFIXES), ("jsonl", JSONL_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files and folders (searched recursively for known suffixes), in sorted order, so task splits repeat."""
    if not inputs:
        raise DataError("no inputs: give WARC files, folders of HTML pages or JSONL files")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and input_kind(p))
            if not found:
                raise DataError(f"{path}: no .warc(.gz), .html/.htm or .jsonl(.gz) files in this folder")
            files += found
        elif path.is_file():
            if not input_kind(path):
                raise DataError(f"{path}: unknown input type; expected .warc(.gz), .html/.htm or .jsonl(.gz)")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return sorted(str(p.resolve()) for p in dict.fromkeys(files))


class Skip(Exception):
    """A record that cannot become a document; its reason is counted and kept as an example."""

    def __init__(self, reason: str, detail: str = "", url: str = ""):
        super().__init__(reason)
        self.reason, self.detail, self.url = reason, detail, url


def looks_binary(raw: bytes) -> bool:
    head = raw[:1024]
    return head.lstrip().startswith(_BINARY_SIGNATURES) or b"\x00" in head


def decode_page(raw: bytes, declared_charset: str | None, max_invalid_chars: float) -> str:
    """Trust a declared charset (HTTP header, then meta tag) and detect one only when none is declared.

    A few undecodable bytes (mixed encodings are common) are dropped; more than `max_invalid_chars` of the
    text and the page is skipped rather than fed to the model as mojibake.
    """
    from resiliparse.parse.encoding import detect_encoding

    meta = _META_CHARSET.search(raw[:2048])
    charset = declared_charset or (meta.group(1).decode("ascii") if meta else None)
    try:
        codecs.lookup(charset or "")
    except LookupError:
        charset = detect_encoding(raw)
    text = raw.decode(charset, errors="replace")
    invalid = text.count("\ufffd")
    if invalid > max_invalid_chars * len(text):
        raise Skip("invalid_encoding", f"{invalid} of {len(text)} characters undecodable as {charset}")
    return text.replace("\ufffd", "") if invalid else text


class _EndAtDamage(io.RawIOBase):
    """A gzip stream that ends quietly where the file is truncated or corrupt, so the records before survive."""

    def __init__(self, compressed):
        self.stream = gzip.GzipFile(fileobj=compressed)
        self.damage: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.damage:
            return 0
        try:
            data = self.stream.read1(len(buffer))
        except (EOFError, OSError, zlib.error) as error:
            self.damage = str(error) or type(error).__name__
            return 0
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


class WebInputReader(PipelineStep):
    """First step of every run: each task reads its share of the input files (file i goes to task i % tasks)."""

    name = "read"
    type = "📖 - READER"

    def __init__(self, files: list[str], max_page_bytes: int, max_invalid_chars: float, examples_dir: str,
                 examples_per_reason: int):  # fmt: skip
        super().__init__()
        self.files = files
        self.max_page_bytes = max_page_bytes
        self.max_invalid_chars = max_invalid_chars
        self.examples_dir = examples_dir
        self.examples_per_reason = examples_per_reason

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        examples: list[dict] = []
        shown: Counter[str] = Counter()
        for path in self.files[rank::world_size]:
            records = {"warc": self._warc, "html": self._html, "jsonl": self._jsonl}[input_kind(Path(path))](path)
            for item in records:
                if isinstance(item, Skip):
                    self.stat_update(f"dropped_{item.reason}")
                    if shown[item.reason] < self.examples_per_reason:
                        shown[item.reason] += 1
                        examples.append({"reason": item.reason, "source": path, "url": item.url, "detail": item.detail})
                    continue
                yield item
        out = Path(self.examples_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"{rank:05d}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)

    def _warc(self, path: str) -> Iterator[Document | Skip]:
        from warcio.archiveiterator import ArchiveIterator

        with open(path, "rb") as raw:
            stream = _EndAtDamage(raw) if path.lower().endswith(".gz") else raw
            for index, record in enumerate(ArchiveIterator(io.BufferedReader(stream, 1 << 20))):
                with self.track_time():
                    item = self._warc_item(record, index)
                yield item
        if isinstance(stream, _EndAtDamage) and stream.damage:
            yield Skip("damaged_file", f"records after the damage are lost: {stream.damage}")

    def _warc_item(self, record, index: int) -> Document | Skip:
        url = record.rec_headers.get_header("WARC-Target-URI") or ""
        try:
            if record.rec_type != "response":
                raise Skip("not_a_response", f"{record.rec_type} record")
            return self._warc_page(record, url)
        except Skip as skip:
            skip.url = url or f"record {index}"
            return skip

    def _warc_page(self, record, url: str) -> Document:
        http = record.http_headers
        if http is None or not http.protocol.startswith("HTTP"):
            raise Skip("not_http")
        status = int(http.get_statuscode() or 0)
        if not 200 <= status < 300 or status == 204:
            raise Skip("http_status", f"HTTP {status}")
        content_type = (http.get_header("Content-Type") or "").lower()
        media_type = content_type.split(";")[0].strip()
        identified = (record.rec_headers.get_header("WARC-Identified-Payload-Type") or "").lower()
        if (media_type and media_type not in HTML_TYPES) or (identified and identified not in HTML_TYPES):
            raise Skip("not_html", media_type or identified)
        raw = record.content_stream().read(self.max_page_bytes + 1)
        if len(raw) > self.max_page_bytes:
            raise Skip("too_large", f"over {self.max_page_bytes} bytes")
        encoded = http.get_header("Transfer-Encoding") or http.get_header("Content-Encoding")
        if not encoded and http.total_len + len(raw) < record.length:
            raise Skip("truncated_record", f"{len(raw)} of {record.length - http.total_len} bytes")
        charset = _CHARSET.search(content_type)
        text = self._page_text(raw, charset.group(1) if charset else None)
        return Document(
            text=text,
            id=record.rec_headers.get_header("WARC-Record-ID") or url,
            metadata={"url": url, "date": record.rec_headers.get_header("WARC-Date") or "", "format": "html"},
        )

    def _page_text(self, raw: bytes, charset: str | None) -> str:
        if not raw.strip():
            raise Skip("empty_page")
        if looks_binary(raw):
            raise Skip("binary_payload", f"starts {raw[:8]!r}")
        return decode_page(raw, charset, self.max_invalid_chars)

    def _html(self, path: str) -> Iterator[Document | Skip]:
        with self.track_time():
            try:
                item = self._html_page(Path(path))
            except Skip as skip:
                skip.url, item = path, skip
        yield item

    def _html_page(self, path: Path) -> Document:
        status = path.stat()
        if status.st_size > self.max_page_bytes:
            raise Skip("too_large", f"{status.st_size} bytes")
        text = self._page_text(path.read_bytes(), None)
        fetched = datetime.fromtimestamp(status.st_mtime, timezone.utc).isoformat()
        return Document(text=text, id=str(path), metadata={"url": path.as_uri(), "date": fetched, "format": "html"})

    def _jsonl(self, path: str) -> Iterator[Document | Skip]:
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            try:
                for number, line in enumerate(handle, start=1):
                    yield self._json_document(line, f"{path}:{number}")
            except (EOFError, OSError, zlib.error) as error:
                yield Skip("damaged_file", str(error))

    @staticmethod
    def _json_document(line: str, where: str) -> Document | Skip:
        if not line.strip():
            return Skip("empty_page", url=where)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return Skip("bad_json", str(error), url=where)
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            return Skip("missing_text", "no non-empty 'text' key", url=where)
        metadata = {"url": str(record.get("url") or ""), "date": str(record.get("date") or ""), "format": "text"}
        return Document(text=text, id=str(record.get("id") or where), metadata=metadata)
