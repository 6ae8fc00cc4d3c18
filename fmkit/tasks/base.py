"""The contract between the shared loop and an objective.

A task builds its model and data, says how big a batch is, computes a summed loss, evaluates and
exports. It never runs the loop: accumulation, distribution, precision, checkpoints and logging belong
to fmkit.trainer, and are the same for every task.

Most tasks train one model with one optimizer. Adversarial tasks train several modules in alternating
stages, each with its own optimizer (a discriminator, then the generator): `setup` returns one module per
stage and `loss` is called once per stage. While a stage runs, the loop freezes the other stages' modules,
so the task may call them (its own, unwrapped references) inside the stage's loss without giving them
gradients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fmkit.config import TrainConfig
from fmkit.data.loader import MakeBatch, Sharding, train_loader
from fmkit.hub import ModelCard

MAIN_STAGE = "model"
"""The stage whose module is evaluated, exported and logged as `loss`."""


@dataclass(frozen=True)
class BatchCount:
    items: int
    """How many terms the loss sums over (masked tokens, samples): the loop divides by the global total."""
    samples: int
    tokens: int = 0
    """Real input tokens (padding excluded), for tokens/s; 0 for tasks without tokens."""


class Task(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[TrainConfig]]

    def __init__(self, config: TrainConfig):
        self.config = config

    @abstractmethod
    def setup(self, accelerator) -> nn.Module | dict[str, nn.Module]:
        """Build tokenizer/processor, data and model (after seeding); return the model to train.

        Adversarial tasks return {stage name: module}, in the order the stages run each step, with the
        exported model under MAIN_STAGE.
        """

    @abstractmethod
    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        """This process's micro-batches, endlessly, from global micro-batch number `start` on."""

    @abstractmethod
    def count(self, batch: dict) -> BatchCount: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        """The loss summed (not averaged) over the batch's `count(batch).items` terms (in every stage).

        `model` is the (possibly distributed-wrapped) module this stage optimises.
        """

    def begin_step(self, model: nn.Module, micro_batches: list[dict], stage: str = MAIN_STAGE) -> None:  # noqa: B027
        """Called (without gradients) before a step's micro-batches run through `loss`, with all of them.

        For losses that couple the micro-batches of a step: a contrastive loss caches every micro-batch's
        features here, so each one's negatives come from the whole accumulated batch.
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        """Held-out metrics after `step` optimizer steps.

        Collective (every process takes part); the results are identical on every process.
        """

    @abstractmethod
    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        """Save the final model (and tokenizer/processor) so plain `from_pretrained(output_dir)` loads it."""

    @abstractmethod
    def model_card(self, training: dict[str, object], metrics: dict[str, float]) -> ModelCard: ...

    def indexed_batches(
        self, num_samples: int, make_batch: MakeBatch, start: int, sharding: Sharding
    ) -> Iterator[dict]:
        """`train_batches` for data addressed by sample index, with the config's batch size, seed and workers."""
        config = self.config
        return train_loader(
            num_samples,
            make_batch,
            config.per_device_batch_size,
            sharding,
            config.seed,
            start,
            config.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def flops_per_token(self) -> float | None:
        """Training FLOPs per token for MFU; None where tokens are not the unit of work."""
        return None
