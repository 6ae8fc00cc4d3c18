"""What the contrastive vision methods share beyond fmkit.tasks.vision: augmented views of every image, and the
loss of two projections per image contrasted over the global batch (SimCLR's two views, CMC's L and ab).

Views are made in data-loader workers from the cached image array, seeded per (sample, view, step)
(fmkit.vision.views), so a resumed run sees the views it would have seen. Held-out metrics use views of the
held-out images drawn from the evaluation stream: the same views at every evaluation.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fmkit.config import POSITIVE, ranged
from fmkit.errors import ConfigError
from fmkit.losses.contrastive import AccumulatedContrastiveLoss
from fmkit.models.backbone import Backbone
from fmkit.models.batch_norm import running_statistics_kept
from fmkit.tasks.base import MAIN_STAGE, BatchCount
from fmkit.tasks.vision import VisionConfig, VisionTask
from fmkit.vision.views import VIEW_PRESETS

EMBEDDING_BATCH = 256
"""Images per forward when a method embeds its images outside the loss (DeepCluster's clustering, NPID's bank
start): fixed, so the features do not depend on the per-process batch size, and 2 processes embed what 1 does."""


@dataclass
class ContrastiveConfig(VisionConfig):
    """Options shared by the contrastive vision methods."""

    views: str = "simclr-fashion-mnist"
    """Augmentation preset, one recipe per view (fmkit.vision.views.VIEW_PRESETS): simclr-fashion-mnist (28 px
    grey), simclr-photos (small colour photographs), simclr-imagenet (224 px), byol-photos, byol-imagenet,
    cmc-photos (one crop, no colour changes)."""
    projection_hidden: int = ranged(512, POSITIVE)
    """Width of the projector's hidden layer."""
    projection_dim: int = ranged(128, POSITIVE)
    """Size of the vectors the loss compares (the projector's output); the backbone's features transfer."""

    views_needed: ClassVar[int] = 2
    """Augmented views the method makes of each image (methods of one view take the preset's first)."""

    def validate(self) -> None:
        super().validate()
        if self.views not in VIEW_PRESETS:
            raise ConfigError(f"views {self.views!r}: expected one of {', '.join(VIEW_PRESETS)}")
        if len(VIEW_PRESETS[self.views]) < self.views_needed:
            raise ConfigError(
                f"views {self.views!r} makes {len(VIEW_PRESETS[self.views])} view of each image; this method needs "
                f"{self.views_needed}: pick a preset of {self.views_needed} views, e.g. simclr-photos"
            )


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

    def setup(self, accelerator) -> nn.Module:
        self.model = super().setup(accelerator)
        """The unwrapped module, for `projections` (after `prepare` it sits on the device)."""
        return self.model

    @torch.no_grad()
    def projections(self, index: np.ndarray, network: nn.Module | None = None) -> torch.Tensor:
        """[len(index), projection_dim] projections of centre crops of those training images, in eval mode: the
        network's own view of them, without augmentation or batch statistics; returned on the CPU.

        `network` maps pixels to projections: by default the unwrapped model's projector; a method whose forward
        is its projection (NPID) passes its distributed wrapper, whose forward also works on sharded parameters.
        """
        model = self.model
        embed = network or model.project
        was_training = model.training
        model.eval()
        out = []
        for first in range(0, len(index), EMBEDDING_BATCH):
            images = self.train_images.images[index[first : first + EMBEDDING_BATCH]]
            out.append(embed(self.normalize(self.crops(images, None)).to(self.device)).float().cpu())
        model.train(was_training)
        return torch.cat(out)

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


class PairedProjectionsTask(ContrastiveTask):
    """Two projections of each image, each finding its partner among the global batch's (SimCLR, CMC).

    Projections are gathered from every process with their gradients in `global_loss` (fmkit.losses.gather);
    with gradient accumulation the step's micro-batches are cached (fmkit.losses.contrastive), so the negatives
    are the whole step's batch, whatever the number of processes and micro-batches.
    """

    def __init__(self, config: ContrastiveConfig):
        super().__init__(config)
        self.contrastive = AccumulatedContrastiveLoss(self.global_loss)
        self.step_batches: list[dict] = []

    @abstractmethod
    def project(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's two projections of each image, [B, d] each."""

    @abstractmethod
    def global_loss(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The loss summed over the local rows, against the rows of every process."""

    def begin_step(self, model: nn.Module, micro_batches: list[dict], stage: str = MAIN_STAGE) -> None:
        """With accumulation, cache every micro-batch's projections: they are each other's negatives. BatchNorm's
        running statistics are left to the forward with gradients, so each micro-batch updates them once."""
        self.step_batches = micro_batches
        with running_statistics_kept(model):
            self.contrastive.begin([self.project(model, b) for b in micro_batches] if len(micro_batches) > 1 else [])

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        """Summed over this process's projections of the step, against every projection of the global step."""
        position = next((i for i, b in enumerate(self.step_batches) if b is batch), 0)  # the loop's own dicts
        return self.contrastive(self.project(model, batch), (), position)

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.global_loss(*self.project(model, batch))}
