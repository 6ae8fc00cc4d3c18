"""What the contrastive vision methods share beyond fmkit.tasks.vision: two augmented views of every image.

Views are made in data-loader workers from the cached image array, seeded per (sample, view, step)
(fmkit.vision.views), so a resumed run sees the views it would have seen. Held-out metrics use views of the
held-out images drawn from the evaluation stream: the same views at every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fmkit.config import POSITIVE, ranged
from fmkit.errors import ConfigError
from fmkit.models.backbone import Backbone
from fmkit.tasks.base import BatchCount
from fmkit.tasks.vision import VisionConfig, VisionTask
from fmkit.vision.views import VIEW_PRESETS


@dataclass
class ContrastiveConfig(VisionConfig):
    """Options shared by the contrastive vision methods."""

    views: str = "simclr-fashion-mnist"
    """Augmentation preset, one recipe per view (fmkit.vision.views.VIEW_PRESETS): simclr-fashion-mnist (28 px
    grey), simclr-photos (small colour photographs), simclr-imagenet (224 px), byol-photos, byol-imagenet."""
    projection_hidden: int = ranged(512, POSITIVE)
    """Width of the projector's hidden layer."""
    projection_dim: int = ranged(128, POSITIVE)
    """Size of the vectors the loss compares (the projector's output); the backbone's features transfer."""

    def validate(self) -> None:
        super().validate()
        if self.views not in VIEW_PRESETS:
            raise ConfigError(f"views {self.views!r}: expected one of {', '.join(VIEW_PRESETS)}")


class OnlineNetwork(nn.Module):
    """Backbone, projector and (MoCo v3, BYOL) a predictor: the trained module of every contrastive method (the
    momentum copy of MoCo and BYOL is the same without the predictor)."""

    def __init__(self, backbone: Backbone, projector: nn.Module, predictor: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor or nn.Identity()

    def project(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.project(pixel_values))


class ContrastiveTask(VisionTask):
    config: ContrastiveConfig
    family = "contrastive method"

    def make_batch(self, images: np.ndarray, rngs: list[np.random.Generator], training: bool) -> dict:
        """{"views": [B, V, 3, image_size, image_size]}, normalised."""
        return self.stacked_views(images, rngs, VIEW_PRESETS[self.config.views])

    def stacked_views(self, images: np.ndarray, rngs: list[np.random.Generator], recipes: tuple) -> dict:
        """{"views": [B, len(recipes), 3, image_size, image_size]}, normalised; methods of one view per image (NPID,
        DeepCluster) pass the preset's first recipe alone."""
        from fmkit.vision.views import make_views

        views = make_views(images, rngs, recipes, self.config.image_size)
        return {"views": torch.stack([self.normalize(view) for view in views], dim=1)}

    def count(self, batch: dict) -> BatchCount:
        """Every view is an anchor of the loss; samples/s counts images."""
        images, views = batch["views"].shape[:2]
        return BatchCount(items=images * views, samples=images)
