"""Shared fixtures: an isolated cache, a small real-text corpus, and a runner for recipes in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

# A model small enough that a test trains it for dozens of steps in seconds on 2 CPU cores.
TINY_MODEL = [
    "--model_config", json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 64, "max_position_embeddings": 64}),
    "--vocab_size", "512",
]  # fmt: skip
TINY_TRAINING = ["--block_size", "32", "--per_device_batch_size", "8", "--learning_rate", "3e-3",
                 "--warmup_steps", "5", "--report_to", "none"]  # fmt: skip
TINY_BERT = [*TINY_MODEL, *TINY_TRAINING]
# CLIP towers small enough for dozens of steps in seconds (the vocabulary is CLIP's own 49,408 tokens).
TINY_CLIP_VISION = {"image_size": 16, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 1, "num_attention_heads": 2}  # fmt: skip
TINY_CLIP_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "max_position_embeddings": 16}  # fmt: skip
TINY_CLIP = [
    "--vision_config", json.dumps(TINY_CLIP_VISION), "--text_config", json.dumps(TINY_CLIP_TEXT),
    "--projection_dim", "32", "--learning_rate", "2e-3", "--warmup_steps", "2", "--lr_scheduler", "constant",
    "--report_to", "none", "--log_every", "1",
]  # fmt: skip
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""Set when pytest-xdist runs this session as one of several workers (`pytest -n 2`)."""
if XDIST_WORKER and hasattr(os, "sched_setaffinity"):
    # One core per worker: each run then uses one thread (the loop sizes torch's pool to the cores it may
    # use), instead of every worker starting a pool as wide as the machine and all of them thrashing.
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(XDIST_WORKER.removeprefix("gw")) % len(cores)]})


LONGEST_FILES = ("test_contrastive_recipe.py", "test_distributed.py", "test_pretext_recipe.py", "test_clip_recipe.py",
                 "test_mlm_recipe.py", "test_registry.py", "test_clm_recipe.py")  # fmt: skip
"""The test files that take longest (about 270 s to 50 s of one core each, in this order, measured 2026-12-02)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first: xdist hands each worker whole files in collection order, so a long file handed
    out last leaves the other core idle while it runs."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Caches (corpus, tokenizers, token shards) live in one folder per test session, shared by its workers
    (builds are locked and atomic: fmkit.data.cache.build_once)."""
    if XDIST_WORKER:
        cache = tmp_path_factory.getbasetemp().parent / "fmkit-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("fmkit-cache")
    os.environ["FMKIT_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return cache


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> tuple[Path, Path]:
    """~400 KB of real English (the embedded corpus's first documents) as train/eval JSONL files."""
    from fmkit.data.corpus import python_docs_corpus

    corpus = python_docs_corpus()
    folder = tmp_path_factory.mktemp("text")
    lines = corpus.train.read_text(encoding="utf-8").splitlines()
    train, held_out = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("\n".join(lines[:1200]) + "\n", encoding="utf-8")
    held_out.write_text("\n".join(lines[1200:1300]) + "\n", encoding="utf-8")
    return train, held_out


def jsonl_texts(path: Path) -> list[str]:
    """The "text" field of every line of a JSONL file."""
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def run_recipe(args: list[str], recipe: str = "mlm.py", launcher: list[str] | None = None, env: dict | None = None,
               check: bool = True, fresh_process: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a recipe's script as a user would, with its exit status, stdout and stderr.

    In this interpreter by default: an interpreter start with torch and transformers costs seconds, and most
    tests check what a run writes, not the process. A `launcher` (e.g. ["accelerate", "launch", ...]), extra
    `env` or `fresh_process=True` runs it in a new process, for what only a real one proves.
    """
    script = RECIPES / recipe
    if launcher or env or fresh_process:
        command = [*(launcher or [sys.executable]), str(script), *args]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                                timeout=900)  # fmt: skip
    else:
        result = _run_script_here(script, args)
    if check and result.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def _run_script_here(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`python script args` in this process: argv, stdout, stderr, logging and the exit status as a process has them."""
    import contextlib
    import io
    import logging
    import runpy

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    saved_argv, saved_level = sys.argv, root.level
    sys.argv = [str(script), *args]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    returncode = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        returncode = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except Exception:  # a crash is a failed run, reported like a process's traceback on stderr
        import traceback

        err.write(traceback.format_exc())
        returncode = 1
    finally:
        sys.argv = saved_argv
        root.removeHandler(handler)
        root.setLevel(saved_level)
        reset_accelerate()
    return subprocess.CompletedProcess([str(script), *args], returncode, out.getvalue(), err.getvalue())


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; the next in-process run (possibly other settings) starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def task_of_run(output_dir: Path, task_class):
    """A finished run's task, set up here in one process as the run's loop set it up: the config it saved, seeded
    as the loop seeds before setup, so the same data and initial weights (for references computed in a test)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from fmkit.config import parse_config

    config = parse_config(task_class.config_class, ["--config", str(output_dir / "config.yaml")])
    set_seed(config.seed)
    task = task_class(config)
    try:
        task.setup(Accelerator(cpu=True))
    finally:
        reset_accelerate()
    return task


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """A refused run: exit status 2 and one `error:` line on stderr that contains `expected`, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


FASHION_MNIST_CI_PROBE = ["--probe_train_images", "fashion-mnist:train:2000",
                          "--probe_test_images", "fashion-mnist:test:1000"]  # fmt: skip
"""The learning tests' probe: 2,000 / 1,000 Fashion-MNIST images (1 point of accuracy is 10 test images)."""


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(output_dir) if "loss" in m}


def eval_losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["eval_loss"] for m in read_metrics(output_dir) if "eval_loss" in m}
