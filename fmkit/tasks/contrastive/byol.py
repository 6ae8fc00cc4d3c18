"""BYOL (Grill et al. 2020): the online network predicts the target network's projection of the other view.

No negatives: the target is a momentum copy of the online backbone and projector
(fmkit.tasks.contrastive.momentum), and the predictor on the online side only is what keeps the two from
collapsing together. The loss of one view pair is 2 - 2 cos(q(z1), z'2), symmetrised over the two views. The
online encoder is exported; the target encoder is probed at every evaluation too (metrics suffixed _target).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fmkit.models.backbone import Backbone
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE
from fmkit.tasks.contrastive.momentum import MomentumConfig, MomentumTask, OnlineNetwork


@dataclass
class BYOLConfig(MomentumConfig):
    """BYOL: online network with a predictor, momentum target network, no negatives."""


def byol_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_i 2 - 2 cos(p_i, t_i): the squared distance of the unit vectors; targets carry no gradient."""
    cosine = (F.normalize(predictions, dim=1) * F.normalize(targets.detach(), dim=1)).sum(dim=1)
    return (2 - 2 * cosine).sum()


@register_task
class BYOL(MomentumTask):
    name = "byol"
    config_class = BYOLConfig
    momentum_suffix = "_target"
    pipeline_note = "BYOL: the online network predicts a momentum target network's projection of the other view"

    def build_model(self, backbone: Backbone) -> OnlineNetwork:
        return self.online_network(backbone, predictor=True)

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        """Summed over this process's 2B views: each view's prediction against the target's other view."""
        views = batch["views"]
        images = views.shape[0]
        both = views.transpose(0, 1).flatten(0, 1)  # both views in one forward
        predictions, targets = model(both).float(), self.momentum_projections(model, both)
        return byol_loss(predictions, targets.roll(images, dims=0))
