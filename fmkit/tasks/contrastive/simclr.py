"""SimCLR (Chen et al. 2020): two augmented views of each image find each other among the global batch's views.

Projections are gathered from every process with their gradients (fmkit.losses.gather), so each view has
2N - 2 negatives for a global batch of N images, whatever the number of processes; with gradient
accumulation, the step's micro-batches are cached (fmkit.tasks.contrastive.common.PairedProjectionsTask), so N
is the whole step's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fmkit.config import Range, ranged
from fmkit.losses.gather import gather_with_grad
from fmkit.losses.infonce import nt_xent_loss
from fmkit.models.backbone import Backbone
from fmkit.models.heads import mlp_head
from fmkit.tasks import register_task
from fmkit.tasks.contrastive.common import ContrastiveConfig, OnlineNetwork, PairedProjectionsTask


@dataclass
class SimCLRConfig(ContrastiveConfig):
    """SimCLR: NT-Xent over two views per image, an MLP projector, LARS or AdamW."""

    temperature: float = ranged(0.5, Range(0, low_open=True))
    """NT-Xent's temperature: lower weighs the hardest negatives more (SimCLR: 0.5 for CIFAR-sized batches,
    0.1 at batch 4096)."""


@register_task
class SimCLR(PairedProjectionsTask):
    name = "simclr"
    config_class = SimCLRConfig
    pipeline_note = "SimCLR: NT-Xent between two augmented views of each image, the other views as negatives"

    def build_model(self, backbone: Backbone) -> OnlineNetwork:
        config = self.config
        return OnlineNetwork(backbone, mlp_head(backbone.vector_dim, config.projection_hidden, config.projection_dim))

    def project(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 2, 3, H, W] views -> each view's projections [B, d], both views in one forward."""
        views = batch["views"]
        images = views.shape[0]
        projections = model(views.transpose(0, 1).flatten(0, 1)).float()
        return projections[:images], projections[images:]

    def global_loss(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        all_first, offset = gather_with_grad(first)
        all_second, _ = gather_with_grad(second)
        return nt_xent_loss(first, second, self.config.temperature, all_view1=all_first, all_view2=all_second,
                            offset=offset, reduction="sum")  # fmt: skip
