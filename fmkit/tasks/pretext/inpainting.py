"""Inpainting (Pathak et al. 2016, context encoders): filling a hole needs to understand its surroundings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fmkit.config import FRACTION, ranged
from fmkit.tasks import register_task
from fmkit.tasks.pretext.image_to_image import ImageToImageConfig, ImageToImagePretext
from fmkit.vision.degrade import region_mask

FILL = 0.5
"""Removed pixels become mid-grey (0 after normalisation, near the data mean)."""


@dataclass
class InpaintingConfig(ImageToImageConfig):
    """Inpainting: remove a square region and reconstruct it (L2 on the region, optionally adversarial)."""

    mask_mode: Literal["center", "random"] = "center"
    """center: a square in the middle of the image; random: a square anywhere inside it."""
    mask_fraction: float = ranged(0.5, FRACTION)
    """Side of the removed square as a fraction of image_size (the paper: half the image)."""


@register_task
class Inpainting(ImageToImagePretext):
    name = "inpainting"
    config_class = InpaintingConfig
    config: InpaintingConfig
    pixel_loss = "l2"

    @property
    def restoration(self) -> str:
        return f"inpainting ({self.config.mask_mode} square, {self.config.mask_fraction:.0%} of the side)"

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        size, config = images.shape[-1], self.config
        masks = torch.stack([region_mask(size, config.mask_fraction, config.mask_mode, rng) for rng in rngs])
        weight = masks.float()
        return self.pack(images * (1 - weight) + FILL * weight, images, weight)
