"""Masked image modeling, MAE-style (He et al. 2022): reconstruct hidden patches from a few visible ones.

The encoder is the stock transformers ViT, run on the visible 25% of patches only (its own patch
embedding, position embeddings, layers and final norm, called piece by piece), which is what makes MAE
cheap. A small transformer decoder, which is not exported, fills in mask tokens and predicts the
per-patch-normalised pixels of the hidden patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fmkit.config import FRACTION, POSITIVE, ranged
from fmkit.errors import ConfigError
from fmkit.eval.image_quality import psnr
from fmkit.models.backbone import Backbone
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE
from fmkit.tasks.pretext.common import PretextConfig, PretextModel, PretextTask
from fmkit.vision.patches import normalized_patches, patchify, random_masking, unpatchify


@dataclass
class MIMConfig(PretextConfig):
    """Masked image modeling (MAE): hide mask_ratio of the patches, reconstruct their normalised pixels."""

    backbone_type: str = "vit"
    mask_ratio: float = ranged(0.75, FRACTION)
    """Fraction of patches hidden from the encoder (MAE uses 0.75)."""
    decoder_width: int = ranged(128, POSITIVE)
    """Hidden size of the light decoder that reconstructs the hidden patches."""
    decoder_depth: int = ranged(2, POSITIVE)
    """Transformer layers in the decoder."""
    decoder_heads: int = ranged(4, POSITIVE)
    """Attention heads in the decoder."""


class MaskedAutoencoder(PretextModel):
    def __init__(self, backbone: Backbone, width: int, depth: int, heads: int):
        super().__init__(backbone)
        vit = backbone.model
        patch, num_patches = vit.config.patch_size, vit.embeddings.patch_embeddings.num_patches
        self.decoder_embed = nn.Linear(backbone.feature_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_positions = nn.Parameter(torch.randn(1, num_patches, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, patch * patch * vit.config.num_channels)

    def encode(self, pixel_values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """ViT over the [CLS] token and the visible patches only."""
        vit = self.backbone.model
        embeddings = vit.embeddings
        patches = embeddings.patch_embeddings(pixel_values) + embeddings.position_embeddings[:, 1:]
        patches = torch.gather(patches, 1, visible.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        cls = (embeddings.cls_token + embeddings.position_embeddings[:, :1]).expand(patches.shape[0], -1, -1)
        hidden = embeddings.dropout(torch.cat([cls, patches], 1))
        for layer in vit.layers:
            hidden = layer(hidden)
        return vit.layernorm(hidden)

    def forward(self, pixel_values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Predicted (normalised) pixels of every patch, [B, N, patch * patch * channels]."""
        encoded = self.decoder_embed(self.encode(pixel_values, visible)[:, 1:])
        batch, width = encoded.shape[0], encoded.shape[-1]
        tokens = self.mask_token.expand(batch, self.decoder_positions.shape[1], width).clone()
        tokens = tokens.scatter(1, visible.unsqueeze(-1).expand(-1, -1, width), encoded)
        return self.predict(self.decoder_norm(self.decoder(tokens + self.decoder_positions)))


@register_task
class MaskedImageModeling(PretextTask):
    name = "mim"
    config_class = MIMConfig
    config: MIMConfig

    @property
    def pipeline_note(self) -> str:
        return f"masked image modeling (MAE): {self.config.mask_ratio:.0%} of patches hidden, normalised-pixel loss"

    def build_model(self, backbone: Backbone) -> MaskedAutoencoder:
        if not backbone.is_transformer:
            raise ConfigError(
                f"task mim needs a ViT backbone (backbone_type vit); {backbone.model.config.model_type} has no patches"
            )
        self.patch = backbone.stride
        self.num_patches = (self.config.image_size // self.patch) ** 2
        config = self.config
        return MaskedAutoencoder(backbone, config.decoder_width, config.decoder_depth, config.decoder_heads)

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        ratio = self.config.mask_ratio
        visible, masks = zip(*(random_masking(self.num_patches, ratio, rng) for rng in rngs), strict=True)
        return {"pixel_values": self.normalize(images), "visible": torch.stack(visible), "mask": torch.stack(masks)}

    def _predict(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = model(batch["pixel_values"], batch["visible"]).float()
        return prediction, patchify(batch["pixel_values"].float(), self.patch)

    def _masked_error(self, prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per image, the mean squared error over its hidden patches; summed over images."""
        error = (prediction - normalized_patches(patches)).square().mean(-1)
        return ((error * mask).sum(1) / mask.sum(1)).sum()

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        prediction, patches = self._predict(model, batch)
        return self._masked_error(prediction, patches, batch["mask"])

    def sample_columns(self, model: nn.Module, batch: dict) -> list[torch.Tensor]:
        """The image with its hidden patches grey, with them predicted, and whole."""
        prediction, patches = self._predict(model, batch)
        _, mean, spread = self._mean_patch(patches, batch["mask"])
        hidden = batch["mask"].unsqueeze(-1).expand_as(patches)
        original = self._to_pixels(patches)
        filled = torch.where(hidden, self._to_pixels(prediction * spread + mean), original)
        masked = torch.where(hidden, torch.full_like(original, 0.5), original)
        height, width = batch["pixel_values"].shape[-2:]
        return [unpatchify(p, self.patch, 3, height, width) for p in (masked, filled, original)]

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Loss and PSNR on the hidden patches, beside the mean-patch baseline scored the same way."""
        prediction, patches = self._predict(model, batch)
        mask = batch["mask"]
        baseline, mean, spread = self._mean_patch(patches, mask)
        hidden = mask.unsqueeze(-1).expand_as(patches)
        target = self._to_pixels(patches)[hidden].view(len(patches), -1)
        sums = {}
        for suffix, normalized in (("", prediction), ("_mean_patch", baseline)):
            predicted = self._to_pixels(normalized * spread + mean)[hidden].view(len(patches), -1)
            sums[f"loss{suffix}"] = self._masked_error(normalized, patches, mask)
            sums[f"psnr{suffix}"] = psnr(predicted, target).sum()
        return sums

    def _mean_patch(self, patches: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The baseline, and how normalised patches are turned back into pixels, from visible patches only.

        The baseline fills every hidden patch with the mean colour of the image's visible patches (given as
        the normalised patch that becomes that colour). Normalised predictions become pixels through the mean
        and the mean per-patch spread of the visible patches: the target's own statistics would tell the model
        each hidden patch's brightness and contrast, which the baseline never gets.
        """
        batch, count, _ = patches.shape
        visible = (~mask).to(patches.dtype)[:, :, None, None]
        by_channel = patches.view(batch, count, -1, 3)
        colour = (by_channel * visible).sum((1, 2)) / (visible.sum((1, 2)) * by_channel.shape[2])
        mean = colour.mean(-1)[:, None, None]
        spread = (patches.var(-1) + 1e-6).sqrt()
        spread = ((spread * visible[:, :, 0, 0]).sum(1) / visible[:, :, 0, 0].sum(1))[:, None, None]
        baseline = ((colour[:, None, None, :] - mean[..., None]) / spread[..., None]).expand_as(by_channel)
        return baseline.reshape(patches.shape), mean, spread

    def _to_pixels(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches of normalised images back to [0, 1] pixels (channels are the innermost patch dimension)."""
        std, mean = self.std.flatten().to(patches.device), self.mean.flatten().to(patches.device)
        return (patches.view(*patches.shape[:2], -1, 3) * std + mean).clamp(0, 1).view(patches.shape)
