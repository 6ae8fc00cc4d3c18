"""Colorization (Zhang et al. 2016): predicting plausible colours from lightness needs to recognise things.

The backbone sees the L channel of Lab (as a grey RGB image, so the exported backbone takes ordinary
images) and a light decoder predicts ab per pixel: by classification over quantised ab bins, with class
rebalancing so that rare saturated colours are not drowned by greys, or by plain regression. The
rebalancing weights come from the ab histogram of the training images, the same on every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmkit.config import Range, ranged
from fmkit.eval.image_quality import ab_error_auc, psnr
from fmkit.models.backbone import Backbone
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE
from fmkit.tasks.pretext.common import PretextConfig, PretextTask
from fmkit.tasks.pretext.image_to_image import Restorer
from fmkit.vision.lab import (
    AB_RANGE,
    ab_bin_centres,
    colourful,
    decode_ab,
    lab_to_rgb,
    quantize_ab,
    rebalancing_weights,
    rgb_to_lab,
)

HISTOGRAM_IMAGES = 512
OUTPUT_STRIDE = 4
"""Colours are predicted at a quarter of the resolution, as in Zhang et al.: colour varies slowly, and the
per-pixel softmax over 484 bins is the costliest part of the task."""


@dataclass
class ColorizationConfig(PretextConfig):
    """Colorization: see lightness (L), predict colour (ab) by classification over ab bins or by regression."""

    colorization_loss: Literal["classification", "regression"] = "classification"
    """classification: ab bins with rebalanced cross-entropy (Zhang et al.); regression: L2 on ab."""
    rebalance: float = ranged(0.5, Range(0, 1, low_open=True))
    """Share of the uniform distribution in the rebalancing weights (Zhang et al.'s lambda); 1 = no rebalancing."""


@register_task
class Colorization(PretextTask):
    name = "colorization"
    config_class = ColorizationConfig
    config: ColorizationConfig

    @property
    def pipeline_note(self) -> str:
        return f"colorization in Lab space, ab by {self.config.colorization_loss}"

    @property
    def classifying(self) -> bool:
        return self.config.colorization_loss == "classification"

    unusable_reason = "grey: nothing to colorize, and grey would be their perfect answer"

    def usable_images(self, images: np.ndarray) -> np.ndarray:
        return colourful(images)

    def build_model(self, backbone: Backbone) -> Restorer:
        self.centres = ab_bin_centres()
        if self.classifying:
            self.class_weights = rebalancing_weights(self._ab_histogram(), mix=self.config.rebalance).to(self.device)
        return Restorer(backbone, len(self.centres) if self.classifying else 2, OUTPUT_STRIDE)

    def _ab_histogram(self) -> torch.Tensor:
        """Bin counts over (up to) the first HISTOGRAM_IMAGES training images: the same on every process."""
        index = np.sort(self.train_index[:HISTOGRAM_IMAGES])
        lab = rgb_to_lab(self.crops(self.train_images.images[index], None))
        bins = quantize_ab(F.avg_pool2d(lab[:, 1:], OUTPUT_STRIDE), self.centres)
        return torch.bincount(bins.flatten(), minlength=len(self.centres)).float()

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        lab = rgb_to_lab(images)
        grey = (lab[:, :1] / 100.0).expand(-1, 3, -1, -1)
        ab = F.avg_pool2d(lab[:, 1:], OUTPUT_STRIDE)
        batch = {"pixel_values": self.normalize(grey), "lab": lab, "ab": ab, "target": images}
        if self.classifying:
            batch["bins"] = quantize_ab(ab, self.centres)
        return batch

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        prediction = model(batch["pixel_values"]).float()
        if self.classifying:
            per_pixel = F.cross_entropy(prediction, batch["bins"], reduction="none")
            per_pixel = per_pixel * self.class_weights[batch["bins"]]
        else:
            per_pixel = (prediction - batch["ab"] / AB_RANGE).square().sum(1)
        return per_pixel.flatten(1).mean(1).sum()

    def _colour(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The predicted ab at full resolution, the image it colours, and the grey image (ab = 0, the input)."""
        prediction = model(batch["pixel_values"]).float()
        ab = decode_ab(prediction, self.centres.to(prediction.device)) if self.classifying else prediction * AB_RANGE
        ab = F.interpolate(ab, scale_factor=OUTPUT_STRIDE, mode="bilinear", align_corners=False)
        lightness = batch["lab"][:, :1]
        coloured = lab_to_rgb(torch.cat([lightness, ab], 1))
        return ab, coloured, lab_to_rgb(torch.cat([lightness, torch.zeros_like(ab)], 1))

    def sample_columns(self, model: nn.Module, batch: dict) -> list[torch.Tensor]:
        _, coloured, grey = self._colour(model, batch)
        return [grey, coloured, batch["target"]]

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        ab, coloured, grey = self._colour(model, batch)
        target_ab = batch["lab"][:, 1:]
        return {
            "loss": self.loss(model, batch),
            "psnr": psnr(coloured, batch["target"]).sum(),
            "psnr_grey": psnr(grey, batch["target"]).sum(),
            "ab_auc": ab_error_auc(ab, target_ab).sum(),
            "ab_auc_grey": ab_error_auc(torch.zeros_like(ab), target_ab).sum(),
        }
