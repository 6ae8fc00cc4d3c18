"""Two-view augmentation throughput: fmkit's make_views against torchvision's random transforms, same recipe.

Both sides start from the same uint8 batch [B, H, W, 3] (what a data-loader worker reads from the cached
image array) and return one float tensor [B, 3, size, size] in [0, 1] per view. fmkit's side includes making
each sample's generator from its seed (as the pretext tasks' `_batch` does); torchvision's side is a
v2.Compose of RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale,
RandomApply(GaussianBlur) and RandomSolarize built from the same ViewRecipe, applied image by image (its
random transforms draw one set of parameters per call), on float32 images as fmkit uses, or on uint8
(`--torchvision_dtype uint8`: resize and jitter on bytes, then converted). Both run in this process at
`--threads` torch threads (default 1, a data-loader worker's share), alternating, on distinct batches.

`--lightly` adds lightly's SimCLRTransform (SimCLR presets only) with the same settings and no normalisation,
fed PIL images made from the same array, as a lightly dataset would yield them (lightly need not be installed
in the environment: `pip install --no-deps --target DIR lightly lightning-utilities`, then PYTHONPATH=DIR).

    OMP_NUM_THREADS=1 python benchmarks/views_throughput.py                     # fashion-mnist and photos
    OMP_NUM_THREADS=1 python benchmarks/views_throughput.py --cases byol-photos imagenet --out views.json
    OMP_NUM_THREADS=1 PYTHONPATH=DIR python benchmarks/views_throughput.py --lightly
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, save_report
from torchvision.transforms import v2

from fmkit.data.loader import TRAIN_STREAM, sample_seeds
from fmkit.vision.views import SOLARIZE_THRESHOLD, VIEW_PRESETS, ViewRecipe, make_views

CASES = {  # name: (preset, stored side, view side, grey images)
    "fashion-mnist": ("simclr-fashion-mnist", 28, 28, True),
    "photos": ("simclr-photos", 32, 32, False),
    "byol-photos": ("byol-photos", 32, 32, False),
    "imagenet": ("simclr-imagenet", 256, 224, False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["fashion-mnist", "photos"], choices=list(CASES))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per side and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="run both sides this many times (alternating)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torchvision_dtype", choices=["float32", "uint8"], default="float32")
    parser.add_argument("--lightly", action="store_true", help="also time lightly's SimCLRTransform")
    parser.add_argument("--out", type=Path, default=None, help="also write the full report here as JSON")
    return parser.parse_args(argv)


def torchvision_pipeline(recipe: ViewRecipe, size: int, dtype: str) -> v2.Compose:
    """The same augmentation from torchvision's random transforms (the usual SimCLR/BYOL transform)."""
    jitter = v2.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
    kernel = recipe.blur_kernel_size(size)
    steps = [
        v2.RandomResizedCrop(size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(recipe.flip_probability),
        v2.RandomApply([jitter], p=recipe.jitter_probability),
        v2.RandomGrayscale(recipe.grayscale_probability),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=recipe.blur_sigma)], p=recipe.blur_probability),
    ]
    if dtype == "uint8":
        steps.append(v2.ToDtype(torch.float32, scale=True))
    steps.append(v2.RandomSolarize(SOLARIZE_THRESHOLD, p=recipe.solarize_probability))
    return v2.Compose(steps)


def synthetic_images(count: int, side: int, grey: bool, seed: int) -> np.ndarray:
    """Smooth random images with noise; grey ones have three equal channels, as Fashion-MNIST is stored."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((count, 1 if grey else 3, 4, 4))).float()
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.1 * torch.from_numpy(rng.standard_normal(smooth.shape)).float()).clamp(0, 1)
    return (noisy.expand(-1, 3, -1, -1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def fmkit_side(recipes, size: int):
    def run(images: np.ndarray, seeds: list[int]) -> None:
        make_views(images, [np.random.default_rng(seed) for seed in seeds], recipes, size)

    return run


def torchvision_side(recipes, size: int, dtype: str):
    pipelines = [torchvision_pipeline(recipe, size, dtype) for recipe in recipes]

    def run(images: np.ndarray, seeds: list[int]) -> None:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if dtype == "float32":
            pixels = pixels.float().div_(255)
        [torch.stack([pipeline(image) for image in pixels]) for pipeline in pipelines]

    return run


def lightly_side(recipes, size: int):
    """lightly's SimCLRTransform with the recipe's settings (its two views are one transform applied twice)."""
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    recipe = recipes[0]
    if any(other != recipe for other in recipes) or recipe.solarize_probability or recipe.crop_scale[1] != 1.0:
        raise SystemExit(
            "--lightly: only the SimCLR presets (two equal views, no solarisation) map onto SimCLRTransform"
        )
    transform = SimCLRTransform(
        input_size=size, cj_prob=recipe.jitter_probability, cj_strength=1.0, cj_bright=recipe.brightness,
        cj_contrast=recipe.contrast, cj_sat=recipe.saturation, cj_hue=recipe.hue, min_scale=recipe.crop_scale[0],
        random_gray_scale=recipe.grayscale_probability, gaussian_blur=recipe.blur_probability,
        sigmas=recipe.blur_sigma, hf_prob=recipe.flip_probability, normalize=None,
    )  # fmt: skip

    def run(images: np.ndarray, seeds: list[int]) -> None:
        views = [transform(Image.fromarray(image)) for image in images]
        [torch.stack(view) for view in zip(*views, strict=True)]

    return run


def benchmark_case(name: str, args: argparse.Namespace) -> list[dict]:
    preset, stored, size, grey = CASES[name]
    recipes = VIEW_PRESETS[preset]
    sides = {"fmkit": fmkit_side(recipes, size), "torchvision": torchvision_side(recipes, size, args.torchvision_dtype)}
    if args.lightly:
        sides["lightly"] = lightly_side(recipes, size)
    count = args.batches + 1
    batches = [synthetic_images(args.batch_size, stored, grey, seed) for seed in range(count)]
    positions = np.arange(count * args.batch_size).reshape(count, args.batch_size)
    seeds = [sample_seeds(0, TRAIN_STREAM, p) for p in positions]
    for side in sides.values():  # warm-up: first calls pay for lazy initialisation
        side(batches[0], seeds[0])
    samples = args.batches * args.batch_size
    runs = []
    for repeat in range(args.repeats):
        rates = {}
        for side_name, side in sides.items():
            start = time.perf_counter()
            for images, batch_seeds in zip(batches[1:], seeds[1:], strict=True):
                side(images, batch_seeds)
            rates[side_name] = samples / (time.perf_counter() - start)
        runs.append({"case": name, "preset": preset, "stored": stored, "size": size, "repeat": repeat,
                     "samples_per_s": rates})  # fmt: skip
        cells = [f"{rates[side]:.0f}" for side in sides]
        cells += [f"{rates['fmkit'] / rates[side]:.2f}x" for side in sides if side != "fmkit"]
        print(f"| {name} ({preset}, {stored} -> {size} px) | {repeat + 1} | {' | '.join(cells)} |", flush=True)
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    others = ["torchvision", "lightly"] if args.lightly else ["torchvision"]
    columns = ["fmkit", *others, *(f"fmkit / {other}" for other in others)]
    print(f"samples/s (each sample: its 2 views); batch {args.batch_size}, {args.threads} thread(s), "
          f"torchvision on {args.torchvision_dtype}\n")  # fmt: skip
    print(f"| case | run | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}")
    runs = [run for name in args.cases for run in benchmark_case(name, args)]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    save_report({"settings": settings, "machine": machine(), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
