"""MoCo (He et al. 2020; v2: Chen et al. 2020; v3: Chen, Xie and He 2021): queries find their key, encoded by a
momentum copy of the query encoder (fmkit.tasks.contrastive.momentum).

v2: the first view's query against the second view's key and a queue of earlier keys (the negatives). Each
step's keys are gathered from every process before they are enqueued, so every process holds the same queue;
the queue then has to take a whole number of steps' keys. v3: no queue, a predictor on the query side, and a
symmetric loss whose negatives are the other keys of the global batch (gathered without gradients).

Shuffle-BN (He et al. 2020, sec. 3.3; `--shuffle_bn`, on by default): with BatchNorm in the key encoder and
several processes, each process's queries and keys would be normalised by statistics of the same images, a
signal of which key is the positive that the model can learn instead of the images. So in training the key
encoder runs on a shuffled global batch: every process's key images are gathered, one permutation (the same on
every process) deals them out, each process encodes its slice, and the keys are gathered back into their
images' order. Queries stay where they are. One process has the same leak (the queue's keys were normalised
in other batches than the positive), but one batch leaves nothing to shuffle across: `--bn_batch_size G` cuts
each process's batch into BatchNorm batches of G views, queries and keys alike, as on several devices (the
SplitBatchNorm of MoCo's CIFAR demo), and shuffle-BN deals the keys across them. Without BatchNorm (LayerNorm
backbones such as ConvNeXt and ViT have no batch statistics) shuffle-BN is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmkit.config import NON_NEGATIVE, POSITIVE, Range, ranged
from fmkit.errors import ConfigError
from fmkit.losses.gather import gather_with_grad, world_size
from fmkit.losses.infonce import info_nce_loss
from fmkit.models.backbone import Backbone
from fmkit.models.batch_norm import batch_norm_layers, ghost_batch_norm
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount
from fmkit.tasks.contrastive.momentum import MomentumConfig, MomentumTask, OnlineNetwork


@dataclass
class MoCoConfig(MomentumConfig):
    """MoCo: a momentum key encoder; v2 with a queue of negatives, v3 with in-batch negatives and a predictor."""

    moco_version: Literal[2, 3] = 2
    """2: a queue of negatives, one direction (view 1 queries, view 2 keys); 3: no queue, a predictor, both
    directions, the global batch's other keys as negatives."""
    temperature: float = ranged(0.2, Range(0, low_open=True))
    """InfoNCE's temperature (MoCo v2 and v3: 0.2)."""
    queue_size: int = ranged(4096, POSITIVE)
    """v2's negatives: keys of the last queue_size / global-batch steps; a multiple of the keys enqueued per step
    (per_device_batch_size x processes x gradient_accumulation_steps). MoCo v2 on ImageNet: 65536."""
    export_encoder: Literal["online", "momentum"] = "online"
    """Which backbone the export holds: the trained (query) encoder, or its momentum copy (the key encoder)."""
    shuffle_bn: bool = True
    """Shuffle-BN: with BatchNorm, encode each key in another BatchNorm batch than its query's (see the module
    doc); a no-op with one BatchNorm batch in one process, or without BatchNorm."""
    bn_batch_size: int = ranged(0, NON_NEGATIVE)
    """Ghost batches: in training, queries and keys are normalised in BatchNorm batches of this many views, as if
    each were one device's batch (the SplitBatchNorm of MoCo's CIFAR demo), so that shuffle-BN has batches to deal
    the keys into with one process; 0, or no fewer than a forward's views, is one BatchNorm batch per process."""


def key_permutation(seed: int, step: int, rows: int) -> torch.Tensor:
    """Shuffle-BN's permutation of the global key batch at optimizer step `step`: the same on every process, and
    after a resume."""
    return torch.from_numpy(np.random.default_rng([seed, step]).permutation(rows))


@torch.no_grad()
def shuffled_batch_forward(
    encode: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, permutation: torch.Tensor
) -> torch.Tensor:
    """encode() of this process's rows, each computed in the batch that `permutation` (of the gathered global
    batch) deals it into: process p encodes global rows permutation[p B : (p + 1) B]."""
    everyone, offset = gather_with_grad(rows)
    permutation = permutation.to(rows.device)
    mine = slice(offset, offset + len(rows))
    encoded, _ = gather_with_grad(encode(everyone[permutation[mine]]))
    return encoded[permutation.argsort()[mine]]  # global row i was encoded at position argsort()[i]


@register_task
class MoCo(MomentumTask):
    name = "moco"
    config_class = MoCoConfig
    config: MoCoConfig
    momentum_suffix = "_momentum"
    pipeline_note = "MoCo: queries against keys from a momentum encoder (v2: and a queue of earlier keys)"

    def build_model(self, backbone: Backbone) -> OnlineNetwork:
        return self.online_network(backbone, predictor=self.config.moco_version == 3)

    def setup(self, accelerator) -> nn.Module:
        config = self.config
        batch, ghost = config.per_device_batch_size, config.bn_batch_size
        if 0 < ghost < batch and batch % ghost:
            raise ConfigError(
                f"bn_batch_size {ghost} does not divide per_device_batch_size {batch}: "
                "every BatchNorm batch holds as many views"
            )
        if config.moco_version == 2:
            if config.predictor_lr_multiplier != 1:
                raise ConfigError(
                    f"predictor_lr_multiplier {config.predictor_lr_multiplier}: MoCo v2 has no predictor "
                    "(it is MoCo v3's and BYOL's; add --moco_version 3)"
                )
            per_step = config.per_device_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
            if config.queue_size % per_step:
                raise ConfigError(
                    f"queue_size {config.queue_size} is not a multiple of the {per_step} keys enqueued per step "
                    f"(per_device_batch_size {config.per_device_batch_size} x {accelerator.num_processes} processes"
                    f" x gradient_accumulation_steps {config.gradient_accumulation_steps}); "
                    f"choose a multiple of {per_step}"
                )
        model = super().setup(accelerator)
        if config.moco_version == 2:
            self.start_queue()
        return model

    def start_queue(self) -> None:
        """Random unit vectors, the same on every process, until real keys replace them."""
        config = self.config
        generator = torch.Generator().manual_seed(config.seed)
        queue = torch.randn(config.queue_size, config.projection_dim, generator=generator)
        self.queue = F.normalize(queue, dim=1).to(self.device)
        self.queue_position = 0
        self.new_keys: list[torch.Tensor] = []
        self.new_keys_step = -1

    def count(self, batch: dict) -> BatchCount:
        """v2 has one loss term per image (its first view's query); v3 one per view."""
        images, views = batch["views"].shape[:2]
        return BatchCount(items=images * (views if self.config.moco_version == 3 else 1), samples=images)

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        return self.contrast(model, batch, keep_keys=True)

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.contrast(model, batch, keep_keys=False)}

    def contrast(self, model: nn.Module, batch: dict, keep_keys: bool) -> torch.Tensor:
        """InfoNCE summed over this process's queries; with `keep_keys`, the step's gathered keys await the queue."""
        views = batch["views"]
        config, images = self.config, views.shape[0]
        if config.moco_version == 3:
            both = views.transpose(0, 1).flatten(0, 1)  # both views in one forward
            with ghost_batch_norm(model, self.bn_batch_size(model)):
                queries = model(both).float()
            keys = self.key_projections(model, both)
            all_first, offset = gather_with_grad(keys[:images])
            all_second, _ = gather_with_grad(keys[images:])
            first = info_nce_loss(queries[:images], all_second, config.temperature, offset=offset, reduction="sum")
            return first + info_nce_loss(queries[images:], all_first, config.temperature, offset=offset,
                                         reduction="sum")  # fmt: skip
        with ghost_batch_norm(model, self.bn_batch_size(model)):
            queries = model(views[:, 0]).float()
        keys = F.normalize(self.key_projections(model, views[:, 1]), dim=1)
        loss = info_nce_loss(queries, keys, config.temperature, negatives=self.queue, in_batch_negatives=False,
                             reduction="sum")  # fmt: skip
        if keep_keys:
            if self.new_keys_step != self.step:  # a step mixed precision skipped leaves keys that never count
                self.new_keys, self.new_keys_step = [], self.step
            self.new_keys.append(gather_with_grad(keys)[0])
        return loss

    def key_projections(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's projections; in training, shuffled across processes and ghost batches where that
        matters."""
        processes, size = world_size(), self.bn_batch_size(model)
        shuffled = model.training and self.config.shuffle_bn and (processes > 1 or 0 < size < len(images))
        with ghost_batch_norm(self.momentum_encoder, size):
            if not shuffled or not batch_norm_layers(self.momentum_encoder):
                return self.momentum_projections(model, images)
            permutation = key_permutation(self.config.seed, self.step, len(images) * processes)
            return shuffled_batch_forward(partial(self.momentum_projections, model), images, permutation)

    def bn_batch_size(self, model: nn.Module) -> int:
        """Views per BatchNorm batch: bn_batch_size in training; evaluation uses the running statistics."""
        return self.config.bn_batch_size if model.training else 0

    def after_step(self, model: nn.Module, stage: str = MAIN_STAGE) -> None:
        super().after_step(model, stage)
        if self.config.moco_version == 2:
            self.enqueue(torch.cat(self.new_keys))
            self.new_keys = []

    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest keys; the divisibility check in setup means a step's keys never straddle the end."""
        self.queue[self.queue_position : self.queue_position + len(keys)] = keys
        self.queue_position = (self.queue_position + len(keys)) % len(self.queue)

    def state_dict(self) -> dict:
        if self.config.moco_version == 3:
            return super().state_dict()
        return {**super().state_dict(), "queue": self.queue, "queue_position": self.queue_position}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.config.moco_version == 2:
            self.queue.copy_(state["queue"])
            self.queue_position = int(state["queue_position"])

    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        if self.config.export_encoder == "momentum":
            model, state_dict = self.momentum_encoder, self.momentum_encoder.state_dict()
        super().export(model, state_dict, output_dir)
