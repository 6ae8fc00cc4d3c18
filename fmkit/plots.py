"""Pictures of a run, for people who would rather look than read: sample grids and curves.png.

matplotlib is imported inside the function that draws with it (Agg, no display), so importing fmkit never
loads it and a run on a headless machine never needs one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmkit.metrics import baseline_of

logger = logging.getLogger(__name__)

GRID_GAP = 2
"""White pixels between the tiles of a sample grid."""
SAMPLES_DIR = "samples"
CURVES_FILE = "curves.png"
TRAINING_PANEL = "training loss"
EVAL_LOSS_PANEL = "eval loss"
PERPLEXITY_PANEL = "perplexity"
ACCURACY_PANEL = "accuracy-like, in [0, 1]"
ZERO_SHOT_PANEL = "zero-shot accuracy"
RECALL_PANEL = "retrieval recall@k"
PSNR_PANEL = "PSNR (dB)"
PANEL_ORDER = (TRAINING_PANEL, EVAL_LOSS_PANEL, PERPLEXITY_PANEL, ACCURACY_PANEL, ZERO_SHOT_PANEL, RECALL_PANEL,
               PSNR_PANEL)  # fmt: skip
ACCURACY_WORDS = ("accuracy", "recall", "top", "auc")
"""Metrics whose names hold one of these and whose values stay in [0, 1] go to the accuracy-like panels."""


# -- sample grids ---------------------------------------------------------------------------------------------


def image_grid(columns: Sequence[torch.Tensor]) -> np.ndarray:
    """One row per image and one column per tensor (input | prediction | target), as [H, W, 3] uint8.

    Each tensor is [B, 3, S, S] (or [B, 1, S, S], shown grey) with values in [0, 1].
    """
    if not columns or len({(c.shape[0], *c.shape[2:]) for c in columns}) != 1 or columns[0].dim() != 4:
        shapes = [tuple(c.shape) for c in columns]
        raise ValueError(f"image_grid: expected [B, C, H, W] tensors of one batch and image size, got {shapes}")
    rows, (height, width) = columns[0].shape[0], columns[0].shape[-2:]
    grid = np.full((rows * (height + GRID_GAP) - GRID_GAP, len(columns) * (width + GRID_GAP) - GRID_GAP, 3), 255)
    for col, images in enumerate(columns):
        tiles = images.detach().float().clamp(0, 1).expand(-1, 3, -1, -1).mul(255).round().byte()
        for row, tile in enumerate(tiles.permute(0, 2, 3, 1).cpu().numpy()):
            top, left = row * (height + GRID_GAP), col * (width + GRID_GAP)
            grid[top : top + height, left : left + width] = tile
    return grid.astype(np.uint8)


def write_sample_grid(columns: Sequence[torch.Tensor], accelerator, output_dir: str | Path, step: int) -> None:
    """output_dir/samples/step_<N>.png, and the same picture in TensorBoard when it is on (main process only)."""
    if not accelerator.is_main_process:
        return
    grid = image_grid(columns)
    folder = Path(output_dir) / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(folder / f"step_{step}.png")
    if any(tracker.name == "tensorboard" for tracker in accelerator.trackers):
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_image(SAMPLES_DIR, grid, global_step=step, dataformats="HWC")


# -- curves.png -----------------------------------------------------------------------------------------------


def write_curves(output_dir: str | Path) -> Path | None:
    """output_dir/curves.png from output_dir/metrics.jsonl; None (with a warning) when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    output_dir = Path(output_dir)
    metrics = output_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    figure = curves_figure(records)
    if not figure.axes:
        logger.warning("%s: no metric to plot, so no %s", metrics, CURVES_FILE)
        return None
    FigureCanvasAgg(figure)
    path = output_dir / CURVES_FILE
    figure.savefig(path, dpi=100)
    return path


def curves_figure(records: list[dict]):
    """A matplotlib Figure: training loss vs step, then one panel per group of eval metrics.

    Eval metrics are grouped into losses, perplexities, PSNRs and values that stay in [0, 1] (accuracies and
    AuCs; zero-shot accuracy and retrieval recall each apart); any other metric gets a panel of its own. A
    baseline shares its metric's panel and colour, dashed.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    training = _series([r for r in records if "lr" in r])
    training = {name: points for name, points in training.items() if name == "loss" or name.endswith("_loss")}
    evaluation = _series([r for r in records if "lr" not in r])
    panels: dict[str, list[str]] = {TRAINING_PANEL: sorted(training)} if training else {}
    for name in sorted(evaluation):
        if baseline_of(name, evaluation) is None:
            panels.setdefault(_panel(name, evaluation[name]), []).append(name)
    panels = dict(sorted(panels.items(), key=lambda panel: _panel_rank(panel[0])))
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns) if panels else 0
    width, height = 5 * max(columns, 1), 3.5 * max(rows, 1)
    figure = Figure(figsize=(width, height))
    # Fixed margins, in inches: a constrained layout measures every label first, and costs more than the drawing.
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.4 / height,
                           wspace=0.3, hspace=0.5)  # fmt: skip
    for index, (title, names) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        series = training if title == TRAINING_PANEL else evaluation
        for number, name in enumerate(names):
            colour = f"C{number % 10}"
            axes.plot(*zip(*series[name], strict=True), color=colour, marker=".", label=name)
            for baseline in sorted(b for b in series if baseline_of(b, series) == name):
                axes.plot(*zip(*series[baseline], strict=True), color=colour, linestyle="--", label=baseline)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.xaxis.get_major_locator().set_params(integer=True)
        values = [value for name in names for _, value in series[name]]
        if title == PERPLEXITY_PANEL and min(values) > 0 and max(values) > 10 * min(values):
            axes.set_yscale("log")
        # The legend names the metrics; one entry says what the dashed lines are, so it stays short.
        handles = [line for line in axes.lines if line.get_linestyle() != "--"]
        if len(handles) < len(axes.lines):
            handles.append(Line2D([], [], color="grey", linestyle="--", label="baseline (its metric's colour)"))
        axes.legend(handles=handles, fontsize="small")
    return figure


def _series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} over finite numbers; a metric holding anything else is skipped, with a warning.

    Non-finite values are logged as null: those points are left out, and a metric with no finite point is skipped.
    Strings are labels logged beside the numbers (which probe set was used), not metrics: they are left out.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    unplottable: set[str] = set()
    for record in records:
        for name, value in record.items():
            if name == "step" or name in unplottable or value is None or isinstance(value, str):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                logger.warning("%s: skipping metric %s, its value %r at step %s is not a number",
                               CURVES_FILE, name, value, record["step"])  # fmt: skip
                unplottable.add(name)
                series.pop(name, None)
                continue
            series.setdefault(name, []).append((record["step"], float(value)))
    labels = {name for r in records for name, value in r.items() if isinstance(value, str)}
    empty = sorted({name for r in records for name in r} - unplottable - labels - set(series) - {"step"})
    if empty:
        logger.warning("%s: skipping %s, never finite", CURVES_FILE, ", ".join(empty))
    return series


def _panel(name: str, points: list[tuple[int, float]]) -> str:
    if "psnr" in name:
        return PSNR_PANEL
    if "perplexity" in name:
        return PERPLEXITY_PANEL
    if "loss" in name:
        return EVAL_LOSS_PANEL
    if any(word in name for word in ACCURACY_WORDS) and all(0.0 <= value <= 1.0 for _, value in points):
        return ZERO_SHOT_PANEL if "zero_shot" in name else RECALL_PANEL if "recall" in name else ACCURACY_PANEL
    return name


def _panel_rank(title: str) -> int:
    """The grouped panels first, in PANEL_ORDER; panels of single metrics after them."""
    return PANEL_ORDER.index(title) if title in PANEL_ORDER else len(PANEL_ORDER)
