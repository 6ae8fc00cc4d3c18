"""Reading finished fine-tuning runs back, and the label-efficiency sweep's table and plot.

The plot is the curve that says what self-supervision bought: test accuracy against the number of labels, for
the pretrained model and for the same architecture trained from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

FINAL = "final"
LABELS_FILE = "labels.json"
"""Written by every run: its class names in id order and how many training examples each class had."""
SWEEP_TABLE = "label_efficiency.md"
SWEEP_PLOT = "label_efficiency.png"


def run_metrics(output_dir: Path) -> dict:
    """A run's metrics.jsonl as {step: merged record} plus {"final": its test scores}; {} for no run."""
    path = Path(output_dir) / "metrics.jsonl"
    records: dict = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        tests = {k: v for k, v in record.items() if k.startswith("test_")}
        records.setdefault(step, {}).update({k: v for k, v in record.items() if k not in tests})
        if tests:
            records.setdefault(FINAL, {}).update(tests)
    return records


def completed(output_dir: Path) -> bool:
    """A run that scored its test split and wrote its model card, the last thing a run writes (a sweep resumed later
    skips it)."""
    return FINAL in run_metrics(output_dir) and (Path(output_dir) / "README.md").is_file()


def write_sweep(root: Path, runs: dict[float, Path], metric: str) -> Path:
    """root/label_efficiency.md (and .json, .png): test <metric> per label fraction, pretrained and scratch."""
    rows = []
    for fraction, folder in sorted(runs.items()):
        final = run_metrics(folder).get(FINAL, {})
        scratch = run_metrics(folder / "scratch").get(FINAL, {})
        rows.append({
            "label_fraction": fraction,
            "training_examples": _training_examples(folder),
            f"test_{metric}": final.get(f"test_{metric}"),
            f"test_{metric}_scratch": scratch.get(f"test_{metric}"),
        })  # fmt: skip
    (root / "label_efficiency.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"| label fraction | training examples | test {metric} | from scratch |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"{row['label_fraction']:g}", str(row["training_examples"])]
        cells += [_cell(row[f"test_{metric}"]), _cell(row[f"test_{metric}_scratch"])]
        lines.append("| " + " | ".join(cells) + " |")
    (root / SWEEP_TABLE).write_text("\n".join(lines) + "\n")
    _plot(root / SWEEP_PLOT, rows, metric)
    return root / SWEEP_TABLE


def _training_examples(folder: Path) -> int | None:
    labels = Path(folder) / LABELS_FILE
    return json.loads(labels.read_text())["training_examples"] if labels.is_file() else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plot(path: Path, rows: list[dict], metric: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    fractions = [row["label_fraction"] for row in rows]
    for key, label, style in ((f"test_{metric}", "pretrained", "o-"), (f"test_{metric}_scratch", "scratch", "s--")):
        points = [(f, row[key]) for f, row in zip(fractions, rows, strict=True) if row[key] is not None]
        if points:
            axes.plot(*zip(*points, strict=True), style, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("fraction of training labels")
    axes.set_ylabel(f"test {metric.replace('_', ' ')}")
    axes.set_title("What the pretraining bought")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
