"""Soft nearest neighbour loss (Frosst, Papernot & Hinton 2019): how entangled the classes are in feature space.

    l = -1/b sum_i log(  sum_{j != i, y_j = y_i} exp(-||x_i - x_j||^2 / T)
                       / sum_{k != i}            exp(-||x_i - x_k||^2 / T) )

Low when each point's soft neighbours (at temperature T) share its label. An anchor whose label appears
only once has no same-label neighbour (an infinite term) and is left out of the mean. Computed as a
difference of log-sum-exps, which stays finite where the ratio underflows.
"""

from __future__ import annotations

import torch

from fmkit.losses._checks import check_labels, check_positive


def soft_nearest_neighbour_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """features: (b, d); labels: (b,)."""
    check_positive("temperature", temperature)
    check_labels(features, labels)
    is_self = torch.eye(len(labels), dtype=torch.bool, device=features.device)
    same_label = (labels[:, None] == labels[None, :]) & ~is_self
    has_neighbour = same_label.any(dim=1)
    if not has_neighbour.any():
        raise ValueError(f"soft nearest neighbour needs some label to appear twice; labels {labels.tolist()}")
    anchors = features[has_neighbour]  # an all -inf row would give NaN gradients even when left out of the mean
    logits = -torch.cdist(anchors, features).square() / temperature
    log_same = logits.masked_fill(~same_label[has_neighbour], float("-inf")).logsumexp(dim=1)
    log_all = logits.masked_fill(is_self[has_neighbour], float("-inf")).logsumexp(dim=1)
    return (log_all - log_same).mean()
