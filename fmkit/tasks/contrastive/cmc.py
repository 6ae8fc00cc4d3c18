"""Contrastive multiview coding (CMC, Tian et al. 2019): an image's lightness and its colour are two views of it.

Each training image gives one augmented crop (the `--views` preset's first recipe: cmc-photos by default), split
by fmkit.vision.lab into L (1 channel) and ab (2 channels). Two encoders of the configured architecture embed
them, each with its MLP projector. The L projection l_i of image i finds its ab projection among the global
batch's, and the ab projection finds its L, InfoNCE in both directions:

    loss = sum_i  -log softmax_j(s(l_i, ab_j) / T)_i  -  log softmax_j(s(ab_i, l_j) / T)_i

with s the cosine similarity. The negatives are the other images of the global step's batch, gathered from every
process with their gradients and cached across accumulated micro-batches (PairedProjectionsTask), where the paper
scored against a memory bank of 16,384 with NCE: in-batch negatives keep the method bank-free, and NPID already
covers the bank. Grey images (ab about 0 everywhere) are left out of training: their ab view is blank.

The L encoder is the export: a stock 1-channel transformers backbone, saved with
fmkit.models.luminance_processor, which turns ordinary RGB images into its normalised L. The ab encoder stays in
the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fmkit.config import Range, ranged
from fmkit.losses.gather import gather_with_grad
from fmkit.losses.infonce import info_nce_loss
from fmkit.models.backbone import Backbone, build_backbone, image_processor
from fmkit.models.heads import mlp_head
from fmkit.models.luminance_processor import LuminanceImageProcessor
from fmkit.tasks import register_task
from fmkit.tasks.base import BatchCount, CardDetails
from fmkit.tasks.contrastive.common import ContrastiveConfig, PairedProjectionsTask
from fmkit.vision.lab import AB_RANGE, colourful, rgb_to_lab
from fmkit.vision.views import VIEW_PRESETS, make_views

LIGHTNESS_MEAN, LIGHTNESS_STD = 0.5, 0.5
"""L / 100 is normalised to about [-1, 1] (as CMC's code does): the L encoder's input, in training and export."""


@dataclass
class CMCConfig(ContrastiveConfig):
    """CMC: an L encoder and an ab encoder, each view's projection finding the other's across the global batch."""

    views: str = "cmc-photos"
    """Augmentation preset; its first recipe makes the crop that is split into L and ab (cmc-photos: no colour
    jitter or grayscale, which would change or erase the ab view)."""
    temperature: float = ranged(0.1, Range(0, low_open=True))
    """T of the InfoNCE in both directions."""

    views_needed: ClassVar[int] = 1


class CrossViewEncoders(nn.Module):
    """The L encoder (`backbone`, probed and exported) and the ab encoder, each with its projector."""

    def __init__(self, backbone: Backbone, projector: nn.Module, ab_backbone: Backbone, ab_projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.ab_backbone, self.ab_projector = ab_backbone, ab_projector

    def forward(self, luminance: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projector(self.backbone(luminance)), self.ab_projector(self.ab_backbone(ab))


@register_task
class CMC(PairedProjectionsTask):
    name = "cmc"
    config_class = CMCConfig
    config: CMCConfig
    input_channels = 1
    pipeline_note = "CMC: InfoNCE between the L and ab views of each image, in both directions, with two encoders"
    unusable_reason = "grey: their ab view is blank"

    def usable_images(self, images: np.ndarray) -> np.ndarray:
        return colourful(images)

    def build_model(self, backbone: Backbone) -> CrossViewEncoders:
        config = self.config
        ab_backbone = build_backbone(config.backbone_type, {**config.backbone_config, "num_channels": 2}, None,
                                     config.image_size, config.feature_pooling)  # fmt: skip
        return CrossViewEncoders(
            backbone, mlp_head(backbone.vector_dim, config.projection_hidden, config.projection_dim),
            ab_backbone, mlp_head(ab_backbone.vector_dim, config.projection_hidden, config.projection_dim),
        )  # fmt: skip

    def make_batch(self, images: np.ndarray, rngs: list[np.random.Generator], training: bool) -> dict:
        """{"luminance": [B, 1, size, size], "ab": [B, 2, size, size]}, of one seeded crop per image."""
        (crop,) = make_views(images, rngs, VIEW_PRESETS[self.config.views][:1], self.config.image_size)
        lab = rgb_to_lab(crop)
        return {"luminance": (lab[:, :1] / 100 - LIGHTNESS_MEAN) / LIGHTNESS_STD, "ab": lab[:, 1:] / AB_RANGE}

    def count(self, batch: dict) -> BatchCount:
        """Each image anchors the loss twice (L to ab, ab to L); samples/s counts images."""
        images = batch["luminance"].shape[0]
        return BatchCount(items=2 * images, samples=images)

    def project(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        luminance, ab = model(batch["luminance"], batch["ab"])
        return luminance.float(), ab.float()

    def global_loss(self, luminance: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        all_luminance, offset = gather_with_grad(luminance)
        all_ab, _ = gather_with_grad(ab)
        temperature = self.config.temperature
        return (info_nce_loss(luminance, all_ab, temperature, offset=offset, reduction="sum")
                + info_nce_loss(ab, all_luminance, temperature, offset=offset, reduction="sum"))  # fmt: skip

    def exported_processor(self) -> LuminanceImageProcessor:
        config = self.config
        return image_processor(config.image_size, config.stored_size, [LIGHTNESS_MEAN], [LIGHTNESS_STD],
                               LuminanceImageProcessor)  # fmt: skip

    def card_details(self) -> CardDetails:
        details = super().card_details()
        usage = details.usage.replace(
            'from_pretrained("PATH_OR_HUB_ID")\nbackbone',
            'from_pretrained("PATH_OR_HUB_ID", trust_remote_code=True)\nbackbone',
        )
        note = ("The backbone is CMC's L encoder: it takes one channel, the CIE lightness L of an image. The image "
                "processor saved with it (luminance_processor.py, loaded with trust_remote_code=True) turns ordinary "
                "RGB images into that channel.")  # fmt: skip
        return replace(details, usage=usage, architecture=f"{details.architecture}. {note}")
