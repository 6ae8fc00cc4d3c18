"""InfoNCE: classify each anchor's positive among negatives by cosine similarity / temperature.

Both forms take *global* columns: the rows are this process's anchors, the columns may be the features
gathered from every rank, and `offset` says where the local rows sit among them (rank * local batch when
every rank has the same batch). With one process the columns are the rows themselves and the offset is 0;
distributed training just passes the gathered columns and the offset, and each rank's loss is the loss of
its own rows of the global batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from fmkit.losses._checks import check_features, check_positive, check_rows_fit, check_same_dim, check_same_shape

Reduction = Literal["mean", "sum", "none"]


def info_nce_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    temperature: float,
    *,
    offset: int = 0,
    negatives: torch.Tensor | None = None,
    in_batch_negatives: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Queries against keys, where query i's positive is key offset + i (MoCo, CLIP's one direction).

        l_i = -log  exp(s(q_i, k_{o+i}) / T) / ( sum_{c in C_i} exp(s(q_i, c) / T) )

    with s the cosine similarity. C_i holds k_{o+i}, every other key when `in_batch_negatives` (CLIP, MoCo v3),
    and every row of `negatives` (MoCo v1/v2's queue: without in-batch negatives the logits are exactly
    [q.k+, q.queue]). queries: (n, d); keys: (M, d) with offset + n <= M; negatives: (Q, d).
    """
    check_positive("temperature", temperature)
    check_same_dim("queries", queries, "keys", keys)
    rows = queries.shape[0]
    check_rows_fit("queries", rows, offset, "keys", keys)
    queries, keys = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    if in_batch_negatives:
        logits = queries @ keys.T
        targets = torch.arange(offset, offset + rows, device=queries.device)
    else:
        logits = (queries * keys[offset : offset + rows]).sum(dim=1, keepdim=True)
        targets = torch.zeros(rows, dtype=torch.long, device=queries.device)
    if negatives is not None:
        check_same_dim("queries", queries, "negatives", negatives)
        logits = torch.cat([logits, queries @ F.normalize(negatives, dim=1).T], dim=1)
    return F.cross_entropy(logits / temperature, targets, reduction=reduction)


def nt_xent_loss(
    view1: torch.Tensor,
    view2: torch.Tensor,
    temperature: float,
    *,
    all_view1: torch.Tensor | None = None,
    all_view2: torch.Tensor | None = None,
    offset: int = 0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2n views finds its partner among the other 2N - 1 views of the global batch.

        l_a = -log  exp(s(z_a, z_p(a)) / T) / ( sum_{b != a} exp(s(z_a, z_b) / T) )

    over the 2N views z = [all_view1; all_view2] (2N - 2 negatives each), s the cosine similarity and p(a)
    the other view of a's image. The local rows are [view1; view2], so with reduction="none" the losses come
    in that order; "mean" averages them. view1, view2: (n, d); all_view1, all_view2: (N, d), defaulting to
    view1, view2, holding the local rows at [offset, offset + n).
    """
    check_positive("temperature", temperature)
    check_same_shape("view1", view1, "view2", view2)
    check_features("view1", view1)
    all_view1 = view1 if all_view1 is None else all_view1
    all_view2 = view2 if all_view2 is None else all_view2
    check_same_shape("all_view1", all_view1, "all_view2", all_view2)
    check_same_dim("view1", view1, "all_view1", all_view1)
    rows, total = view1.shape[0], all_view1.shape[0]
    check_rows_fit("view1", rows, offset, "all_view1", all_view1)
    anchors = F.normalize(torch.cat([view1, view2]), dim=1)
    columns = F.normalize(torch.cat([all_view1, all_view2]), dim=1)
    logits = anchors @ columns.T / temperature
    local = torch.arange(offset, offset + rows, device=view1.device)
    own_columns = torch.cat([local, local + total])
    partner_columns = torch.cat([local + total, local])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * rows, device=view1.device), own_columns] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, partner_columns, reduction=reduction)
