"""Reconstruction quality for pixel-predicting pretext tasks (super-resolution, colorization, inpainting, MAE)."""

from __future__ import annotations

import torch

# Smallest mean squared error PSNR is computed from: identical images score 10·log10(data_range² / 1e-10)
# (100 dB for data_range 1) instead of inf, so averages over a batch or an eval stay finite.
MIN_MSE = 1e-10


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image, [B, ...] -> [B], in float64 for stability."""
    if prediction.shape != target.shape or prediction.dim() < 2:
        raise ValueError(
            f"psnr: expected prediction and target of one shape [B, ...], got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    if data_range <= 0:
        raise ValueError(f"psnr: expected data_range > 0, got {data_range}")
    error = prediction.to(torch.float64) - target.to(torch.float64)
    mse = error.square().flatten(1).mean(dim=1).clamp_min(MIN_MSE)
    return 10.0 * torch.log10(data_range**2 / mse)
