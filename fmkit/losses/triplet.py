"""Triplet loss with a margin (Schroff et al. 2015) and its batch-hard form (Hermans et al. 2017).

    l = max(0, ||a - p|| - ||a - n|| + margin)        (Euclidean distances, mean over triplets)

Batch-hard mining builds one triplet per anchor from a labelled batch: its farthest positive and its
nearest negative, so every step trains on the batch's hardest cases without a separate mining pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmkit.losses._checks import check_features, check_labels, check_same_shape


def triplet_margin_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    """anchor, positive, negative: (B, d), row i one triplet."""
    check_features("anchor", anchor)
    check_same_shape("anchor", anchor, "positive", positive)
    check_same_shape("anchor", anchor, "negative", negative)
    return _hinge(_distance(anchor, positive), _distance(anchor, negative), margin).mean()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The mean over anchors of max(0, max_{p: same label} d(a, p) - min_{n: other label} d(a, n) + margin).

    An anchor without a positive (a label seen once) or without a negative has no triplet and is left out.
    features: (B, d); labels: (B,).
    """
    check_labels(features, labels)
    distances = torch.cdist(features, features)
    same_label = labels[:, None] == labels[None, :]
    is_self = torch.eye(len(labels), dtype=torch.bool, device=features.device)
    positive_mask, negative_mask = same_label & ~is_self, ~same_label
    has_triplet = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    if not has_triplet.any():
        raise ValueError(
            f"batch-hard mining needs an anchor with both a same-label and an other-label row; labels {labels.tolist()}"
        )
    hardest_positive = distances.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(~negative_mask, float("inf")).amin(dim=1)
    return _hinge(hardest_positive[has_triplet], hardest_negative[has_triplet], margin).mean()


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a - b, dim=1)


def _hinge(positive_distance: torch.Tensor, negative_distance: torch.Tensor, margin: float) -> torch.Tensor:
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return F.relu(positive_distance - negative_distance + margin)
