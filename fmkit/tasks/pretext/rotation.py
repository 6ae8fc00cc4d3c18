"""Rotation prediction (Gidaris et al. 2018): recognising which way is up needs to recognise the object."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmkit.models.backbone import Backbone
from fmkit.tasks import register_task
from fmkit.tasks.base import BatchCount
from fmkit.tasks.pretext.classification import ClassificationPretext, TileClassifier
from fmkit.tasks.pretext.common import PretextConfig
from fmkit.vision.rotation import rotate_all


@dataclass
class RotationConfig(PretextConfig):
    """Rotation: every image at 0, 90, 180 and 270 degrees; a 4-way classifier on the backbone's features."""


@register_task
class Rotation(ClassificationPretext):
    name = "rotation"
    config_class = RotationConfig
    pipeline_note = "rotation prediction: each image at 0/90/180/270 degrees, 4-way classification"

    def build_model(self, backbone: Backbone) -> TileClassifier:
        return TileClassifier(backbone, tiles=1, num_classes=4)

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        rotated, labels = rotate_all(images)
        return {"pixel_values": self.normalize(rotated), "labels": labels}

    def count(self, batch: dict) -> BatchCount:
        """Four loss terms per image: samples/s counts images, not their rotated copies."""
        rotated = batch["labels"].numel()
        return BatchCount(items=rotated, samples=rotated // 4)
