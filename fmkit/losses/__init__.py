"""Contrastive and metric-learning losses, each a small function with its formula in its docstring.

`contrastive` holds the feature cache that spreads one contrastive batch over accumulated micro-batches.
"""

from fmkit.losses.infonce import info_nce_loss, nt_xent_loss
from fmkit.losses.nce import nce_loss, nce_normalizer
from fmkit.losses.npair import n_pair_loss
from fmkit.losses.soft_nearest_neighbour import soft_nearest_neighbour_loss
from fmkit.losses.triplet import batch_hard_triplet_loss, triplet_margin_loss

__all__ = [
    "batch_hard_triplet_loss",
    "info_nce_loss",
    "n_pair_loss",
    "nce_loss",
    "nce_normalizer",
    "nt_xent_loss",
    "soft_nearest_neighbour_loss",
    "triplet_margin_loss",
]
