"""Degraded inputs for restoration pretext tasks: super-resolution and inpainting.

Super-resolution follows SRCNN (Dong et al. 2014): the network sees a bicubically upscaled low-resolution
image of the target's size and restores the detail. Inpainting follows Context Encoders (Pathak et al.
2016): a square region is removed and the network fills it in from its surroundings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MASK_MODES = ("center", "random")


def low_resolution(images: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, C, H, W] images with detail above 1/factor of the sampling rate removed, at their original size.

    Downscaling averages each factor x factor block (area filtering, so nothing aliases back in), then
    bicubic upscaling restores the size, clamped to [0, 1] since bicubic overshoots at edges.
    """
    height, width = images.shape[-2:]
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"low_resolution: factor {factor} must be a positive divisor of the size {height}x{width}")
    small = F.avg_pool2d(images, factor)
    return F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def region_mask(size: int, fraction: float, mode: str, rng: np.random.Generator) -> torch.Tensor:
    """[1, size, size] mask, True where pixels are removed: a square of side round(size * fraction).

    "center" places it in the middle of the image, "random" anywhere inside it (drawn from `rng`).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"region_mask: fraction {fraction}: expected a value between 0 and 1")
    if mode not in MASK_MODES:
        raise ValueError(f"region_mask: mode {mode!r}: expected one of {', '.join(MASK_MODES)}")
    side = round(size * fraction)
    if side < 1:
        raise ValueError(f"region_mask: fraction {fraction} of size {size} removes no pixel")
    if mode == "center":
        top = left = (size - side) // 2
    else:
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, top : top + side, left : left + side] = True
    return mask
