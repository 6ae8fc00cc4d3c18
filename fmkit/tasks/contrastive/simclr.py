"""SimCLR (Chen et al. 2020): two augmented views of each image find each other among the global batch's views.

Projections are gathered from every process with their gradients (fmkit.losses.gather), so each view has
2N - 2 negatives for a global batch of N images, whatever the number of processes; with gradient
accumulation, the step's micro-batches are cached (fmkit.losses.contrastive), so N is the whole step's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fmkit.config import Range, ranged
from fmkit.losses.contrastive import AccumulatedContrastiveLoss
from fmkit.losses.gather import gather_with_grad
from fmkit.losses.infonce import nt_xent_loss
from fmkit.models.backbone import Backbone
from fmkit.models.batch_norm import running_statistics_kept
from fmkit.models.heads import mlp_head
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE
from fmkit.tasks.contrastive.common import ContrastiveConfig, ContrastiveTask, OnlineNetwork


@dataclass
class SimCLRConfig(ContrastiveConfig):
    """SimCLR: NT-Xent over two views per image, an MLP projector, LARS or AdamW."""

    temperature: float = ranged(0.5, Range(0, low_open=True))
    """NT-Xent's temperature: lower weighs the hardest negatives more (SimCLR: 0.5 for CIFAR-sized batches,
    0.1 at batch 4096)."""


@register_task
class SimCLR(ContrastiveTask):
    name = "simclr"
    config_class = SimCLRConfig
    pipeline_note = "SimCLR: NT-Xent between two augmented views of each image, the other views as negatives"

    def __init__(self, config: SimCLRConfig):
        super().__init__(config)
        self.contrastive = AccumulatedContrastiveLoss(self._global_nt_xent)
        self.step_batches: list[dict] = []

    def build_model(self, backbone: Backbone) -> OnlineNetwork:
        config = self.config
        return OnlineNetwork(backbone, mlp_head(backbone.vector_dim, config.projection_hidden, config.projection_dim))

    def begin_step(self, model: nn.Module, micro_batches: list[dict], stage: str = MAIN_STAGE) -> None:
        """With accumulation, cache every micro-batch's projections: they are each other's negatives. BatchNorm's
        running statistics are left to the forward with gradients, so each micro-batch updates them once."""
        self.step_batches = micro_batches
        with running_statistics_kept(model):
            self.contrastive.begin(
                [self._project(model, b["views"]) for b in micro_batches] if len(micro_batches) > 1 else []
            )

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        """NT-Xent summed over this process's views of the step, against every view of the global step."""
        position = next((i for i, b in enumerate(self.step_batches) if b is batch), 0)  # the loop's own dicts
        return self.contrastive(self._project(model, batch["views"]), (), position)

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self._global_nt_xent(*self._project(model, batch["views"]))}

    @staticmethod
    def _project(model: nn.Module, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 2, 3, H, W] -> each view's projections [B, d], both views in one forward."""
        images = views.shape[0]
        projections = model(views.transpose(0, 1).flatten(0, 1)).float()
        return projections[:images], projections[images:]

    def _global_nt_xent(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        all_first, offset = gather_with_grad(first)
        all_second, _ = gather_with_grad(second)
        return nt_xent_loss(first, second, self.config.temperature, all_view1=all_first, all_view2=all_second,
                            offset=offset, reduction="sum")  # fmt: skip
