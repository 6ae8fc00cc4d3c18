"""The embedded default text corpus: real English that every fresh install already has on disk.

Docstrings of the standard library and of a few ubiquitous packages, plus CPython's pydoc topics, give
the MLM/CLM recipes some 10 MB of technical prose with no download, so they run offline out of the box.
Each document keeps its `source` (the dotted module it documents), so the corpus doubles as a labelled
task for fine-tuning: which library a docstring comes from. A test split is set apart before pretraining,
so a fine-tuned model is scored on documents its pretraining never read.
Sources are parsed with `ast`, never imported: importing arbitrary stdlib modules has side effects
(`pydoc_data.topics`, a plain dict of strings, is the one safe import).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

from fmkit.data.cache import build_once, cache_root, fingerprint

BUILDER_VERSION = 2
"""Bump whenever the same inputs would give a different corpus, so caches rebuild."""
PACKAGES = (
    "numpy",
    "pandas",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "PIL",
    "jinja2",
    "setuptools",
    "pip",
    "tqdm",
    "yaml",
)
# Import names whose distribution is named differently, for their versions.
_DISTRIBUTIONS = {"PIL": "pillow", "yaml": "PyYAML"}
# Test suites and tools hold few docstrings worth reading and many that repeat.
_STDLIB_SKIP = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "__pycache__"}
)
_PACKAGE_SKIP = frozenset({"test", "tests", "testing", "__pycache__"})
MIN_WORDS = 8
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class CorpusFiles:
    train: Path
    """train.jsonl: one {"text", "source"} object per line."""
    eval: Path
    """eval.jsonl: the ~1% of documents held out by hash of their text, for pretraining's held-out metrics."""
    test: Path
    """test.jsonl: another ~8% by hash, read by no pretraining recipe: the fine-tuning demo's test split."""
    description: str
    """One sentence for READMEs and model cards."""


def python_docs_corpus() -> CorpusFiles:
    """Build (once per machine, cached) and return the embedded corpus."""
    packages = _package_dirs()
    key = fingerprint(BUILDER_VERSION, sys.version, _versions(packages))
    folder = build_once(cache_root() / "corpus" / f"python-docs-{key}", lambda tmp: _build(tmp, packages))
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    return CorpusFiles(
        train=folder / "train.jsonl",
        eval=folder / "eval.jsonl",
        test=folder / "test.jsonl",
        description=stats["description"],
    )


def _package_dirs() -> dict[str, Path]:
    """Folders of the listed packages that are installed, found from their metadata without importing them.

    Not `importlib.util.find_spec`: asking it for "pip" trips setuptools' distutils shim, which then breaks
    torch.compile's C++ toolchain later in the same process.
    """
    found = {}
    distributions = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        for distribution in distributions.get(name, ()):
            folder = Path(str(importlib.metadata.distribution(distribution).locate_file(name)))
            if folder.is_dir():
                found[name] = folder
                break
    return found


def _versions(packages: dict[str, Path]) -> dict[str, str]:
    """Package versions for the cache key, so an upgrade rebuilds the corpus."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _build(out: Path, packages: dict[str, Path]) -> None:
    splits = ("train", "eval", "test")
    counts = {split: {"documents": 0, "bytes": 0} for split in splits}
    with ExitStack() as stack:
        files = {split: stack.enter_context(open(out / f"{split}.jsonl", "wb")) for split in splits}
        for text, source in _unique(_documents(packages)):
            split = _split_of(text)
            line = (json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n").encode()
            files[split].write(line)
            counts[split]["documents"] += 1
            counts[split]["bytes"] += len(line)
    documents = sum(c["documents"] for c in counts.values())
    megabytes = sum(c["bytes"] for c in counts.values()) / 1e6
    libraries = f" and of {', '.join(packages)}" if packages else ""
    description = (
        f"Python documentation: docstrings of the standard library{libraries} plus CPython's pydoc topics "
        f"({documents:,} documents, {megabytes:.1f} MB)"
    )
    stats = {"description": description, **counts}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def _split_of(text: str) -> str:
    """The split a document falls in, by hash of its text: 1% eval, 8% test, the rest train."""
    bucket = int(hashlib.md5(text.encode()).hexdigest(), 16) % 100
    return "eval" if bucket == 0 else "test" if bucket <= 8 else "train"


def _documents(packages: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """(text, source) pairs in a fixed order: stdlib and package docstrings, then pydoc topics."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = _python_files(stdlib, stdlib, _STDLIB_SKIP)
    for folder in packages.values():
        files += _python_files(folder, folder.parent, _PACKAGE_SKIP)
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Big chunks keep the per-task overhead small; map() still yields results in input order.
        chunk = max(1, len(files) // (workers * 4))
        for (_, module), docs in zip(files, pool.map(_docstrings, [p for p, _ in files], chunksize=chunk), strict=True):
            for doc in docs:
                yield doc, module

    for name in sorted(topics):
        text = topics[name].strip()
        if len(text.split()) >= MIN_WORDS:
            yield text, f"pydoc topic: {name}"


def _python_files(top: Path, root: Path, skip: frozenset[str]) -> list[tuple[str, str]]:
    """(path, dotted module name) of the .py files under `top`, walked in sorted order for reproducibility."""
    found = []
    for folder, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(n for n in names if n.endswith(".py")):
            path = Path(folder, name)
            parts = path.relative_to(root).with_suffix("").parts
            found.append((str(path), ".".join(parts[:-1] if parts[-1] == "__init__" else parts)))
    return found


def _docstrings(path: str) -> list[str]:
    """Docstrings of one file that are long enough to be prose; [] for files that do not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like in old sources
            tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return []
    docs = (ast.get_docstring(node, clean=True) for node in ast.walk(tree) if isinstance(node, _DOCUMENTED))
    return [doc for doc in docs if doc and len(doc.split()) >= MIN_WORDS and _encodable(doc)]


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (from escapes in string literals), which UTF-8 cannot store."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unique(documents: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Drop exact repeats of a text (inherited and copied docstrings), keeping the first."""
    seen: set[str] = set()
    for text, source in documents:
        if text not in seen:
            seen.add(text)
            yield text, source
