"""An image processor that feeds a 1-channel backbone the CIE lightness L of ordinary RGB images.

CMC's L encoder sees only L (fmkit.tasks.contrastive.cmc). transformers has no stock processor that turns RGB
into one channel (its grey conversions repeat the grey value in three channels), so fmkit exports this one
beside the encoder: ConvNeXt's resize and centre crop, then L / 100 normalised with one mean and std.

It is copied into the export folder and loaded with `AutoImageProcessor.from_pretrained(path,
trust_remote_code=True)`: keep it standalone (torch, torchvision and transformers >= 5.4, whose processors run on
torchvision and expose `rescale_and_normalize`). L follows the sRGB gamma and the D65 white point, as
fmkit.vision.lab.rgb_to_lab does (a test holds the two together).
"""

from __future__ import annotations

import torch
from transformers import ConvNextImageProcessor

LUMINANCE_FROM_LINEAR_RGB = (0.212671, 0.715160, 0.072169)
"""Relative luminance Y (CIE XYZ's Y over D65's, which is 1) of linear sRGB."""


def cie_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] on dim -3 (3 channels, or 1 for grey) -> L in [0, 100] on a 1-channel dim -3."""
    if rgb.shape[-3] == 1:
        rgb = rgb.expand(*rgb.shape[:-3], 3, *rgb.shape[-2:])
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    weights = torch.tensor(LUMINANCE_FROM_LINEAR_RGB, dtype=linear.dtype, device=linear.device).view(3, 1, 1)
    luminance = (linear * weights).sum(dim=-3, keepdim=True)
    cube_root = torch.where(luminance > 0.008856, luminance.clamp(min=0.008856) ** (1 / 3),
                            7.787 * luminance + 16 / 116)  # fmt: skip
    return 116 * cube_root - 16


class LuminanceImageProcessor(ConvNextImageProcessor):
    """ConvNeXt's geometry (shortest edge, crop_pct), then the lightness channel alone, as L / 100 normalised by
    image_mean and image_std (one value each)."""

    model_input_names = ["pixel_values"]

    def rescale_and_normalize(self, images, do_rescale, rescale_factor, do_normalize, image_mean, image_std):
        rgb = super().rescale_and_normalize(images, do_rescale, rescale_factor, False, image_mean, image_std)
        lightness = cie_lightness(rgb.float()) / 100
        return super().rescale_and_normalize(lightness, False, rescale_factor, do_normalize, image_mean, image_std)


LuminanceImageProcessor.register_for_auto_class("AutoImageProcessor")
