"""A contrastive loss over a whole accumulated step, one micro-batch's gradient at a time (feature caching).

open_clip's `--accum-freq` idea, for any contrastive objective (image-text, two image views, ...): compute
every micro-batch's features first without gradients, then for each micro-batch recompute its own features
with gradients and take the loss over all of them, so the negatives come from the whole step. Summed over
the step's micro-batches, the gradients are exactly those of one big batch. Parameters the loss shares
across the step (CLIP's temperature and bias) count once per step: every micro-batch's loss sees them, so
each contributes 1/K of their gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Features = tuple[torch.Tensor, ...]
"""One micro-batch's row-aligned feature tensors (row i of each is sample i's): (image, text), (view 1, view 2)."""


class AccumulatedContrastiveLoss:
    def __init__(self, loss_fn: Callable[..., torch.Tensor]):
        self.loss_fn = loss_fn
        """loss_fn(*features, *shared) -> the loss summed over the local rows of the batch it is given (it may
        gather columns from other processes)."""
        self.cached: list[Features] = []

    def begin(self, features: Sequence[Features]) -> None:
        """The step's micro-batch features, computed without gradients; none for a one-micro-batch step."""
        self.cached = list(features) if len(features) > 1 else []

    def __call__(
        self, features: Features, shared: Sequence[torch.Tensor | None] = (), position: int = 0
    ) -> torch.Tensor:
        """The loss summed over the step's contrastive batch, as micro-batch `position`'s share of it.

        The value is this micro-batch's share of the sum (so a step reports the big-batch loss once); the
        gradient is the whole sum's, through this micro-batch's features only.
        """
        share = 1.0
        if self.cached:
            columns = [list(side) for side in zip(*self.cached, strict=True)]
            for side, live in zip(columns, features, strict=True):
                side[position] = live
            features = tuple(torch.cat(side) for side in columns)
            share = 1.0 / len(self.cached)
            shared = [None if value is None else _gradient_share(value, share) for value in shared]
        total = self.loss_fn(*features, *shared)
        return total.detach() * share + (total - total.detach())


def _gradient_share(value: torch.Tensor, share: float) -> torch.Tensor:
    """The same value, with `share` of its gradient."""
    return value.detach() + (value - value.detach()) * share
