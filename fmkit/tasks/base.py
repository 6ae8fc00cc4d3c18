"""The contract between the shared loop and an objective.

A task builds its model and data, says how big a batch is, computes a summed loss, evaluates and
exports. It never runs the loop: accumulation, distribution, precision, checkpoints and logging belong
to fmkit.trainer, and are the same for every task.

Most tasks train one model with one optimizer. Adversarial tasks train several modules in alternating
stages, each with its own optimizer (a discriminator, then the generator): `setup` returns one module per
stage and `loss` is called once per stage. While a stage runs, the loop freezes the other stages' modules,
so the task may call them (its own, unwrapped references) inside the stage's loss without giving them
gradients.

Lifecycle, for objectives with moving parts (momentum encoders, queues, memory banks, clusters, schedules):

* `self.step` is the index of the optimizer step being computed (0 for the first), readable in
  `begin_step`, `loss` and `after_step`;
* `finish(model, accelerator, step)` measures what is measured once, after the last step (a test split);
* `after_step(model, stage)` runs after every optimizer step a stage really took (never after one that
  mixed precision skipped);
* `state_dict` / `load_state_dict` hold the task's own state. Each process saves and restores its own copy,
  so replicated state (a queue of gathered keys) and per-process state (a counter of skipped records) both
  resume exactly. Keep such state on the task, outside the module `setup` returns: DDP would overwrite the
  buffers of a trained module with rank 0's on every forward, and ZeRO-3 partitions only the trained
  module's parameters, so a module the task holds itself is a full copy on every process;
* `supports()` says which distribution backends the configured task can run under; the trainer refuses
  the others with one line, before any work;
* `lr_multiplier(name, stage)` scales one parameter's learning rate (a head at 10x, layer-wise decay);
  `--optimizer` picks the algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fmkit.config import TrainConfig
from fmkit.data.loader import MakeBatch, Sharding, train_loader

MAIN_STAGE = "model"
"""The stage whose module is evaluated, exported and logged as `loss`."""


@dataclass(frozen=True)
class BatchCount:
    items: int
    """How many terms the loss sums over (masked tokens, samples): the loop divides by the global total."""
    samples: int
    tokens: int = 0
    """Real input tokens (padding excluded), for tokens/s; 0 for tasks without tokens."""


@dataclass(frozen=True)
class Supports:
    """What a configured task can be distributed with beyond DDP (which every task supports)."""

    deepspeed: bool = True
    deepspeed_zero3: bool = True
    fsdp: bool = True
    why: str = ""
    """The reason for each refusal, said in the error: "<why>; use <what works>"."""


@dataclass(frozen=True)
class CardDetails:
    """What a task's model card says beyond what the loop knows (steps, batch, learning rate, metrics)."""

    title: str
    pipeline_tag: str | None
    tags: list[str]
    architecture: str
    data: str
    usage: str
    training: dict[str, object]
    """The task's own lines in the Training table (masking rate, loss, packing)."""
    library_name: str = "transformers"
    base_model: str | None = None
    """The model this one was adapted from, for the Hub's `base_model:` front matter."""
    sections: dict[str, str] = field(default_factory=dict)
    """Further markdown sections of the card, by heading (a per-class table)."""


class Task(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[TrainConfig]]

    def __init__(self, config: TrainConfig):
        self.config = config
        self.step = 0
        """Index of the optimizer step being computed; set by the loop."""

    @classmethod
    def run(cls, config: TrainConfig) -> None:
        """Train the configured task: one run of the loop. A task judged against runs of its own (fine-tuning's
        from-scratch twin, a label-fraction sweep) overrides this to run the loop once per run."""
        from fmkit.trainer import Trainer  # the loop imports this module

        Trainer(cls(config)).fit()

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
    def card_details(self) -> CardDetails:
        """Called after `export`, on the main process only."""

    def finish(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        """Metrics measured once, after the last step and before `export` (a test split scored with the best
        checkpoint); collective, in eval mode under the training autocast, like `evaluate`. {} by default."""
        return {}

    def after_step(self, model: nn.Module, stage: str = MAIN_STAGE) -> None:  # noqa: B027
        """Called after each optimizer step the stage took: EMA / momentum encoders, queues, schedules."""

    def state_dict(self) -> dict:
        """The task's own state (queues, banks, centroids, counters); {} when it has none. See the module doc."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027
        """Restore what `state_dict` returned, after `setup`."""

    def supports(self) -> Supports:
        return Supports()

    def lr_multiplier(self, parameter_name: str, stage: str = MAIN_STAGE) -> float:
        """The factor on the learning rate for one parameter of a stage's module (as named by named_parameters)."""
        return 1.0

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
