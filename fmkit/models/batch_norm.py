"""Finding BatchNorm: a train-mode forward normalises each row by its batch's statistics (coupling the rows of a
batch) and updates the layer's running statistics."""

from __future__ import annotations

from torch import nn


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1d, 2d, 3d, SyncBatchNorm) in `module`, wrapped (DDP, DeepSpeed) or not."""
    return [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
