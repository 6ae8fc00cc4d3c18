"""What MoCo and BYOL share: an online network the loop trains and a momentum (EMA) copy of it the task holds.

The copy lives on the task, outside the trained module (see fmkit.tasks.base): DDP would overwrite its
buffers with rank 0's, and ZeRO-3 or FSDP would shard it. It is updated after every optimizer step,

    target <- m target + (1 - m) online,   m(k) = 1 - (1 - m0) (cos(pi k / K) + 1) / 2

BYOL's cosine schedule, from m0 = momentum_start at step 0 to 1 at step K = max_steps (MoCo v3 uses the
same). Only parameters are averaged: the copy's BatchNorm statistics are those of its own forward passes,
per process, as in MoCo's reference code. Every evaluation also probes the copy's backbone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fmkit.config import Range, ranged
from fmkit.models.backbone import Backbone
from fmkit.models.heads import mlp_head
from fmkit.tasks.base import MAIN_STAGE, Supports
from fmkit.tasks.contrastive.common import ContrastiveConfig, ContrastiveTask, OnlineNetwork


def cosine_momentum(step: int, max_steps: int, start: float) -> float:
    """The momentum after optimizer step `step` of `max_steps`: `start` at 0, rising along a half cosine to 1."""
    return 1 - (1 - start) * (math.cos(math.pi * step / max_steps) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target's parameters <- momentum x target + (1 - momentum) x online's parameter of the same name."""
    online_parameters = dict(online.named_parameters())
    for name, parameter in target.named_parameters():
        parameter.mul_(momentum).add_(online_parameters[name].detach().to(parameter.dtype), alpha=1 - momentum)


def momentum_copy(online: OnlineNetwork) -> OnlineNetwork:
    """The starting momentum encoder: the online backbone and projector as they are, without the predictor."""
    target = copy.deepcopy(online)
    target.predictor = nn.Identity()
    return target.requires_grad_(False)


@dataclass
class MomentumConfig(ContrastiveConfig):
    """Options of the methods with a momentum encoder."""

    momentum_start: float = ranged(0.99, Range(0, 1, high_open=True))
    """The momentum encoder's EMA rate at step 0, raised along a half cosine to 1 at max_steps (BYOL and MoCo v3:
    0.996 / 0.99 for ImageNet runs; 0.99 suits small data and short runs)."""
    predictor_hidden: int = ranged(512, Range(1))
    """Width of the predictor's hidden layer (BYOL, MoCo v3)."""
    predictor_lr_multiplier: float = ranged(1.0, Range(0, low_open=True))
    """The predictor's learning rate over the rest's (BYOL, MoCo v3): a faster predictor tracks the optimal one
    for the current encoder, which is what keeps a method without negatives from collapsing (Tian et al. 2021)."""
    head_batch_norm: bool = False
    """BatchNorm in the hidden layer of the projector and predictor, as BYOL and MoCo v3 have it (its statistics
    are per process under DDP, as a BatchNorm backbone's are)."""


class MomentumTask(ContrastiveTask):
    config: MomentumConfig
    momentum_suffix: ClassVar[str]
    """Suffix of the momentum encoder's probe metrics (knn_accuracy<suffix>, ...)."""

    def online_network(self, backbone: Backbone, predictor: bool) -> OnlineNetwork:
        config = self.config
        dim, norm = config.projection_dim, config.head_batch_norm
        head = mlp_head(backbone.vector_dim, config.projection_hidden, dim, batch_norm=norm)
        tail = mlp_head(dim, config.predictor_hidden, dim, batch_norm=norm)
        return OnlineNetwork(backbone, head, tail if predictor else None)

    def setup(self, accelerator) -> nn.Module:
        self.online = super().setup(accelerator)
        self.momentum_encoder = momentum_copy(self.online).to(self.device)
        return self.online

    @torch.no_grad()
    def momentum_projections(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's projections, in the mode (train / eval) the trained model is in."""
        self.momentum_encoder.train(model.training)
        return self.momentum_encoder.project(pixel_values).float()

    def after_step(self, model: nn.Module, stage: str = MAIN_STAGE) -> None:
        momentum = cosine_momentum(self.step, self.config.max_steps, self.config.momentum_start)
        ema_update(self.momentum_encoder, self.online, momentum)

    def lr_multiplier(self, parameter_name: str, stage: str = MAIN_STAGE) -> float:
        return self.config.predictor_lr_multiplier if parameter_name.startswith("predictor.") else 1.0

    def state_dict(self) -> dict:
        return {"momentum_encoder": self.momentum_encoder.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.momentum_encoder.load_state_dict(state["momentum_encoder"])

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        metrics = super().evaluate(model, accelerator, step)
        # The copy is whole on every process: each embeds every probe image alone, no collective.
        backbone = self.momentum_encoder.backbone
        metrics.update(self.probe.metrics(backbone, accelerator, self.momentum_suffix, shard=False))
        return metrics

    def supports(self) -> Supports:
        return Supports(deepspeed_zero3=False, fsdp=False,
                        why="its momentum encoder averages whole parameters of the trained module, which ZeRO-3 and "
                            "FSDP shard; use DDP or DeepSpeed ZeRO-1/2")  # fmt: skip
