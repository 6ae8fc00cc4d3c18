"""Vision pretext throughput: fmkit's loop (recipes/pretext.py) against a bare PyTorch loop on the same model.

The bare loop is the upper bound a user could reach by hand: the same backbone and head (built by fmkit's
own builders from the task's demo preset), the same batch size, threads, fp32 and fused AdamW with
clipping, but its batches are made by the task's own `make_inputs` before the clock starts, so it pays no
data cost. fmkit runs as a user runs it and pays for its data inside the loop (`data_wait_fraction`).

Images/s counts original images on both sides (rotation trains on 4 rotated copies of each). The first
`--warmup_windows` log windows of each side are left out.

    python benchmarks/pretext_throughput.py                       # rotation and jigsaw, 60 steps, 2 repeats
    python benchmarks/pretext_throughput.py --tasks jigsaw --steps 40 --repeats 1
"""

from __future__ import annotations

import argparse
import copy
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
from mlm_throughput import REPO, machine, thread_env
from torch import nn

from fmkit.config import parse_config
from fmkit.tasks import get_task
from fmkit.tasks.pretext.common import PretextConfig, PretextTask

PRESETS = REPO / "recipes" / "configs" / "pretext"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rotation", "jigsaw"], choices=["rotation", "jigsaw"])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run, warm-up included")
    parser.add_argument("--log_every", type=int, default=10, help="steps per fmkit log window")
    parser.add_argument("--warmup_windows", type=int, default=1, help="leading log windows left out, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="run both sides this many times (alternating)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--num_workers", type=int, default=0, help="fmkit's data-loader workers (preset: 0)")
    parser.add_argument("--out", type=Path, default=Path("pretext_results.json"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- fmkit side


def run_fmkit(task: str, batch_size: int, args: argparse.Namespace) -> dict:
    """recipes/pretext.py as a user runs it; rates and data wait from metrics.jsonl, warm-up windows dropped."""
    with tempfile.TemporaryDirectory(prefix="fmkit-pretext-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / "pretext.py"), "--task", task,
            "--output_dir", out, "--overwrite_output_dir", "true", "--max_steps", str(args.steps),
            "--log_every", str(args.log_every), "--eval_every", "0", "--eval_batches", "1", "--save_every", "0",
            "--report_to", "none", "--mixed_precision", "no", "--cpu_threads", str(args.threads),
            "--num_workers", str(args.num_workers),
        ]  # fmt: skip
        result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"fmkit {task} run failed:\n{result.stderr[-4000:]}")
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    windows = [record for record in map(json.loads, lines) if "samples_per_s" in record]
    return summarize_windows(windows[args.warmup_windows :], args.log_every * batch_size)


def summarize_windows(windows: list[dict], images_per_window: int) -> dict:
    """Images/s and data-wait fraction over whole log windows, each weighted by its duration."""
    seconds = [images_per_window / window["samples_per_s"] for window in windows]
    waited = sum(window["data_wait_fraction"] * s for window, s in zip(windows, seconds, strict=True))
    return {
        "images_per_s": images_per_window * len(windows) / sum(seconds),
        "data_wait_fraction": waited / sum(seconds),
        "window_images_per_s": [window["samples_per_s"] for window in windows],
    }


# ---------------------------------------------------------------------------------------------- plain side


def preset_config(task: str, threads: int) -> PretextConfig:
    """The demo preset, fp32, on the benchmark's thread count: what both sides train."""
    preset = PRESETS / f"{task}.yaml"
    overrides = ["--mixed_precision", "no", "--cpu_threads", str(threads)]
    return parse_config(get_task(task).config_class, ["--config", str(preset), *overrides])


def build_plain(task_name: str, config: PretextConfig, num_batches: int) -> tuple[nn.Module, list[dict]]:
    """The task's model as fmkit builds it, and `num_batches` input batches made by the task's make_inputs."""
    set_seed(config.seed)
    task: PretextTask = get_task(task_name)(config)
    model = task.setup(Accelerator(cpu=True))
    rng = np.random.default_rng(config.seed)
    batches = []
    for _ in range(num_batches):
        picked = np.sort(rng.choice(task.train_index, config.per_device_batch_size, replace=False))
        rngs = [np.random.default_rng(seed) for seed in rng.integers(2**32, size=len(picked))]
        batches.append(task.make_inputs(task.crops(task.train_images.images[picked], rngs), rngs))
    return model, batches


def run_plain(model: nn.Module, batches: list[dict], config: PretextConfig, args: argparse.Namespace) -> dict:
    """Forward, cross-entropy, backward, clip, fused AdamW step, zero_grad: nothing else inside the clock."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )
    step_ends = []
    for batch in batches:
        loss = F.cross_entropy(model(batch["pixel_values"]), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(time.perf_counter())
    timed = step_ends[args.warmup_windows * args.log_every - 1 :]  # from the end of the last warm-up step
    return {
        "images_per_s": config.per_device_batch_size * (len(timed) - 1) / (timed[-1] - timed[0]),
        "step_seconds": np.diff(timed).tolist(),
    }


# ---------------------------------------------------------------------------------------------- report


def benchmark_task(task: str, args: argparse.Namespace) -> list[dict]:
    """Both sides `repeats` times, alternating, on one model initialisation and one set of plain batches."""
    config = preset_config(task, args.threads)
    model, batches = build_plain(task, config, args.steps)
    runs = []
    for repeat in range(args.repeats):
        fmkit = {**run_fmkit(task, config.per_device_batch_size, args), "load_1min": os.getloadavg()[0]}
        plain = {**run_plain(model, batches, config, args), "load_1min": os.getloadavg()[0]}
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
    torch.set_num_threads(args.threads)
    runs = [run for task in args.tasks for run in benchmark_task(task, args)]
    print("\n" + TABLE_HEADER, *map(table_row, runs), sep="\n")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.write_text(json.dumps({"settings": settings, "machine": machine(), "runs": runs}, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
