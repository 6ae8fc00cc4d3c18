"""CIE Lab conversion, for colorization (Zhang et al. 2016) and CMC's L and ab views (Tian et al. 2019).

Colorization sees the lightness L and predicts a distribution over quantised ab colours; class rebalancing
keeps it from settling on the greyish colours that dominate natural images. The conversion mirrors
scikit-image's (sRGB gamma, D65 white, 2 degree observer) in torch, so it runs batched on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

AB_BIN_SIZE = 10
AB_RANGE = 110
MIN_CHROMA_SPREAD = 2.0
"""Mean over pixels of (largest - smallest RGB channel), in 8-bit levels, below which an image counts as grey."""

XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
RGB_FROM_XYZ = torch.linalg.inv(XYZ_FROM_RGB)
D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
EPSILON = 0.008856  # (6/29)^3: below it, Lab's cube root becomes a linear segment
KAPPA = 7.787  # that segment's slope
F_EPSILON = 0.2068966  # 6/29, the same threshold after the cube root


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] on dim -3 to Lab: L in [0, 100], a and b roughly in [-110, 110]."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix_channels(XYZ_FROM_RGB, linear) / _per_channel(D65_WHITE, rgb)
    f = torch.where(xyz > EPSILON, xyz.clamp(min=EPSILON) ** (1 / 3), KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab on dim -3 back to sRGB, clamped to [0, 1] since predicted colours may fall outside the gamut."""
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, (fy - b / 200).clamp(min=0)], dim=-3)
    xyz = torch.where(f > F_EPSILON, f**3, (f - 16 / 116) / KAPPA) * _per_channel(D65_WHITE, lab)
    linear = _mix_channels(RGB_FROM_XYZ, xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


def colourful(images: np.ndarray) -> np.ndarray:
    """Which uint8 [N, H, W, 3] images have colour (ab is not ~0 everywhere): grey ones teach nothing about ab."""
    spread = np.concatenate([
        (chunk.max(-1).astype(np.int16) - chunk.min(-1)).mean((1, 2)) for chunk in np.array_split(
            images, max(1, len(images) // 4096))
    ])  # fmt: skip
    return spread >= MIN_CHROMA_SPREAD


def _mix_channels(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", matrix.to(image), image)


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like)[:, None, None]


def ab_bin_centres(bin_size: int = AB_BIN_SIZE, ab_range: int = AB_RANGE) -> torch.Tensor:
    """[Q, 2] (a, b) centres of a regular grid of square bins over [-ab_range, ab_range]^2; bin q = i_a * n + i_b.

    Out-of-gamut bins are kept: real images never land in them, and a full grid makes quantisation arithmetic.
    """
    if bin_size < 1 or (2 * ab_range) % bin_size:
        raise ValueError(f"ab bins: bin_size {bin_size} must divide the ab range width {2 * ab_range}")
    axis = torch.arange(-ab_range + bin_size / 2, ab_range, bin_size, dtype=torch.float32)
    return torch.cartesian_prod(axis, axis)


def quantize_ab(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[B, 2, H, W] ab values to [B, H, W] nearest-bin indices; values beyond the grid go to the edge bin."""
    per_axis, start, step = _grid_geometry(centres)
    index = ((ab - start) / step).round().long().clamp(0, per_axis - 1)
    return index[:, 0] * per_axis + index[:, 1]


def _grid_geometry(centres: torch.Tensor) -> tuple[int, float, float]:
    """Bins per axis, first centre and spacing of a grid made by `ab_bin_centres`."""
    per_axis = _bins_per_axis(len(centres))
    start = float(centres[0, 1])
    return per_axis, start, float(centres[1, 1]) - start


def _bins_per_axis(bins: int) -> int:
    per_axis = math.isqrt(bins)
    if per_axis < 2 or per_axis * per_axis != bins:
        raise ValueError(f"ab bins: expected a square grid of at least 2x2 bins, got {bins} bins")
    return per_axis


def rebalancing_weights(
    counts: torch.Tensor, mix: float = 0.5, sigma: float = 5.0, bin_size: int = AB_BIN_SIZE
) -> torch.Tensor:
    """Per-bin loss weights that favour rare colours (Zhang et al. eq. 4).

    The empirical bin distribution p is smoothed with a Gaussian of `sigma` ab units over the grid,
    mixed with the uniform distribution ((1 - mix) * p_smooth + mix / Q), inverted and scaled so that
    sum_q p_q * w_q = 1 for the empirical p: the weighted loss keeps the unweighted loss's scale.
    """
    if not 0.0 < mix <= 1.0 or sigma <= 0:
        raise ValueError(f"rebalancing: mix {mix}, sigma {sigma}: expected 0 < mix <= 1 and sigma > 0")
    if counts.min() < 0 or counts.sum() <= 0:
        raise ValueError("rebalancing: ab bin counts must be non-negative with a positive total")
    p = counts.double() / counts.sum()
    smooth = _gaussian_smooth(p, sigma / bin_size)
    weights = 1.0 / ((1.0 - mix) * smooth + mix / len(p))
    return (weights / (p * weights).sum()).float()


def _gaussian_smooth(p: torch.Tensor, sigma_bins: float) -> torch.Tensor:
    """Blur a distribution over the square ab grid; mass blurred past the grid's edge is renormalised away."""
    per_axis = _bins_per_axis(len(p))
    radius = max(1, math.ceil(3 * sigma_bins))
    offsets = torch.arange(-radius, radius + 1, dtype=p.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_bins) ** 2)
    kernel = torch.outer(kernel, kernel) / kernel.sum() ** 2
    blurred = F.conv2d(p.view(1, 1, per_axis, per_axis), kernel[None, None], padding=radius).flatten()
    return blurred / blurred.sum()


def decode_ab(logits: torch.Tensor, centres: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """[B, Q, H, W] bin logits to [B, 2, H, W] ab: the annealed mean of the softmax sharpened by `temperature`.

    The mean alone gives desaturated colours and the mode gives patchy ones; T = 0.38 is the paper's middle ground.
    """
    probabilities = torch.softmax(logits / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", probabilities, centres.to(probabilities))
