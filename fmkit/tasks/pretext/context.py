"""Context prediction (Doersch et al. 2015): where a patch sits relative to the centre patch (8-way).

Patches come from a 3x3 grid with a gap and jitter, so that continuing lines across edges does not solve
it, and colour channels are dropped at random, so that chromatic aberration (which points away from the
lens centre) does not either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmkit.config import NON_NEGATIVE, Range, ranged
from fmkit.models.backbone import Backbone
from fmkit.tasks import register_task
from fmkit.tasks.pretext.classification import ClassificationPretext, TileClassifier
from fmkit.tasks.pretext.common import PretextConfig
from fmkit.vision.tiles import context_pair

NEIGHBOURS = 8


@dataclass
class ContextConfig(PretextConfig):
    """Context prediction: a centre patch and one of its 8 neighbours; classify the neighbour's position."""

    patch_gap: int = ranged(0, NON_NEGATIVE)
    """Pixels between patches (jitter range); 0 means image_size // 12."""
    color_drop_prob: float = ranged(0.5, Range(0, 1))
    """Chance that a patch keeps only one random colour channel (guards against chromatic aberration)."""


@register_task
class Context(ClassificationPretext):
    name = "context"
    config_class = ContextConfig
    config: ContextConfig
    pipeline_note = "context prediction: relative position of a neighbour patch to the centre patch (8-way)"

    def build_model(self, backbone: Backbone) -> TileClassifier:
        return TileClassifier(backbone, tiles=2, num_classes=NEIGHBOURS)

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        gap = self.config.patch_gap or self.config.image_size // 12
        drop = self.config.color_drop_prob
        pairs = [context_pair(image, gap, rng, drop) for image, rng in zip(images, rngs, strict=True)]
        patches = torch.stack([torch.stack([centre, neighbour]) for centre, neighbour, _ in pairs])
        return {"pixel_values": self.normalize(patches), "labels": torch.tensor([label for *_, label in pairs])}
