"""Rotation prediction (Gidaris et al. 2018): a network that tells how an image was turned must know its objects."""

from __future__ import annotations

import torch

ROTATIONS = 4


def rotate_all(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at 0, 90, 180 and 270 degrees, so each batch is balanced over the four labels.

    Label k means the image was rotated k * 90 degrees counter-clockwise (`torch.rot90` on the last two
    dims). The four rotations of image 0 come first, then those of image 1, and so on. Rotating a
    non-square image would change its shape with the label, which gives the label away.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_all: expected square images [B, C, H, H], got shape {tuple(images.shape)}")
    rotated = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)], dim=1)
    labels = torch.arange(ROTATIONS, device=images.device).repeat(images.shape[0])
    return rotated.flatten(0, 1), labels
