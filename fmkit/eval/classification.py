"""How well a classifier does on a labelled split: accuracy, macro-F1, per-class precision/recall, the
majority-class baseline and a confusion-matrix picture. scikit-learn computes; this module names and draws."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

CONFUSION_FILE = "confusion_matrix.png"


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, num_classes: int, majority_class: int, prefix: str
) -> dict[str, float]:
    """<prefix>_accuracy and <prefix>_macro_f1, with <prefix>_accuracy_majority beside them: what always answering
    the training split's most frequent class scores."""
    classes = list(range(num_classes))
    return {
        f"{prefix}_accuracy": float(np.mean(predictions == labels)),
        f"{prefix}_accuracy_majority": float(np.mean(labels == majority_class)),
        f"{prefix}_macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
    }


def per_class_table(predictions: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> str:
    """A markdown table of precision, recall and support per class, for the model card."""
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(class_names))), zero_division=0
    )
    rows = ["| class | precision | recall | test examples |", "| --- | --- | --- | --- |"]
    rows += [
        f"| {name} | {p:.3f} | {r:.3f} | {n} |"
        for name, p, r, n in zip(class_names, precision, recall, support, strict=True)
    ]
    return "\n".join(rows)


def confusion_figure(predictions: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str):
    """A matplotlib figure of the row-normalised confusion matrix (rows: true class), counts in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = confusion_matrix(labels, predictions, labels=list(range(len(class_names))))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.55 * len(class_names) + 2)
    figure = Figure(figsize=(side, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row, col in np.ndindex(counts.shape):
        if counts[row, col]:
            colour = "white" if rates[row, col] > 0.5 else "black"
            axes.text(col, row, str(counts[row, col]), ha="center", va="center", fontsize=8, color=colour)
    figure.tight_layout()
    return figure


def write_confusion_matrix(figure, output_dir: str | Path) -> Path:
    path = Path(output_dir) / CONFUSION_FILE
    figure.savefig(path, dpi=100)
    return path
