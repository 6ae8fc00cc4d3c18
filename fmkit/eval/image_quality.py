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


AB_ERROR_THRESHOLD = 150.0
"""Zhang et al. (2016) sweep ab error thresholds from 0 to 150 for their colorization accuracy curve."""


def ab_error_auc(predicted_ab: torch.Tensor, target_ab: torch.Tensor) -> torch.Tensor:
    """Zhang et al.'s colorization AuC of each image, [B, 2, H, W] -> [B], in [0, 1].

    The share of pixels whose ab error (Euclidean) is within a threshold, integrated over thresholds 0..150
    and divided by 150. A pixel with error e contributes 1 - e / 150 to that integral (0 beyond 150), so
    the area is computed exactly instead of on a grid of thresholds.
    """
    if predicted_ab.shape != target_ab.shape or predicted_ab.dim() != 4 or predicted_ab.shape[1] != 2:
        raise ValueError(
            f"ab_error_auc: expected predicted and target ab of one shape [B, 2, H, W], got "
            f"{tuple(predicted_ab.shape)} and {tuple(target_ab.shape)}"
        )
    error = (predicted_ab.to(torch.float64) - target_ab.to(torch.float64)).square().sum(1).sqrt()
    return (1.0 - error / AB_ERROR_THRESHOLD).clamp_min(0.0).flatten(1).mean(1)
