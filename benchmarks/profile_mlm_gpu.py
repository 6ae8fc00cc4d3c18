"""Where a bert-base MLM step spends its time on a GPU: torch.profiler over a few steps of the real loop.

    python benchmarks/profile_mlm_gpu.py [--block_size 128 --per_device_batch_size 256]

Prints the GPU's busy fraction (kernel time per profiled step over the median step time of the unprofiled
steps before it, read from metrics.jsonl: the profiler itself slows the host) and the top kernels.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from fmkit.config import parse_config
from fmkit.tasks.mlm import MaskedLM, MLMConfig
from fmkit.trainer import Trainer

WAIT, WARMUP, ACTIVE = 20, 3, 5


class ProfiledTrainer(Trainer):
    """The real loop; only the optimizer step is wrapped to drive the profiler's schedule."""

    def __init__(self, task, profiler):
        super().__init__(task)
        self.profiler = profiler

    def _step(self, *args, **kwargs):
        result = super()._step(*args, **kwargs)
        self.profiler.step()
        return result


def main() -> None:
    argv = ["--config", "recipes/configs/mlm/bert-base.yaml", "--gradient_accumulation_steps", "1",
            "--max_steps", str(WAIT + WARMUP + ACTIVE + 2), "--eval_every", "0", "--save_every", "0",
            "--log_every", "1", "--report_to", "none", "--output_dir", "/tmp/fmkit-profile",
            "--overwrite_output_dir", "true", "--block_size", "128", "--per_device_batch_size", "256",
            *sys.argv[1:]]  # fmt: skip
    config = parse_config(MLMConfig, argv)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE)) as profiler:
        ProfiledTrainer(MaskedLM(config), profiler).fit()
    # Kernels only: operator rows (aten::mm) and step annotations would count the same GPU time again.
    kernels = [e for e in profiler.events() if e.device_type == DeviceType.CUDA and not e.name.startswith("Profiler")]
    kernel_ms = sum(e.device_time_total for e in kernels) / 1e3 / ACTIVE
    metrics = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    unprofiled = [m for m in metrics if 5 < m.get("step", 0) <= WAIT and "samples_per_s" in m]
    step_ms = statistics.median(1e3 * config.per_device_batch_size / m["samples_per_s"] for m in unprofiled)
    print(f"GPU busy: {kernel_ms:.1f} ms of kernels per step, unprofiled step {step_ms:.1f} ms "
          f"({100 * kernel_ms / step_ms:.0f}%)")  # fmt: skip
    print(profiler.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
