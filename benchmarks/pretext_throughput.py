"""Vision pretext throughput: fmkit's loop (recipes/pretext.py) against a bare PyTorch loop on the same model.

The bare loop is the upper bound a user could reach by hand: the same backbone and head (built by fmkit's
own task from the demo preset), the same batch size, threads, fp32 and fused AdamW with gradient clipping,
but its batches are made by the task's own `make_inputs` before the clock starts, so it pays no data cost.
fmkit runs as a user runs it and builds each batch inside the loop (its `data_wait_fraction`).

Each side runs in a fresh process with the same thread settings. Images/s counts original images on both
sides (rotation trains on the 4 rotated copies of each) over whole windows of `--log_every` steps, leaving
out the first `--warmup_windows`; setup, evaluation and export are not timed.

    python benchmarks/pretext_throughput.py                       # rotation and jigsaw, 200 steps, 2 repeats
    python benchmarks/pretext_throughput.py --tasks jigsaw --steps 60 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from common import save_report
from mlm_throughput import REPO, machine, thread_env
from torch import nn

from fmkit.config import parse_config
from fmkit.tasks import get_task
from fmkit.tasks.pretext.common import PretextConfig, PretextTask

PRESETS = REPO / "recipes" / "configs" / "pretext"
PLAIN_BATCHES = 20
"""Distinct ready batches the plain loop cycles through (a rotation batch is 6 MB: far more than any cache)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rotation", "jigsaw"], choices=["rotation", "jigsaw"])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run, warm-up included")
    parser.add_argument("--log_every", type=int, default=10, help="steps per timing window (fmkit's log window)")
    parser.add_argument("--warmup_windows", type=int, default=1, help="leading windows left out, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="run both sides this many times (alternating)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--num_workers", type=int, default=0, help="fmkit's data-loader workers (preset: 0)")
    parser.add_argument("--out", type=Path, default=None, help="also write the full report here as JSON")
    parser.add_argument("--plain_worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def preset_config(task: str, threads: int) -> PretextConfig:
    """The task's demo preset in fp32 on the benchmark's thread count: what both sides train."""
    overrides = ["--mixed_precision", "no", "--cpu_threads", str(threads)]
    return parse_config(get_task(task).config_class, ["--config", str(PRESETS / f"{task}.yaml"), *overrides])


def summarize(window_seconds: list[float], images_per_window: int) -> dict:
    return {
        "images_per_s": images_per_window * len(window_seconds) / sum(window_seconds),
        "window_images_per_s": [images_per_window / seconds for seconds in window_seconds],
    }


def run_process(command: list[str], args: argparse.Namespace, what: str) -> None:
    result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------- fmkit side


def run_fmkit(task: str, batch_size: int, args: argparse.Namespace) -> dict:
    """recipes/pretext.py as a user runs it; window rates and data wait from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="fmkit-pretext-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / "pretext.py"), "--task", task,
            "--output_dir", out, "--overwrite_output_dir", "true", "--max_steps", str(args.steps),
            "--log_every", str(args.log_every), "--eval_every", "0", "--eval_batches", "1", "--save_every", "0",
            "--report_to", "none", "--mixed_precision", "no", "--cpu_threads", str(args.threads),
            "--num_workers", str(args.num_workers),
        ]  # fmt: skip
        run_process(command, args, f"fmkit {task} run")
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    windows = [record for record in map(json.loads, lines) if "samples_per_s" in record][args.warmup_windows :]
    images = args.log_every * batch_size
    seconds = [images / window["samples_per_s"] for window in windows]
    waited = sum(window["data_wait_fraction"] * s for window, s in zip(windows, seconds, strict=True))
    return {**summarize(seconds, images), "data_wait_fraction": waited / sum(seconds)}


# ---------------------------------------------------------------------------------------------- plain side


def run_plain(task: str, args: argparse.Namespace) -> dict:
    """The plain loop in a fresh process, like fmkit's (see plain_worker)."""
    with tempfile.TemporaryDirectory(prefix="plain-pretext-bench-") as work:
        result = Path(work) / "result.json"
        command = [
            sys.executable, __file__, "--plain_worker", task, "--out", str(result), "--steps", str(args.steps),
            "--log_every", str(args.log_every), "--warmup_windows", str(args.warmup_windows),
            "--threads", str(args.threads),
        ]  # fmt: skip
        run_process(command, args, f"plain {task} loop")
        return json.loads(result.read_text())


def plain_worker(task: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = preset_config(task, args.threads)
    model, batches = build_plain(task, config)
    args.out.write_text(json.dumps(time_plain(model, batches, config, args)))


def build_plain(task_name: str, config: PretextConfig) -> tuple[nn.Module, list[dict]]:
    """The model exactly as fmkit builds it (same seed), and ready batches from the task's make_inputs."""
    set_seed(config.seed)
    task: PretextTask = get_task(task_name)(config)
    model = task.setup(Accelerator(cpu=True))
    rng = np.random.default_rng(config.seed)
    batches = []
    for _ in range(PLAIN_BATCHES):
        picked = np.sort(rng.choice(task.train_index, config.per_device_batch_size, replace=False))
        rngs = [np.random.default_rng(seed) for seed in rng.integers(2**32, size=len(picked))]
        batches.append(task.make_inputs(task.crops(task.train_images.images[picked], rngs), rngs))
    return model, batches


def time_plain(model: nn.Module, batches: list[dict], config: PretextConfig, args: argparse.Namespace) -> dict:
    """Forward, cross-entropy, backward, clip, fused AdamW step, zero_grad: nothing else inside the clock."""
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )
    step_ends = []
    for step in range(args.steps):
        batch = batches[step % len(batches)]
        loss = F.cross_entropy(model(batch["pixel_values"]), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(time.perf_counter())
    window_ends = step_ends[args.warmup_windows * args.log_every - 1 :: args.log_every]
    return summarize(np.diff(window_ends).tolist(), args.log_every * config.per_device_batch_size)


# ---------------------------------------------------------------------------------------------- report


def benchmark_task(task: str, args: argparse.Namespace) -> list[dict]:
    """Both sides `repeats` times, alternating; the 1-minute load average after each shows other work."""
    batch_size = preset_config(task, args.threads).per_device_batch_size
    runs = []
    for repeat in range(args.repeats):
        fmkit = {**run_fmkit(task, batch_size, args), "load_1min": os.getloadavg()[0]}
        plain = {**run_plain(task, args), "load_1min": os.getloadavg()[0]}
        runs.append({"task": task, "repeat": repeat, "fmkit": fmkit, "plain": plain,
                     "ratio": fmkit["images_per_s"] / plain["images_per_s"]})  # fmt: skip
        print(table_row(runs[-1]), flush=True)
    return runs


TABLE_HEADER = (
    "| task | run | fmkit img/s | plain img/s | fmkit / plain | fmkit data wait | load after fmkit / plain |\n"
    "|---|---|---|---|---|---|---|"
)


def table_row(run: dict) -> str:
    fmkit, plain = run["fmkit"], run["plain"]
    cells = [
        run["task"], run["repeat"] + 1, f"{fmkit['images_per_s']:.1f}", f"{plain['images_per_s']:.1f}",
        f"{run['ratio']:.3f}", f"{fmkit['data_wait_fraction']:.1%}",
        f"{fmkit['load_1min']:.1f} / {plain['load_1min']:.1f}",
    ]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.warmup_windows < 1 or args.steps % args.log_every or args.steps <= args.warmup_windows * args.log_every:
        raise SystemExit("--steps must be a multiple of --log_every with at least one window after --warmup_windows")
    if args.plain_worker is not None:
        plain_worker(args.plain_worker, args)
        return
    print(TABLE_HEADER, flush=True)
    runs = [run for task in args.tasks for run in benchmark_task(task, args)]
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plain_worker")}
    save_report({"settings": settings, "machine": machine(), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
