"""Build-once caches shared by every process on a machine (corpus, tokenizers, token shards).

Processes coordinate through a file lock rather than a collective barrier: a rank waiting for another
rank's tokenization never hits a NCCL/gloo timeout, however long the work takes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def cache_root() -> Path:
    return Path(os.environ.get("FMKIT_CACHE", "~/.cache/fmkit")).expanduser()


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts, for cache keys."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first with `build(tmp_dir)` if no process has yet.

    The folder appears under its final name only when complete, so a process killed mid-build leaves
    nothing that looks finished; the next caller rebuilds.
    """
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            return target
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
