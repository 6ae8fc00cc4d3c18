"""The vision SSL demos on Fashion-MNIST, over several seeds: does each beat its random backbone?

Each run is a demo as a user runs it, in its own process, with only the seed changed: `python
recipes/pretext.py --task TASK --seed S` for the seven pretext tasks, `python recipes/contrastive.py --method
METHOD --seed S` for the contrastive ones (moco-v3 adds `--moco_version 3`). From the final evaluation it
keeps the probes (linear, kNN, few-shot) of the trained and of the random backbone and the task's own metric
beside its baseline, then prints mean +- spread (half the range) per task, as a Markdown table and as JSON.

    python benchmarks/vision_ssl_fashion_mnist.py --tasks rotation simclr --seeds 0 1 2 --out ssl_fm.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETEXT = ("rotation", "jigsaw", "context", "colorization", "superres", "inpainting", "mim")
CONTRASTIVE = {"simclr": [], "moco": [], "moco-v3": ["--moco_version", "3"], "byol": [], "npid": [], "deepcluster": [],
               "cmc": []}  # fmt: skip
"""Each contrastive demo's method preset, with the flags that make it this row."""
TASKS = (*PRETEXT, *CONTRASTIVE)
PROBES = ("linear_probe_accuracy", "knn_accuracy", "few_shot_accuracy")
TASK_METRICS = {
    "rotation": ("eval_accuracy", None),
    "jigsaw": ("eval_accuracy", None),
    "context": ("eval_accuracy", None),
    "colorization": ("eval_psnr", "eval_psnr_grey"),
    "superres": ("eval_psnr", "eval_psnr_bicubic"),
    "inpainting": ("eval_psnr", "eval_psnr_degraded_input"),
    "mim": ("eval_psnr", "eval_psnr_mean_patch"),
    **dict.fromkeys(CONTRASTIVE, ("eval_loss", None)),
}
"""The task's own held-out metric and the trivial baseline logged beside it (None: chance is the baseline; the
contrastive losses have none worth printing)."""


def run(task: str, seed: int, threads: int, out: Path, flags: list[str]) -> dict[str, float]:
    """The final evaluation of one demo run, plus its wall time."""
    if task in CONTRASTIVE:
        demo = ["contrastive.py", "--method", task.split("-")[0], *CONTRASTIVE[task]]
    else:
        demo = ["pretext.py", "--task", task]
    command = [sys.executable, str(REPO / "recipes" / demo[0]), *demo[1:], "--seed", str(seed),
               "--output_dir", str(out), "--report_to", "none", "--cpu_threads", str(threads), *flags]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [record for record in final if "knn_accuracy" in record][-1]
    return {**final, "wall_s": time.perf_counter() - start}


def spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| task | seeds | wall s | linear (random) | kNN (random) | few-shot (random) | task metric (baseline) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, runs in results.items():
        cells = [task, str(len(runs)), f"{sum(r['wall_s'] for r in runs) / len(runs):.0f}"]
        for probe in PROBES:
            trained = spread([r[probe] for r in runs])
            random = spread([r[f"{probe}_random_backbone"] for r in runs])
            cells.append(f"{trained} ({random})")
        metric, baseline = TASK_METRICS[task]
        value = f"{metric} {spread([r[metric] for r in runs])}"
        cells.append(value + (f" ({spread([r[baseline] for r in runs])})" if baseline else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (runs go one at a time)")
    parser.add_argument("--flags", type=shlex.split, default=[], help='more recipe flags, e.g. "--max_steps 1600"')
    parser.add_argument("--out", type=Path, help="also write every run's final metrics here as JSON")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for task in args.tasks:
            for seed in args.seeds:
                final = run(task, seed, args.threads, Path(scratch) / f"{task}-{seed}", args.flags)
                results.setdefault(task, []).append(final)
                print(f"{task} seed {seed}: {final['wall_s']:.0f} s, " + ", ".join(
                    f"{p} {final[p]:.4f} (random {final[p + '_random_backbone']:.4f})" for p in PROBES
                ), flush=True)  # fmt: skip
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
