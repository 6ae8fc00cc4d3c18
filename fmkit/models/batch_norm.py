"""Finding BatchNorm, keeping its running statistics, and ghost batches: a train-mode forward normalises each row
by its batch's statistics (coupling the rows of a batch) and updates the layer's running statistics, which
evaluation uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1d, 2d, 3d, SyncBatchNorm) in `module`, wrapped (DDP, DeepSpeed) or not."""
    return [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Forwards inside leave every BatchNorm's running mean, variance and batch count as they were.

    For a second forward of the same images (feature caching), so each batch counts once. Restoring is exact,
    where a momentum of 0 would still count the batch (and momentum None averages by that count).
    """
    layers = batch_norm_layers(module)
    saved = [{name: buffer.clone() for name, buffer in layer.named_buffers(recurse=False)} for layer in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in zip(layers, saved, strict=True):
                for name, buffer in layer.named_buffers(recurse=False):
                    buffer.copy_(buffers[name])


@contextmanager
def ghost_batch_norm(module: nn.Module, size: int) -> Iterator[None]:
    """Train-mode forwards inside normalise each BatchNorm layer's input in consecutive ghost batches of `size`
    rows (0: as usual).

    The same as encoding each slice of `size` rows on its own, running statistics included (updated once per
    slice, in order), but every other layer sees the whole batch: convolutions keep their large-batch speed,
    where one forward per slice of 16 took twice as long on a CPU.
    """
    layers = batch_norm_layers(module) if size > 0 else []
    for layer in layers:
        layer.forward = partial(_ghost_batch_forward, layer, size)  # shadows the class's forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _ghost_batch_forward(layer: nn.modules.batchnorm._BatchNorm, size: int, rows: torch.Tensor) -> torch.Tensor:
    plain = partial(type(layer).forward, layer)
    if not layer.training or not 0 < size < len(rows):
        return plain(rows)
    if len(rows) % size:
        return torch.cat([plain(part) for part in rows.split(size)])
    groups, channels, rest = len(rows) // size, rows.shape[1], rows.shape[2:]
    # [groups * size, C, ...] -> [size, groups * C, ...]: channel g C + c holds channel c of ghost batch g.
    folded = rows.reshape(groups, size, channels, *rest).transpose(0, 1).reshape(size, groups * channels, *rest)
    weight = None if layer.weight is None else layer.weight.repeat(groups)
    bias = None if layer.bias is None else layer.bias.repeat(groups)
    # Momentum 1 leaves each ghost batch's mean and unbiased variance in these, as the kernel computes them.
    means = torch.zeros(groups * channels, dtype=layer.running_mean.dtype, device=rows.device)
    variances = torch.ones_like(means)
    out = F.batch_norm(folded, means, variances, weight, bias, True, 1.0, layer.eps)
    if layer.track_running_stats:
        _update_running_statistics(layer, means.view(groups, channels), variances.view(groups, channels))
    return out.reshape(size, groups, channels, *rest).transpose(0, 1).reshape(rows.shape)


@torch.no_grad()
def _update_running_statistics(layer: nn.modules.batchnorm._BatchNorm, means: torch.Tensor, variances: torch.Tensor):
    """What one plain train-mode forward per ghost batch, in order, does to the running statistics: each is a
    weighted sum of the old ones and the ghost batches' [groups, C] statistics, weights computed on the host."""
    groups = len(means)
    if layer.momentum is None:  # PyTorch's cumulative average: factor 1 / batches seen
        seen = int(layer.num_batches_tracked)
        factors = [1.0 / (seen + g + 1) for g in range(groups)]
    else:
        factors = [layer.momentum] * groups
    weights, kept = [], 1.0
    for factor in factors:
        weights, kept = [w * (1 - factor) for w in weights] + [factor], kept * (1 - factor)
    weights = torch.tensor(weights, dtype=means.dtype, device=means.device)
    layer.num_batches_tracked.add_(groups)
    layer.running_mean.mul_(kept).add_(weights @ means)
    layer.running_var.mul_(kept).add_(weights @ variances)
