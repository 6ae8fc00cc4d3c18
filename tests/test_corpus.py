"""The embedded corpus: built from files already on disk, split, deduplicated, cached and reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmkit.data.corpus import CorpusFiles, python_docs_corpus


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus() -> CorpusFiles:
    """The session's corpus, in its cache (built once, for the text tests too)."""
    return python_docs_corpus()


@pytest.fixture(scope="module")
def documents(corpus: CorpusFiles) -> dict[str, list[dict[str, str]]]:
    return {split: _read(getattr(corpus, split)) for split in ("train", "eval", "test")}


def test_splits_are_disjoint_and_sized(documents: dict[str, list[dict[str, str]]]) -> None:
    total = sum(len(split) for split in documents.values())
    assert 0.003 <= len(documents["eval"]) / total <= 0.03
    assert 0.05 <= len(documents["test"]) / total <= 0.12
    assert len(documents["test"]) >= 1000  # the fine-tuning demo's test split
    texts = {name: {d["text"] for d in split} for name, split in documents.items()}
    for one, other in (("train", "eval"), ("train", "test"), ("eval", "test")):
        assert not texts[one] & texts[other], (one, other)


def test_corpus_is_several_mb_of_real_sentences(
    corpus: CorpusFiles, documents: dict[str, list[dict[str, str]]]
) -> None:
    assert corpus.train.stat().st_size > 4_000_000
    every = [d for split in documents.values() for d in split]
    assert all(len(d["text"].split()) >= 8 for d in every)
    assert len({d["text"] for d in every}) == len(every)
    assert f"{len(every):,} documents" in corpus.description


def test_corpus_mixes_stdlib_docstrings_and_pydoc_topics(documents: dict[str, list[dict[str, str]]]) -> None:
    sources = {d["source"] for split in documents.values() for d in split}
    assert any(s.startswith("pydoc topic: ") for s in sources)
    assert {"json", "json.decoder"} <= sources


def test_cached_call_reuses_files_and_rebuild_is_byte_identical(
    corpus: CorpusFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMKIT_CACHE", str(corpus.train.parents[2]))
    mtime = corpus.train.stat().st_mtime_ns
    assert python_docs_corpus() == corpus
    assert corpus.train.stat().st_mtime_ns == mtime

    monkeypatch.setenv("FMKIT_CACHE", str(tmp_path))
    fresh = python_docs_corpus()
    assert fresh.train != corpus.train
    assert fresh.train.read_bytes() == corpus.train.read_bytes()
    assert fresh.eval.read_bytes() == corpus.eval.read_bytes()
    assert fresh.test.read_bytes() == corpus.test.read_bytes()
    assert fresh.description == corpus.description


def test_finding_package_folders_leaves_torch_compile_working():
    """Asking importlib for pip's spec used to switch off setuptools' distutils, breaking inductor's C++ build."""
    code = "from fmkit.data.corpus import _package_dirs\nassert 'pip' in _package_dirs()\n"
    code += "import torch.utils.cpp_extension"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
