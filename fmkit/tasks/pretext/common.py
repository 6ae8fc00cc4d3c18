"""What the vision pretext tasks share beyond fmkit.tasks.vision: they alter one crop of each image.

A task says how it alters a batch of crops (`make_inputs`, in data-loader workers with one seeded generator
per sample), what its model predicts and what the loss is. Training takes seeded random crops, evaluation
centre crops; image-output tasks also draw a grid of held-out samples at every evaluation.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from fmkit.models.backbone import Backbone
from fmkit.plots import write_sample_grid
from fmkit.tasks.base import MAIN_STAGE
from fmkit.tasks.vision import VisionConfig, VisionTask

SAMPLE_IMAGES = 4
"""Held-out images (the first ones, the same at every evaluation) in the sample grid of image-output tasks."""


@dataclass
class PretextConfig(VisionConfig):
    """Options shared by the vision pretext tasks."""


class PretextModel(nn.Module):
    """Backbone plus the task's head. `forward` is the task's prediction, so DDP sees every parameter used."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone


class PretextTask(VisionTask):
    config: PretextConfig
    family = "pretext task"

    # -- what a task supplies ---------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, backbone: Backbone) -> PretextModel: ...

    @abstractmethod
    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        """Alter a batch of crops ([B, 3, H, W] in [0, 1]) into model inputs and targets (in workers)."""

    def sample_columns(self, model: nn.Module, batch: dict) -> list[torch.Tensor] | None:
        """Input, prediction and target ([B, 3, H, W] in [0, 1]) for samples/step_<N>.png; None: no image output."""
        return None

    def extra_models(self) -> dict[str, nn.Module]:
        """Modules trained in stages before the main one (a discriminator), in order."""
        return {}

    # -- shared machinery -------------------------------------------------------------------------------
    def setup(self, accelerator) -> nn.Module | dict[str, nn.Module]:
        model = super().setup(accelerator)
        extra = self.extra_models()
        return {**extra, MAIN_STAGE: model} if extra else model

    def make_batch(self, images: np.ndarray, rngs: list[np.random.Generator], training: bool) -> dict:
        return self.make_inputs(self.crops(images, rngs if training else None), rngs)

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        metrics = super().evaluate(model, accelerator, step)
        # Every process runs the samples (a forward may be a collective); the main one writes them.
        first = np.arange(min(SAMPLE_IMAGES, len(self.heldout_index)))
        columns = self.sample_columns(model, send_to_device(self.heldout_batch(first), accelerator.device))
        if columns is not None:
            write_sample_grid(columns, accelerator, self.config.output_dir, step)
        return metrics
