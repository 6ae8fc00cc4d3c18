"""Tokenize a large corpus once, ahead of training, into numbered token shards on every core, resumably.

The main process reads documents in order and cuts them into groups of `docs_per_shard`; a pool of worker
processes turns group k into `output_dir/{k:05d}.ds` (datatrove's layout, see token_shards.py). At most
`workers + 1` groups wait in the pool, so memory stays bounded by the group size, not the corpus.

A single worker is a thread instead (see _pool).

A shard's token file is written last, so its presence means the shard is complete: a rerun reads the
documents of finished shards but does not tokenize them, and a killed run costs only the groups in flight.
`manifest.json` pins the settings a rerun must share (input files with their size and modification time,
tokenizer fingerprint, docs_per_shard, text_field) and, once done, holds the totals.

The Rust tokenizer is itself multithreaded, so each worker caps it at its share of the cores
(RAYON_NUM_THREADS = cores // workers, set before the worker's first encode). Measured on 2 cores, 21 MB of
text (5.3M tokens), an 8192-token BPE, median of 5 runs with start-up: 2 workers capped at 1 thread each
380k tokens/s, uncapped 345k; 1 worker with both threads 447k, capped at 1 thread 325k (before a single
worker became a thread). The reading process needs a core too, so the default is one worker per two cores.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from fmkit.data.documents import ReadStats, TextSource, file_identity, iter_documents, report_read_stats
from fmkit.data.token_shards import ShardInfo, TokenShard, encode_documents, write_token_shard
from fmkit.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from fmkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_COMPARED = ("inputs", "text_field", "tokenizer_fingerprint", "docs_per_shard")
"""Settings a rerun into the same folder must share: any other value would mix two corpora."""

_worker_tokenizer: PreTrainedTokenizerBase | None = None


def write_token_shards(
    source: TextSource,
    tokenizer_name_or_path: str,
    output_dir: str | Path,
    docs_per_shard: int = 100_000,
    workers: int = 0,
) -> dict:
    """Write (or finish writing) the shards of `source` and return the final manifest.

    `workers` 0 means one per two cores, each tokenizing with two threads.
    """
    if docs_per_shard < 1:
        raise ConfigError(f"docs_per_shard {docs_per_shard}: expected a positive integer")
    if workers < 0:
        raise ConfigError(f"workers {workers}: expected 0 (one per two cores) or more")
    output_dir = Path(output_dir)
    settings = {"source": source.describe(), "inputs": _inputs(source), "text_field": source.text_field}
    tokenizer = load_tokenizer(tokenizer_name_or_path)
    settings |= {
        "tokenizer": tokenizer_name_or_path,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "docs_per_shard": docs_per_shard,
    }
    _claim(output_dir, settings)
    tokenizer.save_pretrained(output_dir)
    totals = _tokenize(source, tokenizer, output_dir, docs_per_shard, workers or max(1, _cores() // 2))
    manifest = {**settings, **totals, "complete": True}
    _write_json(output_dir / MANIFEST, manifest)
    report_read_stats(source.describe(), manifest)
    logger.info(
        "%s: %d shards, %d documents, %d tokens (%d shards already done); %.0f tokens/s, %.0f per worker (%d)",
        output_dir, manifest["shards"], manifest["documents"], manifest["tokens"], manifest["resumed_shards"],
        manifest["tokens_per_s"], manifest["tokens_per_s_per_worker"], manifest["workers"],
    )  # fmt: skip
    return manifest


def _inputs(source: TextSource) -> list | dict:
    """What identifies the text: each file's path, size and modification time, or the dataset's name."""
    if source.dataset_name:
        return {"dataset": source.dataset_name, "config": source.dataset_config, "split": source.split}
    if not source.files:
        raise DataError("no inputs: give text files, folders or globs, or a dataset name")
    return [list(identity) for identity in file_identity(source)]  # as it reads back from JSON


def _claim(output_dir: Path, settings: dict) -> None:
    """Record the settings before any work; refuse a folder whose shards were written with other ones."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"output_dir {output_dir}: is a file, expected a folder")
    manifest = output_dir / MANIFEST
    if manifest.is_file():
        _check_settings(manifest, settings)
    elif any(output_dir.glob("*.ds")):
        raise DataError(f"output_dir {output_dir}: holds token shards but no {MANIFEST}; expected an empty folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(manifest, {**settings, "complete": False})
    except OSError as error:
        raise DataError(f"output_dir {output_dir}: cannot write there ({error.strerror})") from None


def _check_settings(manifest: Path, settings: dict) -> None:
    recorded = json.loads(manifest.read_text())
    for key in _COMPARED:
        if recorded.get(key) != settings[key]:
            before, now = _first_difference(recorded.get(key), settings[key])
            raise DataError(
                f"{manifest}: its shards were written with {key} {json.dumps(before)}, not {json.dumps(now)}; "
                "use another output_dir"
            )


def _first_difference(before: object, now: object) -> tuple[object, object]:
    """For lists (the input files) the first entry that differs, not the whole list."""
    if isinstance(before, list) and isinstance(now, list):
        return next((b, n) for b, n in zip_longest(before, now) if b != n)
    return before, now


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _tokenize(
    source: TextSource, tokenizer: PreTrainedTokenizerBase, output_dir: Path, docs_per_shard: int, workers: int
) -> dict:
    """Read in this process, tokenize and write in `workers` spawned ones; the totals for the manifest."""
    stats = ReadStats()
    pool = _pool(tokenizer, workers)
    in_flight: deque[Future[ShardInfo]] = deque()
    with pool, tqdm(desc="tokenizing", unit="doc") as bar:
        progress = _Progress(bar, workers)
        for index, (texts, group_stats) in enumerate(_groups(iter_documents(source, stats), stats, docs_per_shard)):
            path = output_dir / f"{index:05d}.ds"
            if path.is_file():
                progress.add(TokenShard(path).info, resumed=True)
                continue
            in_flight.append(pool.submit(_write_shard, str(path), texts, group_stats))
            if len(in_flight) > workers:
                progress.add(in_flight.popleft().result())
        while in_flight:
            progress.add(in_flight.popleft().result())
    if progress.documents == 0:
        raise DataError(f"{source.describe()}: no documents to tokenize ({sum(stats.skipped.values())} bad records)")
    return progress.totals(stats)


def _pool(tokenizer: PreTrainedTokenizerBase, workers: int) -> Executor:
    """One worker is a thread of this process: the Rust tokenizer releases the GIL, so it overlaps with
    reading, and no process has to start and import transformers (4 s). More workers are processes, for
    the per-document Python work the GIL would serialise."""
    if workers == 1:
        _start_worker(tokenizer, _cores())
        return ThreadPoolExecutor(1)
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(tokenizer, max(1, _cores() // workers)),
    )


def _groups(documents: Iterator[str], stats: ReadStats, size: int) -> Iterator[tuple[list[str], ReadStats]]:
    """Consecutive groups of `size` documents, each with what reading skipped since the previous group."""
    group: list[str] = []
    before = ReadStats()
    for text in documents:
        group.append(text)
        if len(group) == size:
            yield group, _since(before, stats)
            group, before = [], copy.deepcopy(stats)
    if group:
        yield group, _since(before, stats)


def _since(before: ReadStats, now: ReadStats) -> ReadStats:
    return ReadStats(now.documents - before.documents, now.skipped - before.skipped,
                     now.replaced_bytes - before.replaced_bytes)  # fmt: skip


def _start_worker(tokenizer: PreTrainedTokenizerBase, threads: int) -> None:
    """Receive the tokenizer once per process; cap the Rust thread pool before its first encode builds it."""
    global _worker_tokenizer
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    _worker_tokenizer = tokenizer


def _write_shard(path: str, texts: list[str], read_stats: ReadStats) -> ShardInfo:
    return write_token_shard(path, encode_documents(texts, _worker_tokenizer), _worker_tokenizer, read_stats)


@dataclass
class _Progress:
    """Running totals behind the progress bar; speed counts only the tokens this run wrote."""

    bar: tqdm
    workers: int
    shards: int = 0
    documents: int = 0
    tokens: int = 0
    new_tokens: int = 0
    resumed_shards: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, info: ShardInfo, resumed: bool = False) -> None:
        self.shards += 1
        self.documents += info.documents
        self.tokens += info.tokens
        self.resumed_shards += resumed
        self.new_tokens += 0 if resumed else info.tokens
        self.bar.update(info.documents)
        self.bar.set_postfix_str(f"{self.new_tokens / self._seconds():,.0f} tokens/s", refresh=False)

    def _seconds(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def totals(self, stats: ReadStats) -> dict:
        seconds = self._seconds()
        return {
            "shards": self.shards,
            "documents": self.documents,
            "tokens": self.tokens,
            "resumed_shards": self.resumed_shards,
            "skipped": dict(stats.skipped),
            "replaced_bytes": stats.replaced_bytes,
            "seconds": round(seconds, 3),
            "workers": self.workers,
            "tokens_per_s": round(self.new_tokens / seconds, 1),
            "tokens_per_s_per_worker": round(self.new_tokens / seconds / self.workers, 1),
        }
