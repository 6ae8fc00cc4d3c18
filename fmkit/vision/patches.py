"""Patches and random masks for masked autoencoders (He et al. 2022), the layout MAE's encoder and loss expect."""

from __future__ import annotations

import numpy as np
import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] to [B, N, patch * patch * C]: patches row-major, each flattened as (row, column, channel)."""
    batch, channels, height, width = images.shape
    rows, cols = _patch_grid(height, width, patch)
    grid = images.reshape(batch, channels, rows, patch, cols, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch * patch * channels)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The exact inverse of `patchify`, to turn predicted patches back into images."""
    rows, cols = _patch_grid(height, width, patch)
    batch, count, dim = patches.shape
    if count != rows * cols or dim != patch * patch * channels:
        raise ValueError(
            f"unpatchify: patches of shape {tuple(patches.shape)} do not tile a {channels}x{height}x{width} image "
            f"(expected [B, {rows * cols}, {patch * patch * channels}])"
        )
    grid = patches.reshape(batch, rows, cols, patch, patch, channels)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


def _patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"patch size {patch}: expected a positive divisor of the image size {height}x{width}")
    return height // patch, width // patch


def random_masking(num_patches: int, mask_ratio: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For one sample: the visible patch indices (ascending) and the mask, True where a patch is hidden.

    K = round(N * (1 - mask_ratio)) patches stay visible, but always at least one and never all, so both
    the encoder and the loss have something to work on.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio {mask_ratio}: expected a value between 0 and 1")
    if num_patches < 2:
        raise ValueError(f"num_patches {num_patches}: masking needs at least 2 patches")
    keep = min(max(round(num_patches * (1.0 - mask_ratio)), 1), num_patches - 1)
    visible = np.sort(rng.permutation(num_patches)[:keep])
    mask = torch.ones(num_patches, dtype=torch.bool)
    mask[visible] = False
    return torch.from_numpy(visible), mask


def normalized_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch minus its mean over its own pixels, over its standard deviation (MAE's norm_pix_loss target).

    Predicting normalised pixels makes the model spend capacity on local contrast and structure rather
    than on each patch's brightness.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()
