"""A contrastive loss over a whole accumulated step, one micro-batch's gradient at a time (feature caching).

open_clip's `--accum-freq` idea: compute every micro-batch's features first without gradients, then for
each micro-batch recompute its own features with gradients and take the loss over all of them, so the
negatives come from the whole step. Summed over the step's micro-batches, the gradients are exactly those of
one big batch. Unlike open_clip, the temperature (and bias) counts once per step: every micro-batch's loss
sees it, so each contributes 1/K of its gradient.
"""

from __future__ import annotations

import torch
from torch import nn


class AccumulatedContrastiveLoss:
    def __init__(self, loss_fn: nn.Module):
        self.loss_fn = loss_fn
        """open_clip's ClipLoss or SigLipLoss: a mean (per local row) over the batch it is given."""
        self.cached: list[tuple[torch.Tensor, torch.Tensor]] = []

    def begin(self, features: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The step's (image, text) features, computed without gradients; none for a one-micro-batch step."""
        self.cached = features if len(features) > 1 else []

    def __call__(self, image, text, scale, bias, position: int = 0) -> torch.Tensor:
        """The loss summed over the rows of the step's contrastive batch, as micro-batch `position`'s share.

        The value is this micro-batch's share of the sum (so a step reports the big-batch loss once); the
        gradient is the whole sum's, through this micro-batch's features only.
        """
        share = 1.0
        if self.cached:
            images, texts = [list(side) for side in zip(*self.cached, strict=True)]
            images[position], texts[position] = image, text
            image, text = torch.cat(images), torch.cat(texts)
            share = 1.0 / len(self.cached)
            scale = _gradient_share(scale, share)
            bias = None if bias is None else _gradient_share(bias, share)
        total = self.loss_fn(image, text, scale, bias) * image.shape[0]
        return total.detach() * share + (total - total.detach())


def _gradient_share(value: torch.Tensor, share: float) -> torch.Tensor:
    """The same value, with `share` of its gradient."""
    return value.detach() + (value - value.detach()) * share
