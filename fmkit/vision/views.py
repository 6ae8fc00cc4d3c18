"""Augmented views for contrastive vision SSL (SimCLR, MoCo, BYOL), seeded per (sample, view).

Seeding rule: view v of a sample draws all its randomness from a child of that sample's generator's seed,
`SeedSequence(entropy, spawn_key=(*spawn_key, VIEW_STREAM, v))`. The generator's current state is not used,
so view v depends only on (the sample's seed, v): a third recipe never changes views 1 and 2, the batch a
sample lands in does not matter, and whatever else a task draws from the generator leaves the views alone.
Calling `make_views` twice with the same generators therefore gives the same views; pass every recipe in
one call.

The pixel arithmetic is torchvision's (`transforms.v2.functional`), with the parameters drawn from our numpy
generators (torchvision's random transforms draw from torch's global RNG, which cannot be seeded per sample).
The crop runs per sample; everything else runs once per batch on the samples that apply it, with per-sample
factors where torchvision's kernels take one number, and is tested against torchvision sample by sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

VIEW_STREAM = 0x76696577
"""Tag in a view's spawn key ("view"), so view seeds never collide with `Generator.spawn` children."""
SOLARIZE_THRESHOLD = 0.5
"""Pixels at or above this value (images in [0, 1]) are inverted, as in BYOL."""
CROP_ATTEMPTS = 10
"""Tries at a crop of the drawn area and aspect that fits, before the centre-crop fallback (as torchvision)."""

# Layout of the uniforms each (sample, view) draws: fixed, so a recipe's values never shift other draws.
_AREA, _LOG_RATIO = slice(0, CROP_ATTEMPTS), slice(CROP_ATTEMPTS, 2 * CROP_ATTEMPTS)
_TOP, _LEFT, _FLIP, _JITTER = (2 * CROP_ATTEMPTS + k for k in range(4))
_FACTORS = slice(_JITTER + 1, _JITTER + 5)  # brightness, contrast, saturation, hue
_ORDER = slice(_JITTER + 5, _JITTER + 9)
_GRAY, _BLUR, _SIGMA, _SOLARIZE = (_JITTER + 9 + k for k in range(4))
UNIFORMS_PER_VIEW = _SOLARIZE + 1
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def simclr_jitter(strength: float) -> dict[str, float]:
    """SimCLR's colour distortion of strength s (Chen et al. 2020, appendix A): ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)."""
    return {"brightness": 0.8 * strength, "contrast": 0.8 * strength, "saturation": 0.8 * strength,
            "hue": 0.2 * strength}  # fmt: skip


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation, in SimCLR's order: resized crop, flip, colour jitter, grayscale, blur, solarise.

    Defaults are SimCLR's CIFAR-10 settings: jitter 0.4/0.4/0.4/0.1 is its colour strength s = 0.5 (the paper
    writes jitter as 0.8s/0.8s/0.8s/0.2s; its ImageNet runs use s = 1, see `simclr_jitter`), and no blur.
    The blur kernel is the odd size nearest `blur_kernel_fraction` of the view's side (23 at 224 px).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_probability: float = 0.2
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_probability: float = 0.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_probability") and not 0.0 <= value <= 1.0:
                raise ValueError(f"ViewRecipe.{item.name} = {value}: expected a probability in [0, 1]")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"ViewRecipe.crop_scale = {self.crop_scale}: expected 0 < low <= high <= 1")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"ViewRecipe.crop_ratio = {self.crop_ratio}: expected 0 < low <= high")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"ViewRecipe.{name} = {getattr(self, name)}: expected a jitter magnitude >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"ViewRecipe.hue = {self.hue}: expected a hue shift in [0, 0.5]")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"ViewRecipe.blur_sigma = {self.blur_sigma}: expected 0 < low <= high")
        if not 0.0 < self.blur_kernel_fraction <= 1.0:
            raise ValueError(f"ViewRecipe.blur_kernel_fraction = {self.blur_kernel_fraction}: expected (0, 1]")

    def blur_kernel_size(self, size: int) -> int:
        return max(3, 2 * round((self.blur_kernel_fraction * size - 1) / 2) + 1)


_SIMCLR_IMAGENET = ViewRecipe(**simclr_jitter(1.0), blur_probability=0.5)
_BYOL_COLOUR = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}  # Grill et al. 2020, table 6
_BYOL_IMAGENET = (
    ViewRecipe(**_BYOL_COLOUR, blur_probability=1.0, solarize_probability=0.0),
    ViewRecipe(**_BYOL_COLOUR, blur_probability=0.1, solarize_probability=0.2),
)
# Fashion-MNIST: grey 28 px. Hue, saturation and grayscale do nothing on grey pixels, so they are off. Crops
# keep at least 20% of the area: an 8% crop of 28 px is an 8x8 patch, too little of a garment to tell its
# class. No blur, as SimCLR did for 32 px CIFAR: at 28 px the kernel has 3 taps, close to a box filter that
# softens the fine texture (stitching, knit) that tells shirts, T-shirts and pullovers apart.
_FASHION = ViewRecipe(crop_scale=(0.2, 1.0), saturation=0.0, hue=0.0, grayscale_probability=0.0)

# CMC's Lab views (Tian et al. 2019): L and ab are split from one crop, so one recipe; no colour jitter or
# grayscale, which would change or erase the ab view. Crops keep 20% of the area or more, as CMC's ImageNet runs.
_CMC = ViewRecipe(crop_scale=(0.2, 1.0), jitter_probability=0.0, grayscale_probability=0.0)

VIEW_PRESETS: dict[str, tuple[ViewRecipe, ...]] = {
    "simclr-fashion-mnist": (_FASHION, _FASHION),
    "simclr-photos": (ViewRecipe(), ViewRecipe()),
    "simclr-imagenet": (_SIMCLR_IMAGENET, _SIMCLR_IMAGENET),
    "byol-imagenet": _BYOL_IMAGENET,
    # BYOL's pair on 32-64 px photographs (BYOL set its augmentations for ImageNet; this pair is our choice):
    # no blur, by the rule SimCLR used for CIFAR (a 3-tap kernel at 32 px), and the solarisation asymmetry kept.
    "byol-photos": tuple(
        ViewRecipe(**_BYOL_COLOUR, solarize_probability=view.solarize_probability) for view in _BYOL_IMAGENET
    ),
    "cmc-photos": (_CMC,),
}


def view_uniforms(rngs: list[np.random.Generator], view: int) -> np.ndarray:
    """[B, UNIFORMS_PER_VIEW] uniforms in [0, 1): everything view `view` of each sample draws (see module doc)."""
    out = np.empty((len(rngs), UNIFORMS_PER_VIEW))
    for i, rng in enumerate(rngs):
        seed = rng.bit_generator.seed_seq
        if not isinstance(seed, np.random.SeedSequence):
            raise ValueError(
                f"make_views: generator {i} has no seed sequence; make it with np.random.default_rng(seed)"
            )
        child = np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, VIEW_STREAM, view),
                                       pool_size=seed.pool_size)  # fmt: skip
        out[i] = np.random.Generator(np.random.PCG64(child)).random(UNIFORMS_PER_VIEW)
    return out


@dataclass(frozen=True)
class ViewParams:
    """Every sample's drawn parameters for one view (arrays over the batch)."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    factors: np.ndarray  # [B, 4]: brightness, contrast, saturation factors and hue shift
    order: np.ndarray  # [B, 4]: the jitter ops, in the order they run (BRIGHTNESS, ...)
    gray: np.ndarray
    blur: np.ndarray
    sigma: np.ndarray
    solarize: np.ndarray


def draw_params(uniforms: np.ndarray, recipe: ViewRecipe, height: int, width: int) -> ViewParams:
    """torchvision's RandomResizedCrop / ColorJitter / RandomApply draws, made from the given uniforms."""
    low, high = recipe.crop_scale
    area = height * width * (low + (high - low) * uniforms[:, _AREA])
    log_low, log_high = math.log(recipe.crop_ratio[0]), math.log(recipe.crop_ratio[1])
    aspect = np.exp(log_low + (log_high - log_low) * uniforms[:, _LOG_RATIO])
    widths, heights = np.rint(np.sqrt(area * aspect)).astype(int), np.rint(np.sqrt(area / aspect)).astype(int)
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(len(uniforms))
    crop_h, crop_w = heights[rows, first], widths[rows, first]
    # No attempt fitted: the centre crop with the aspect clamped into crop_ratio (torchvision's fallback).
    in_ratio = width / height
    fallback_w = width if in_ratio <= recipe.crop_ratio[1] else round(height * recipe.crop_ratio[1])
    fallback_h = height if in_ratio >= recipe.crop_ratio[0] else round(width / recipe.crop_ratio[0])
    missed = ~fits.any(axis=1)
    crop_h[missed], crop_w[missed] = fallback_h, fallback_w
    top = np.where(missed, (height - crop_h) // 2, np.floor(uniforms[:, _TOP] * (height - crop_h + 1)).astype(int))
    left = np.where(missed, (width - crop_w) // 2, np.floor(uniforms[:, _LEFT] * (width - crop_w + 1)).astype(int))

    magnitudes = np.array([recipe.brightness, recipe.contrast, recipe.saturation])
    factor_low = np.maximum(0.0, 1.0 - magnitudes)
    factors = np.empty((len(uniforms), 4))
    factors[:, :3] = factor_low + (1.0 + magnitudes - factor_low) * uniforms[:, _FACTORS][:, :3]
    factors[:, 3] = recipe.hue * (2.0 * uniforms[:, _FACTORS][:, 3] - 1.0)
    sigma_low, sigma_high = recipe.blur_sigma
    return ViewParams(
        top=top,
        left=left,
        height=crop_h,
        width=crop_w,
        flip=uniforms[:, _FLIP] < recipe.flip_probability,
        jitter=uniforms[:, _JITTER] < recipe.jitter_probability,
        factors=factors,
        order=np.argsort(uniforms[:, _ORDER], axis=1),  # a uniform random permutation, as torch.randperm(4)
        gray=uniforms[:, _GRAY] < recipe.grayscale_probability,
        blur=uniforms[:, _BLUR] < recipe.blur_probability,
        sigma=sigma_low + (sigma_high - sigma_low) * uniforms[:, _SIGMA],
        solarize=uniforms[:, _SOLARIZE] < recipe.solarize_probability,
    )


def make_views(
    images: np.ndarray, rngs: list[np.random.Generator], recipes: tuple[ViewRecipe, ...], size: int
) -> list[torch.Tensor]:
    """One float tensor [B, 3, size, size] in [0, 1] per recipe, from uint8 images [B, H, W, 3] (not normalised)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"make_views: expected uint8 images [B, H, W, 3], got {images.dtype} {images.shape}")
    if len(rngs) != len(images):
        raise ValueError(f"make_views: {len(rngs)} generators for {len(images)} images; expected one per image")
    height, width = images.shape[1:3]
    if size > min(height, width):
        raise ValueError(f"make_views: view size {size} is larger than the stored images ({height}x{width})")
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div_(255)
    views = []
    for view, recipe in enumerate(recipes):
        params = draw_params(view_uniforms(rngs, view), recipe, height, width)
        views.append(apply_view(pixels, params, recipe, size))
    return views


def apply_view(pixels: torch.Tensor, params: ViewParams, recipe: ViewRecipe, size: int) -> torch.Tensor:
    """The view of float images [B, 3, H, W] in [0, 1] that `params` describe, in SimCLR's order."""
    out = torch.stack([
        TF.resized_crop_image(image, int(top), int(left), int(h), int(w), [size, size], antialias=True)
        for image, top, left, h, w in zip(pixels, params.top, params.left, params.height, params.width, strict=True)
    ]).clamp_(0.0, 1.0)  # fmt: skip  # interpolation weights sum to 1 only up to rounding
    _apply_where(out, params.flip, TF.horizontal_flip_image)
    active = [op for op, magnitude in enumerate((recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue))
              if magnitude > 0]  # fmt: skip
    for position in range(4):
        for op in active:
            chosen = params.jitter & (params.order[:, position] == op)
            factor = torch.from_numpy(params.factors[chosen, op]).float().view(-1, 1, 1, 1)
            _apply_where(out, chosen, partial(JITTER_OPS[op], factor=factor))
    _apply_where(out, params.gray, lambda x: TF.rgb_to_grayscale_image(x, num_output_channels=3))
    if params.blur.any():
        kernel = recipe.blur_kernel_size(size)
        _apply_where(out, params.blur, lambda x: gaussian_blur(x, kernel, params.sigma[params.blur]))
    _apply_where(out, params.solarize, lambda x: TF.solarize_image(x, SOLARIZE_THRESHOLD))
    return out


def _apply_where(images: torch.Tensor, chosen: np.ndarray, op) -> None:
    if chosen.any():
        index = torch.from_numpy(np.flatnonzero(chosen))
        images[index] = op(images[index])


# -- torchvision's colour kernels with one factor per sample ([N, 1, 1, 1]) instead of one per call


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor + other * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = TF.rgb_to_grayscale_image(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, TF.rgb_to_grayscale_image(images), factor)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's HSV round trip (its batched helpers; public adjust_hue takes one shift per call)."""
    hsv = _rgb_to_hsv(images)
    hsv[:, 0:1] = (hsv[:, 0:1] + factor).remainder_(1.0)
    return _hsv_to_rgb(hsv)


JITTER_OPS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast, SATURATION: adjust_saturation, HUE: adjust_hue}


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigmas: np.ndarray) -> torch.Tensor:
    """torchvision's gaussian_blur (reflect padding) with one sigma per image, as two matrix products.

    Blurring rows with a 1-D kernel and reflect padding is a fixed [H, H] matrix per image, so the separable
    blur is M @ image @ M^T: one batched matmul for the batch instead of a convolution call per image.
    """
    side = images.shape[-1]
    half = kernel_size // 2
    if half >= side:
        raise ValueError(f"gaussian_blur: kernel {kernel_size} needs images wider than {half} px, got {side}")
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    weights = torch.softmax(-0.5 * (taps / torch.from_numpy(sigmas).view(-1, 1)) ** 2, dim=1).float()
    source = torch.arange(side).view(-1, 1) + taps.long()  # [side, kernel]: the pixel each tap reads
    source = torch.where(source < 0, -source, torch.where(source >= side, 2 * (side - 1) - source, source))
    matrix = torch.zeros(len(sigmas), side, side)
    matrix.scatter_add_(2, source.expand(len(sigmas), -1, -1), weights.view(-1, 1, kernel_size).expand(-1, side, -1))
    matrix = matrix.unsqueeze(1)
    return matrix @ images @ matrix.transpose(-1, -2)
