"""N-pair loss (Sohn 2016): each anchor picks its own positive out of the positives of all N pairs.

    l_i = log(1 + sum_{j != i} exp(f_i . f+_j - f_i . f+_i))  =  -log softmax_j(f_i . f+_j)[i]

averaged over the N anchors, with plain dot products (unnormalised embeddings, as in the paper). The pairs
must come from N different classes, so that every other pair's positive is a true negative. Sohn also adds
a small L2 penalty on the embeddings to keep the dot products bounded; that is left to the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmkit.losses._checks import check_features, check_same_shape


def n_pair_loss(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """anchors, positives: (N, d), row i of both from class i."""
    check_features("anchors", anchors)
    check_same_shape("anchors", anchors, "positives", positives)
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(anchors @ positives.T, targets)
