"""Light heads that pretext and contrastive tasks put on a backbone, and the discriminator of the adversarial ones.

They are deliberately small: the point of a pretext task is the backbone it leaves behind, and a strong
head would learn the task in the backbone's place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def classifier(in_features: int, num_classes: int, hidden: int = 512) -> nn.Sequential:
    """Two layers, as in the rotation and jigsaw papers' heads on top of the shared features."""
    return mlp_head(in_features, hidden, num_classes)


class DenseDecoder(nn.Module):
    """Feature map -> image-sized prediction: `steps` x (upsample 2x, 3x3 conv, norm, ReLU), then a 1x1 conv.

    `skip_channels[i]` > 0 joins a map of that many channels after the i-th upsampling, as a U-Net's decoder
    joins its encoder's (Ronneberger et al. 2015): detail finer than the deepest map's stride reaches the
    prediction only that way.

    `zero_start` starts the prediction at 0, as a residual over the input should start: from a random residual,
    the first steps kill the decoder's ReLUs to cancel it, and it stays 0 (seen on super-resolution, whose
    PSNR then never left the bicubic input's).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        steps: int,
        width: int = 128,
        skip_channels: list[int] | None = None,
        zero_start: bool = False,
    ):
        super().__init__()
        skip_channels = skip_channels or [0] * steps
        self.project = nn.Conv2d(in_channels, width, 1)
        self.steps = nn.ModuleList()
        channels = width
        for extra in skip_channels:
            narrower = max(channels // 2, 32)
            conv = nn.Conv2d(channels + extra, narrower, 3, padding=1)
            self.steps.append(nn.Sequential(conv, nn.GroupNorm(8, narrower), nn.ReLU(inplace=True)))
            channels = narrower
        self.out = nn.Conv2d(channels, out_channels, 1)
        if zero_start:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, feature_map: torch.Tensor, skips: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """`skips[i]`, unless None, is the map joined after the i-th upsampling."""
        hidden = self.project(feature_map)
        for step, skip in zip(self.steps, skips or [None] * len(self.steps), strict=True):
            hidden = F.interpolate(hidden, scale_factor=2, mode="bilinear", align_corners=False)
            hidden = step(hidden if skip is None else torch.cat([hidden, skip], 1))
        return self.out(hidden)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): one real/fake logit per overlapping patch; spectral norm keeps it stable."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(layers):
            out = width * 2**i
            blocks += [spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, True)]
            channels = out
        blocks.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mean logit per image: the adversarial loss is one term per sample, like every other pretext loss."""
        return self.net(images).flatten(1).mean(1)


def mlp_head(in_features: int, hidden: int, out_features: int, batch_norm: bool = False) -> nn.Sequential:
    """Linear, ReLU, linear: the pretext classifiers, and the contrastive projectors and predictors (SimCLR's g(h):
    the loss is taken on its output, and the features before it transfer better).

    BYOL's and MoCo v3's projectors and predictors normalise the hidden layer with BatchNorm (`batch_norm`)."""
    norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Linear(in_features, hidden), *norm, nn.ReLU(inplace=True), nn.Linear(hidden, out_features))
