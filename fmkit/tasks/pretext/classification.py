"""Pretext tasks that classify how the input was altered: rotation, jigsaw, context prediction.

One model serves all three: a shared (siamese) backbone embeds each of T images or tiles, the features are
concatenated and a small head classifies them (T = 1 for rotation, 9 for jigsaw, 2 for context).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmkit.models.backbone import Backbone
from fmkit.models.heads import classifier
from fmkit.tasks.base import MAIN_STAGE
from fmkit.tasks.pretext.common import PretextModel, PretextTask


class TileClassifier(PretextModel):
    def __init__(self, backbone: Backbone, tiles: int, num_classes: int):
        super().__init__(backbone)
        self.head = classifier(tiles * backbone.vector_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] (one image each) or [B, T, C, h, w] (T tiles each) -> logits [B, classes]."""
        batch = pixel_values.shape[0]
        features = self.backbone(pixel_values.flatten(0, 1) if pixel_values.ndim == 5 else pixel_values)
        return self.head(features.reshape(batch, -1))


class ClassificationPretext(PretextTask):
    """Batches hold `pixel_values` and `labels`; the loss is cross-entropy summed over the labels."""

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        return F.cross_entropy(model(batch["pixel_values"]).float(), batch["labels"], reduction="sum")

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(batch["pixel_values"]).float()
        labels = batch["labels"]
        return {
            "loss": F.cross_entropy(logits, labels, reduction="sum"),
            "accuracy": (logits.argmax(-1) == labels).sum(),
        }
