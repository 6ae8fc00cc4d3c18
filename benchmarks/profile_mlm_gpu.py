"""Where a bert-base MLM step spends its time on a GPU: torch.profiler over a few steps of the real loop.

    python benchmarks/profile_mlm_gpu.py [--block_size 128 --per_device_batch_size 256]

Prints the busy fraction of the GPU (kernel time / wall time) and the top kernels by GPU time.
"""

from __future__ import annotations

import sys

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
            "--report_to", "none", "--output_dir", "/tmp/fmkit-profile", "--overwrite_output_dir", "true",
            "--block_size", "128", "--per_device_batch_size", "256", *sys.argv[1:]]  # fmt: skip
    config = parse_config(MLMConfig, argv)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE)) as profiler:
        ProfiledTrainer(MaskedLM(config), profiler).fit()
    events = profiler.key_averages()
    gpu_total = sum(e.self_device_time_total for e in events)
    steps = [e for e in profiler.events() if e.name.startswith("ProfilerStep")]
    wall = sum(e.time_range.elapsed_us() for e in steps)
    print(f"GPU busy: {gpu_total / 1e3:.1f} ms of {wall / 1e3:.1f} ms wall over {len(steps)} steps "
          f"({100 * gpu_total / max(wall, 1):.0f}%)")  # fmt: skip
    print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
