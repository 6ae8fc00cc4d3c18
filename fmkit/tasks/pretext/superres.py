"""Super-resolution as a pretext task: restoring detail lost to downscaling needs to know what is there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmkit.errors import ConfigError
from fmkit.tasks import register_task
from fmkit.tasks.pretext.image_to_image import ImageToImageConfig, ImageToImagePretext
from fmkit.vision.degrade import low_resolution


@dataclass
class SuperResolutionConfig(ImageToImageConfig):
    """Super-resolution: downscale x2 or x4 and reconstruct the original (L1, optionally adversarial)."""

    scale_factor: int = 4
    """Upscaling factor: the model sees the image downsampled by it and restores full resolution."""

    def validate(self) -> None:
        super().validate()
        if self.scale_factor not in (2, 4) or self.image_size % self.scale_factor:
            raise ConfigError(
                f"scale_factor {self.scale_factor}: expected 2 or 4, dividing image_size {self.image_size}"
            )


@register_task
class SuperResolution(ImageToImagePretext):
    name = "superres"
    config_class = SuperResolutionConfig
    config: SuperResolutionConfig
    pixel_loss = "l1"
    baseline = "bicubic"  # the input is the bicubically upscaled low-resolution image (SRCNN's baseline)
    # The missing detail is a small residual: from a random start the decoder cancelled it by dying, and returned
    # the bicubic input. Inpainting's large fill learns from either start (its kNN was lower from 0 on 4 of 4 seeds).
    residual_starts_at_zero = True

    @property
    def restoration(self) -> str:
        return f"super-resolution x{self.config.scale_factor}"

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        return self.pack(low_resolution(images, self.config.scale_factor), images, torch.ones_like(images[:, :1]))
