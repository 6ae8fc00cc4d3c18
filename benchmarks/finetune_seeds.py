"""The fine-tuning demos over several seeds: does the pretrained model beat scratch, does LoRA come close to full?

Each run is `python recipes/finetune.py ... --seed S` as a user runs it, in its own process. The seed changes the
head's initialisation, the validation split and the data order; the pretrained model stays the one given (the
demos': runs/mlm-demo, runs/pretext-rotation, runs/contrastive-simclr, runs/contrastive-npid; make them first).
From each run it keeps the test scores (with the scratch twin's, when the row trains one) and the share of
trained parameters, and prints mean +- spread (half the range) per row as a Markdown table and as JSON.

    python benchmarks/finetune_seeds.py --rows text-full text-lora --seeds 0 1 2 --out finetune.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "text-full": ["--task", "text-classification"],
    "text-lora": ["--task", "text-classification", "--adapter", "lora", "--learning_rate", "2e-3",
                  "--compare_scratch", "false"],
    "text-linear": ["--task", "text-classification", "--adapter", "linear", "--compare_scratch", "false"],
    "image-rotation": ["--task", "image-classification"],
    "image-simclr": ["--task", "image-classification", "--model_name_or_path", "runs/contrastive-simclr"],
    "image-npid": ["--task", "image-classification", "--model_name_or_path", "runs/contrastive-npid"],
}
"""Each row's flags on top of its task's demo preset."""
TRAINED_SHARE = re.compile(r"adapter trains ([\d,]+) of ([\d,]+) parameters")


def run(row: str, seed: int, threads: int, out: Path, flags: list[str]) -> dict[str, float]:
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), *ROWS[row], "--seed", str(seed),
               "--output_dir", str(out), "--report_to", "none", "--cpu_threads", str(threads), *flags]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scores = {k: v for record in records for k, v in record.items() if k.startswith("test_")}
    trained, total = (int(n.replace(",", "")) for n in TRAINED_SHARE.findall(result.stderr)[-1])
    return {**scores, "trained_share": trained / total, "wall_s": time.perf_counter() - start}


def spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| row | seeds | wall s (both runs) | trained parameters | test accuracy | scratch | gain (points) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row, runs in results.items():
        accuracy = [r["test_accuracy"] for r in runs]
        scratch = [r["test_accuracy_scratch"] for r in runs if "test_accuracy_scratch" in r]
        gains = [100 * (r["test_accuracy"] - r["test_accuracy_scratch"]) for r in runs if "test_accuracy_scratch" in r]
        gain = f"{sum(gains) / len(gains):+.1f} ({min(gains):+.1f} to {max(gains):+.1f})" if gains else "-"
        cells = [row, str(len(runs)), f"{sum(r['wall_s'] for r in runs) / len(runs):.0f}",
                 f"{100 * runs[0]['trained_share']:.2f}%", spread(accuracy), spread(scratch) if scratch else "-",
                 gain]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=["text-full", "text-lora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flags", default="", help="extra recipe flags for every run, e.g. '--max_steps 100'")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            for seed in args.seeds:
                scores = run(row, seed, args.threads, Path(tmp) / f"{row}-{seed}", args.flags.split())
                print(f"{row} seed {seed}: {json.dumps(scores)}", flush=True)
                results.setdefault(row, []).append(scores)
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
