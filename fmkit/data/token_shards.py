"""Pre-tokenized corpora on disk, in datatrove's tokenized-file layout, read by memory-mapping.

A shard `NAME.ds` is the flat array of token ids (uint16, or uint32 for vocabularies over 65,536),
`NAME.ds.index` the uint64 end offset of every document, and `NAME.ds.metadata` datatrove's three-line
text (tokenizer, token count, human-readable count). fmkit adds `NAME.ds.json` with what it needs to
refuse mismatched data: the tokenizer's fingerprint, the vocabulary size and what reading skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from fmkit.data.documents import ReadStats
from fmkit.data.tokenizer import tokenizer_fingerprint
from fmkit.errors import DataError

ENCODE_BATCH = 1024


@dataclass(frozen=True)
class ShardInfo:
    tokenizer: str
    tokenizer_fingerprint: str
    vocab_size: int
    token_bytes: int
    tokens: int
    documents: int
    read_stats: dict


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_documents(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase) -> Iterator[list[int]]:
    """Token ids per document with the tokenizer's special tokens, ending in an end-of-document token.

    Batches go to the Rust tokenizer, which spreads them over every core.
    """
    backend = tokenizer.backend_tokenizer
    end_id = _end_of_document_id(tokenizer)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == ENCODE_BATCH:
            yield from _encode(backend, batch, end_id)
            batch = []
    if batch:
        yield from _encode(backend, batch, end_id)


def _encode(backend, batch: list[str], end_id: int | None) -> Iterator[list[int]]:
    for encoding in backend.encode_batch_fast(batch, add_special_tokens=True):
        ids = encoding.ids
        yield ids + [end_id] if end_id is not None else ids


def _end_of_document_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """None when the tokenizer's template already closes each document ([SEP], </s>); else EOS."""
    closing = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None}
    probe = tokenizer.backend_tokenizer.encode("a", add_special_tokens=True).ids
    if probe and probe[-1] in closing:
        return None
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def write_token_shard(
    path: str | Path,
    token_lists: Iterable[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    read_stats: ReadStats | None = None,
) -> ShardInfo:
    """Stream documents to disk (never the whole corpus in memory); the files appear only when complete."""
    path = Path(path)
    dtype = token_dtype(len(tokenizer))
    tmp = path.with_name(path.name + ".tmp")
    path.unlink(missing_ok=True)  # an old shard must not pair with the new index if we die midway
    doc_ends: list[int] = []
    total = 0
    try:
        with open(tmp, "wb") as out:
            for ids in token_lists:
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                total += len(ids)
                doc_ends.append(total)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info = ShardInfo(
        tokenizer=tokenizer.name_or_path or "fmkit-trained",
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=len(tokenizer),
        token_bytes=dtype.itemsize,
        tokens=total,
        documents=len(doc_ends),
        read_stats=read_stats.as_dict() if read_stats else {},
    )
    _replace(path.with_name(path.name + ".index"), np.asarray(doc_ends, dtype="<u8").tobytes())
    _replace(path.with_name(path.name + ".metadata"), f"{info.tokenizer}\n{total}\n{_human(total)}T".encode())
    _replace(path.with_name(path.name + ".json"), json.dumps(asdict(info), indent=1).encode())
    os.replace(tmp, path)  # last: the token file's presence marks the shard complete
    return info


def _datatrove_token_bytes(path: Path) -> int:
    """A shard written by datatrove itself has no sidecar: its metadata's token count gives the width."""
    metadata = path.with_name(path.name + ".metadata")
    lines = metadata.read_text().splitlines() if metadata.is_file() else []
    tokens = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0
    return path.stat().st_size // tokens if tokens else 2


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _human(count: int) -> str:
    for unit in ("", "K", "M", "G"):
        if count < 1000:
            return f"{count}{unit}"
        count //= 1000
    return f"{count}T"


class TokenShard:
    """Random access to a shard's tokens and document boundaries without reading it into memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such token shard")
        sidecar = self.path.with_name(self.path.name + ".json")
        self.info = ShardInfo(**json.loads(sidecar.read_text())) if sidecar.is_file() else None
        dtype = np.dtype(f"<u{self.info.token_bytes if self.info else _datatrove_token_bytes(self.path)}")
        empty = self.path.stat().st_size == 0  # mmap refuses empty files
        self.tokens = np.zeros(0, dtype) if empty else np.memmap(self.path, dtype=dtype, mode="r")
        index = self.path.with_name(self.path.name + ".index")
        self.doc_ends = np.fromfile(index, dtype="<u8") if index.is_file() else np.array([len(self.tokens)])

    def __len__(self) -> int:
        return len(self.tokens)

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse a shard written with another tokenizer: its ids would silently mean other tokens."""
        if self.info and self.info.tokenizer_fingerprint != tokenizer_fingerprint(tokenizer):
            raise DataError(
                f"{self.path}: written with tokenizer {self.info.tokenizer!r} (vocabulary {self.info.vocab_size}), "
                f"which differs from the model's tokenizer {tokenizer.name_or_path or 'fmkit-trained'!r} "
                f"(vocabulary {len(tokenizer)})"
            )
