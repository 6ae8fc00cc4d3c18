"""Pretext tasks that restore a degraded image: super-resolution and inpainting, optionally adversarial.

The backbone encodes the degraded image, a light decoder predicts a residual on top of it, and the loss
is a pixel loss (weighted, so inpainting can score the removed region only) plus, when
`adversarial_weight` > 0, a non-saturating GAN loss from a PatchGAN discriminator. The discriminator is
a second stage of the shared loop with its own optimizer, trained before the generator each step; it is
kept in checkpoints and left out of the exported backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fmkit.config import NON_NEGATIVE, ranged
from fmkit.eval.image_quality import psnr
from fmkit.models.backbone import Backbone, upsampling_steps
from fmkit.models.batch_norm import running_statistics_kept
from fmkit.models.heads import DenseDecoder, PatchDiscriminator
from fmkit.tasks.base import MAIN_STAGE, Supports
from fmkit.tasks.pretext.common import PretextConfig, PretextModel, PretextTask

DISCRIMINATOR = "discriminator"


@dataclass
class ImageToImageConfig(PretextConfig):
    adversarial_weight: float = ranged(0.0, NON_NEGATIVE)
    """Weight of the adversarial loss from a PatchGAN discriminator trained in its own stage; 0 turns it off."""
    decoder_skips: bool = False
    """U-Net skips: the decoder also sees each finer backbone stage and the input at full resolution."""


class Restorer(PretextModel):
    """Backbone + dense decoder, predicting at 1/output_stride of the input resolution.

    With `skips`, a U-Net: after each upsampling the decoder joins the backbone stage of that resolution, and
    at full resolution the input itself. Without them, detail finer than the backbone's stride is lost, and a
    super-resolution decoder can only return its input. `zero_start`: the prediction starts at 0.
    """

    def __init__(
        self,
        backbone: Backbone,
        out_channels: int = 3,
        output_stride: int = 1,
        skips: bool = False,
        zero_start: bool = False,
    ):
        super().__init__(backbone)
        steps = upsampling_steps(backbone.stride // output_stride)
        after_each_step = [backbone.stride // 2 ** (step + 1) for step in range(steps)]
        joinable = (dict(backbone.stage_shapes()[:-1]) | {1: backbone.model.config.num_channels}) if skips else {}
        self.joined_strides = [stride if stride in joinable else None for stride in after_each_step]
        """Per upsampling step, the stride of the map the decoder joins (a finer stage, or 1: the input), or None."""
        joins = [joinable.get(stride, 0) for stride in after_each_step]
        self.decoder = DenseDecoder(
            backbone.feature_dim, out_channels, steps, skip_channels=joins, zero_start=zero_start
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        maps = self.backbone.stage_maps(pixel_values)
        strides = [stride for stride, _ in self.backbone.stage_shapes()]
        by_stride = dict(zip(strides, maps, strict=True)) | {1: pixel_values}
        return self.decoder(maps[-1], [None if stride is None else by_stride[stride] for stride in self.joined_strides])


class ImageToImagePretext(PretextTask):
    """Batches hold the normalised degraded input, the degraded image, the clean target and a loss weight map."""

    config: ImageToImageConfig
    pixel_loss: Literal["l1", "l2"] = "l1"
    baseline: str = "degraded_input"
    """What the degraded input is, naming its PSNR: eval_psnr_<baseline> is what returning the input scores."""
    residual_starts_at_zero: bool = False
    """Start the predicted residual at 0 rather than at a random function of the input (see DenseDecoder)."""

    @property
    def restoration(self) -> str:
        """What is restored, for the model card, e.g. "super-resolution x4"."""
        raise NotImplementedError

    @property
    def pipeline_note(self) -> str:
        weight = self.config.adversarial_weight
        adversarial = f" + {weight} x adversarial" if weight else ""
        return f"{self.restoration}: {self.pixel_loss.upper()}{adversarial}"

    def build_model(self, backbone: Backbone) -> Restorer:
        self.restorer = Restorer(backbone, skips=self.config.decoder_skips, zero_start=self.residual_starts_at_zero)
        return self.restorer

    def supports(self) -> Supports:
        if self.config.adversarial_weight <= 0:
            return Supports()
        return Supports(
            deepspeed=False,
            why="adversarial_weight > 0 trains a discriminator in a second stage, and DeepSpeed runs one engine per "
            "model; use DDP (or FSDP on GPUs), or --adversarial_weight 0",
        )

    def extra_models(self) -> dict[str, nn.Module]:
        if self.config.adversarial_weight <= 0:
            return {}
        self.discriminator = PatchDiscriminator()
        return {DISCRIMINATOR: self.discriminator}

    def pack(self, degraded: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> dict:
        return {"pixel_values": self.normalize(degraded), "degraded": degraded, "target": target, "weight": weight}

    def restore(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The restored image: the degraded one plus the predicted residual, kept where weight is 0."""
        residual = model(batch["pixel_values"]).float()
        return batch["degraded"] + residual * (batch["weight"] > 0)

    def reconstruction_loss(self, restored: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per image, the weighted mean pixel error; summed over images."""
        error = restored - batch["target"]
        error = error.abs() if self.pixel_loss == "l1" else error.square()
        weight = batch["weight"].expand_as(error)
        return ((error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-8)).sum()

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        real = batch["target"] * 2 - 1
        if stage == DISCRIMINATOR:
            # The generator's own stage counts this batch in its BatchNorm statistics; counting it here too would
            # nearly double their momentum (0.19 instead of 0.1 a step).
            with torch.no_grad(), running_statistics_kept(self.restorer):
                fake = self.restore(self.restorer, batch) * 2 - 1
            return (F.softplus(-model(real)) + F.softplus(model(fake))).sum()
        restored = self.restore(model, batch)
        loss = self.reconstruction_loss(restored, batch)
        if self.config.adversarial_weight > 0:
            # The loop freezes the discriminator in this stage: gradients reach the generator only.
            loss = loss + self.config.adversarial_weight * F.softplus(-self.discriminator(restored * 2 - 1)).sum()
        return loss

    def sample_columns(self, model: nn.Module, batch: dict) -> list[torch.Tensor]:
        return [batch["degraded"], self.restore(model, batch).clamp(0, 1), batch["target"]]

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        restored = self.restore(model, batch).clamp(0, 1)
        return {
            "loss": self.reconstruction_loss(restored, batch),
            "psnr": psnr(restored, batch["target"]).sum(),
            f"psnr_{self.baseline}": psnr(batch["degraded"], batch["target"]).sum(),
        }
