"""Input checks shared by the losses: each raises a one-line ValueError that names the argument and its shape."""

from __future__ import annotations

import torch


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_features(name: str, features: torch.Tensor) -> None:
    """A batch of feature vectors: (rows, dim)."""
    if features.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(features.shape)}")


def check_same_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Two feature batches that are compared with each other: both (rows, dim) with the same dim."""
    check_features(name_a, a)
    check_features(name_b, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same feature dim, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_labels(features: torch.Tensor, labels: torch.Tensor) -> None:
    """One integer label per row of `features`."""
    check_features("features", features)
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must have shape ({features.shape[0]},), one per row of features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}"
        )


def check_rows_fit(name: str, rows: int, offset: int, columns_name: str, columns: torch.Tensor) -> None:
    """The local rows sit at [offset, offset + rows) among the (gathered) columns."""
    if offset < 0 or offset + rows > columns.shape[0]:
        raise ValueError(
            f"{rows} rows of {name} at offset {offset} do not fit in {columns_name} of shape {tuple(columns.shape)}"
        )
