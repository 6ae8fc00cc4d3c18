"""Instance discrimination (NPID, Wu et al. 2018): every image is its own class, scored against a memory bank.

The bank holds one L2-normalised projection per image of its image set (`--bank_images` of the training
images; training draws only from those). Each image's projection f_i, of one augmented view (the first view of
the `--views` preset), is scored against its own bank entry v_i (the positive) and K = `--num_negatives` entries
drawn uniformly from the bank, s = v . f / T. One draw of K rows per optimizer step, seeded from (seed, step),
serves the whole global batch (as MoCo's queue does), so every process and a resumed run draw the same rows.

The loss is the paper's NCE (fmkit.losses.nce) with uniform noise P_n = 1/N and the partition function Z
estimated once, from the scores of the first micro-batch trained (gathered from every process), then fixed;
`--npid_loss infonce` is softmax cross-entropy over the K + 1 scores instead. After each optimizer step the step's
projections and their bank rows are gathered from every process and every entry they touched moves towards its
new projection,

    v_i <- normalize(m v_i + (1 - m) f_i),   m = bank_momentum,

identically on every process. Bank and Z are task state, checkpointed with the run. Held-out images have no bank
entry: their held-out loss takes a second view's projection as the positive, against K bank rows drawn once.

The bank starts as the initial network's own projections of its images (centre crops, eval mode), where the paper
starts from random unit vectors. With random entries each image's positive is, until the bank has been visited a
few times, a random target to memorise: on the demo (seeds 0-2) the random start left the kNN probe 0.2 points
below the random backbone's, the projection start lifts it 6.3 points above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmkit.config import POSITIVE, Range, ranged
from fmkit.data.loader import EVAL_STREAM, TRAIN_STREAM, Sharding
from fmkit.errors import ConfigError
from fmkit.losses.gather import gather_with_grad
from fmkit.losses.infonce import info_nce_loss
from fmkit.losses.nce import nce_loss, nce_normalizer
from fmkit.models.backbone import Backbone
from fmkit.models.heads import mlp_head
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount
from fmkit.tasks.contrastive.common import ContrastiveConfig, ContrastiveTask, OnlineNetwork
from fmkit.vision.views import VIEW_PRESETS


@dataclass
class NPIDConfig(ContrastiveConfig):
    """NPID: one view per image against a memory bank of every bank image's projection, NCE or InfoNCE."""

    views_needed: ClassVar[int] = 1

    bank_images: int = ranged(10_000, POSITIVE)
    """How many training images are instances (bank entries); training draws only from them. Fewer entries are
    each seen more often in a short run (each is visited max_steps x global batch / bank_images times)."""
    num_negatives: int = ranged(4096, POSITIVE)
    """K: bank entries drawn uniformly per step as the noise samples (the paper: 4096); fewer than bank_images."""
    temperature: float = ranged(0.07, Range(0, low_open=True))
    """T in exp(v . f / T) (the paper: 0.07)."""
    bank_momentum: float = ranged(0.5, Range(0, 1, high_open=True))
    """m in v <- normalize(m v + (1 - m) f) after each step (the paper: 0.5)."""
    npid_loss: Literal["nce", "infonce"] = "nce"
    """nce: the paper's NCE with Z estimated once from the first step; infonce: softmax over the K + 1 scores."""

    def validate(self) -> None:
        super().validate()
        if self.bank_images < self.num_negatives + 1:
            raise ConfigError(
                f"bank_images {self.bank_images} is smaller than num_negatives {self.num_negatives} + 1: the bank "
                "must hold the positive and K other entries; raise bank_images or lower num_negatives"
            )


def negative_rows(seed: int, stream: int, step: int, bank_size: int, count: int) -> torch.Tensor:
    """The bank rows drawn as noise at `step` (uniform, with replacement): the same on every process and on resume."""
    return torch.from_numpy(np.random.default_rng([seed, stream, step]).integers(0, bank_size, count))


@torch.no_grad()
def momentum_update(bank: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """bank[rows] <- normalize(momentum bank[rows] + (1 - momentum) features), in place; rows without repeats."""
    mixed = momentum * bank[rows] + (1 - momentum) * features.to(bank.dtype)
    bank[rows] = F.normalize(mixed, dim=1)


@register_task
class NPID(ContrastiveTask):
    name = "npid"
    config_class = NPIDConfig
    config: NPIDConfig
    pipeline_note = "NPID: instance discrimination against a memory bank of every image's projection, with NCE"

    def build_model(self, backbone: Backbone) -> OnlineNetwork:
        config = self.config
        return OnlineNetwork(backbone, mlp_head(backbone.vector_dim, config.projection_hidden, config.projection_dim))

    def setup(self, accelerator) -> nn.Module:
        model = super().setup(accelerator)
        self.bank_index = self.first_training_images(self.config.bank_images, "bank_images")
        self.bank: torch.Tensor | None = None
        """[bank_images, projection_dim]; made at its first use (`memory`), by the model the loop prepared."""
        self.normalizer: float | None = None
        self.step_features: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.step_features_step = -1
        return model

    def memory(self, model: nn.Module) -> torch.Tensor:
        """The bank; a fresh run starts it from `model`'s projections (see the module doc): the same on every process,
        which embeds every bank image (under ZeRO-3 and FSDP the forwards are collective)."""
        if self.bank is None:
            self.bank = F.normalize(self.projections(self.bank_index, model), dim=1).to(self.device)
        return self.bank

    def make_batch(self, images: np.ndarray, rngs: list[np.random.Generator], training: bool) -> dict:
        """{"views": [B, V, 3, size, size]}: the preset's first view; held out, two views of that recipe."""
        recipe = VIEW_PRESETS[self.config.views][0]
        return self.stacked_views(images, rngs, (recipe,) if training else (recipe, recipe))

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        """The bank images only, each batch with its images' bank rows."""

        def make_batch(indices: np.ndarray, positions: np.ndarray) -> dict:
            return {**self.batch(self.bank_index, TRAIN_STREAM, indices, positions),
                    "bank_rows": torch.from_numpy(indices)}  # fmt: skip

        return self.indexed_batches(len(self.bank_index), make_batch, start, sharding)

    def count(self, batch: dict) -> BatchCount:
        """One loss term per image."""
        images = batch["views"].shape[0]
        return BatchCount(items=images, samples=images)

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        """Summed over this process's images: each projection against its bank entry and the step's K noise rows."""
        features = F.normalize(model(batch["views"][:, 0]).float(), dim=1)
        rows = batch["bank_rows"]
        bank = self.memory(model)
        noise = bank[negative_rows(self.config.seed, TRAIN_STREAM, self.step, len(bank),
                                   self.config.num_negatives).to(bank.device)]  # fmt: skip
        if self.step_features_step != self.step:  # a step mixed precision skipped leaves features that never count
            self.step_features, self.step_features_step = [], self.step
        self.step_features.append((rows, features.detach()))
        positives = bank[rows]
        if self.normalizer is None and self.config.npid_loss == "nce":
            self.normalizer = self._estimated_normalizer(features, positives, noise)
        return self._loss(features, positives, noise, self.normalizer)

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Held-out images have no bank entry: a second view's projection is the positive."""
        views = batch["views"]
        features = F.normalize(model(views.transpose(0, 1).flatten(0, 1)).float(), dim=1)
        first, second = features.chunk(2)
        bank = self.memory(model)
        noise = bank[negative_rows(self.config.seed, EVAL_STREAM, 0, len(bank),
                                   self.config.num_negatives).to(bank.device)]  # fmt: skip
        normalizer = self.normalizer
        if normalizer is None and self.config.npid_loss == "nce":  # before the first step
            normalizer = self._estimated_normalizer(first, second, noise)
        return {"loss": self._loss(first, second, noise, normalizer)}

    def _loss(self, features, positives, noise, normalizer: float | None) -> torch.Tensor:
        config = self.config
        if config.npid_loss == "infonce":
            return info_nce_loss(features, positives, config.temperature, negatives=noise, in_batch_negatives=False,
                                 reduction="sum")  # fmt: skip
        positive_scores = (features * positives).sum(dim=1)
        return nce_loss(positive_scores, features @ noise.T, config.temperature, normalizer, config.bank_images,
                        reduction="sum")  # fmt: skip

    @torch.no_grad()
    def _estimated_normalizer(self, features, positives, noise) -> float:
        """Z from every score (positive and noise) of the global batch, as the paper estimates it."""
        scores = torch.cat([(features * positives).sum(dim=1, keepdim=True), features @ noise.T], dim=1)
        everyone, _ = gather_with_grad(scores.detach())
        return nce_normalizer(everyone, self.config.temperature, self.config.bank_images)

    def after_step(self, model: nn.Module, stage: str = MAIN_STAGE) -> None:
        """Every process's projections of the step move their bank entries, micro-batch by micro-batch (a global
        micro-batch holds each image once; a step's micro-batches may repeat one across an epoch's end)."""
        for rows, features in self.step_features:
            all_rows, _ = gather_with_grad(rows.to(self.device))
            all_features, _ = gather_with_grad(features)
            momentum_update(self.memory(model), all_rows, all_features, self.config.bank_momentum)
        self.step_features = []

    def state_dict(self) -> dict:
        return {"bank": self.bank, "normalizer": self.normalizer}

    def load_state_dict(self, state: dict) -> None:
        self.bank = state["bank"].to(self.device)
        self.normalizer = state["normalizer"]
