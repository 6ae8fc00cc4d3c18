"""Throughput, model FLOPs utilisation, and the metrics log (metrics.jsonl, trackers, console)."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Collection
from pathlib import Path

import torch

from fmkit.data.cache import cache_root, fingerprint

# Dense (no sparsity) peak TFLOP/s per GPU for 16-bit and for fp32 matmuls, from vendor datasheets.
# Matched against torch.cuda.get_device_name() by substring, first match wins.
GPU_PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H200", 989.0, 67.0),
    ("GH200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("H800", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.0, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
]


def transformer_flops_per_token(
    dense_params: int, num_layers: int, hidden_size: int, context: int, head_flops: float = 0.0
) -> float:
    """Training FLOPs per token: 6 per dense parameter, plus attention scores (12·L·d·T), plus a head term."""
    return 6.0 * dense_params + 12.0 * num_layers * hidden_size * context + head_flops


def peak_flops(device: torch.device, mixed_precision: str) -> float:
    """Peak FLOP/s of one device: the datasheet for known GPUs, a measured matmul rate on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, single in GPU_PEAK_TFLOPS:
            if key in name:
                return (half if mixed_precision in ("bf16", "fp16") else single) * 1e12
        return float("nan")
    if device.type == "cpu":
        return cpu_peak_flops()
    return float("nan")


def cpu_peak_flops(size: int = 2048, trials: int = 5) -> float:
    """fp32 matmul rate of this CPU at the current thread count, measured once and cached.

    The best of several trials: one trial can be slowed by other work (tokenizer threads winding down).
    """
    threads = torch.get_num_threads()
    cache = cache_root() / "cpu_peak" / f"{fingerprint(platform.processor(), platform.machine(), threads)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["flops"]
    private = torch.Generator().manual_seed(0)  # the global RNG drives dropout: leave it untouched
    a, b = torch.randn(size, size, generator=private), torch.randn(size, size, generator=private)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * size**3 / (time.perf_counter() - start))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"flops": best, "threads": threads}))
    tmp.replace(cache)
    return best


class Throughput:
    """Counts work between log steps; rates are global (summed over processes by the caller).

    The counts stay a device tensor until `counts()` reads them, so counting never waits for the GPU.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.work: torch.Tensor | float = 0.0
        """Samples and tokens since the reset, a device tensor of 2 once counted."""
        self.data_wait = 0.0

    def add(self, samples_and_tokens: torch.Tensor) -> None:
        self.work = self.work + samples_and_tokens

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def counts(self) -> tuple[float, float]:
        """(samples, tokens) since the reset: a host sync, at log steps only."""
        return tuple(self.work.tolist()) if isinstance(self.work, torch.Tensor) else (0.0, 0.0)


class MetricsLog:
    """One JSON object per log step in metrics.jsonl, mirrored to Accelerate's trackers (main process only)."""

    def __init__(self, path: Path, accelerator, resume_step: int | None):
        self.path, self.accelerator = path, accelerator
        if accelerator.is_main_process and resume_step is not None and path.is_file():
            # Lines past the checkpoint came from the interrupted run; the resumed run writes them anew.
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_line(step: int, metrics: dict[str, float]) -> str:
    """A compact console line: `step 120 | loss 4.123 | lr 9.8e-04 | 5.2k tok/s | mfu 31.0%`."""
    parts = [f"step {step}"]
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key.endswith("_per_s"):
            parts.append(
                f"{_si(value)} {key.removesuffix('_per_s').replace('tokens', 'tok').replace('samples', 'smp')}/s"
            )
        elif key == "mfu":
            parts.append(f"mfu {100 * value:.1f}%")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


def _si(value: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


BASELINE_SUFFIXES = ("_random_backbone", "_unigram", "_degraded_input", "_bicubic", "_grey", "_mean_patch", "_chance",
                     "_scratch", "_majority", "_zero_shot")  # fmt: skip
"""Metric X's trivial baseline is logged as X plus one of these: what X is without what is being measured
(training, context, a model at all). The model card and curves.png pair them by these names."""


def baseline_of(name: str, names: Collection[str]) -> str | None:
    """The metric `name` is the baseline of, when `name` ends in a baseline suffix and that metric is in `names`."""
    for suffix in BASELINE_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in names:
            return name.removesuffix(suffix)
    return None
