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
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


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

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """PSNR of the image with hidden patches filled in (predictions un-normalised with each patch's statistics)."""
        prediction, patches = self._predict(model, batch)
        mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
        mask = batch["mask"].unsqueeze(-1)
        filled = torch.where(mask, prediction * std + mean, patches)
        size = batch["pixel_values"].shape[-1]
        mean_rgb, std_rgb = self.mean.to(prediction.device), self.std.to(prediction.device)
        restored = (unpatchify(filled, self.patch, 3, size, size) * std_rgb + mean_rgb).clamp(0, 1)
        original = (batch["pixel_values"].float() * std_rgb + mean_rgb).clamp(0, 1)
        return {"loss": self._masked_error(prediction, patches, batch["mask"]), "psnr": psnr(restored, original).sum()}
