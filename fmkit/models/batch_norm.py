"""Finding BatchNorm, and keeping its running statistics: a train-mode forward normalises each row by its batch's
statistics (coupling the rows of a batch) and updates the layer's running statistics, which evaluation uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
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
