"""Two-view augmentations: seeding per (sample, view), equality with torchvision's ops, presets, bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from fmkit.vision.views import (
    BRIGHTNESS,
    CONTRAST,
    CROP_ATTEMPTS,
    HUE,
    SATURATION,
    SOLARIZE_THRESHOLD,
    VIEW_PRESETS,
    ViewParams,
    ViewRecipe,
    draw_params,
    make_views,
    view_uniforms,
)

EVERYTHING = ViewRecipe(flip_probability=1.0, jitter_probability=1.0, grayscale_probability=1.0,
                        blur_probability=1.0, solarize_probability=1.0)  # fmt: skip
COLOUR = dataclasses.replace(EVERYTHING, grayscale_probability=0.0, blur_probability=0.0, solarize_probability=0.0)
MIXED = ViewRecipe(blur_probability=0.5, solarize_probability=0.5, brightness=0.8, contrast=0.8, saturation=0.8)


def photos(count: int, side: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth colour images (a random low-resolution field upscaled) with some noise: hue and blur matter."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((count, 3, 4, 4))).float()
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.1 * torch.from_numpy(rng.standard_normal((count, 3, side, side))).float()).clamp(0, 1)
    return (noisy.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def generators(seeds) -> list[np.random.Generator]:
    return [np.random.default_rng(seed) for seed in seeds]


# -- seeding ------------------------------------------------------------------------------------------------


def test_same_seeds_give_identical_views_and_the_two_views_differ():
    images, recipes = photos(16), VIEW_PRESETS["simclr-photos"]
    first = make_views(images, generators(range(16)), recipes, 28)
    again = make_views(images, generators(range(16)), recipes, 28)
    for a, b in zip(first, again, strict=True):
        assert a.dtype == torch.float32 and a.shape == (16, 3, 28, 28)
        assert torch.equal(a, b)
    assert all(not torch.equal(first[0][i], first[1][i]) for i in range(16))


def test_a_third_recipe_leaves_the_first_two_views_unchanged():
    images = photos(8)
    two = make_views(images, generators(range(8)), (COLOUR, MIXED), 24)
    three = make_views(images, generators(range(8)), (COLOUR, MIXED, EVERYTHING), 24)
    assert torch.equal(two[0], three[0]) and torch.equal(two[1], three[1])
    assert not torch.equal(three[2], three[1])


def test_a_sample_gets_the_same_views_in_any_batch_and_whatever_its_generator_drew_before():
    images = photos(6)
    alone = make_views(images[3:4], generators([103]), (MIXED, MIXED), 28)
    used = generators([100, 101, 102, 103, 104, 105])
    for rng in used:
        rng.integers(10, size=5)  # a task's own draws (crop offsets, ...) do not shift the views
    batch = make_views(images[::-1].copy(), used[::-1], (MIXED, MIXED), 28)
    for single, batched in zip(alone, batch, strict=True):
        assert torch.equal(single[0], batched[2])


def test_different_seeds_give_different_views():
    images = np.repeat(photos(1), 4, axis=0)
    (view,) = make_views(images, generators([1, 2, 3, 4]), (MIXED,), 28)
    assert len({view[i].numpy().tobytes() for i in range(4)}) == 4


# -- equality with torchvision ------------------------------------------------------------------------------

JITTER_FUNCTIONS = {
    BRIGHTNESS: TF.adjust_brightness,
    CONTRAST: TF.adjust_contrast,
    SATURATION: TF.adjust_saturation,
    HUE: TF.adjust_hue,
}


def torchvision_view(image: torch.Tensor, params: ViewParams, i: int, recipe: ViewRecipe, size: int) -> torch.Tensor:
    """Sample i's view made with torchvision's public per-image functions and the same drawn parameters."""
    out = TF.resized_crop(image, int(params.top[i]), int(params.left[i]), int(params.height[i]),
                          int(params.width[i]), [size, size], antialias=True).clamp(0, 1)  # fmt: skip
    if params.flip[i]:
        out = TF.hflip(out)
    magnitudes = (recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
    if params.jitter[i]:
        for op in params.order[i]:
            if magnitudes[op] > 0:
                out = JITTER_FUNCTIONS[op](out, float(params.factors[i, op]))
    if params.gray[i]:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if params.blur[i]:
        kernel = recipe.blur_kernel_size(size)
        out = TF.gaussian_blur(out, [kernel, kernel], [float(params.sigma[i])] * 2)
    if params.solarize[i]:
        out = TF.solarize(out, SOLARIZE_THRESHOLD)
    return out


@pytest.mark.parametrize(
    "recipe,stored,size",
    [(EVERYTHING, 32, 32), (COLOUR, 32, 28), (MIXED, 40, 32), (VIEW_PRESETS["simclr-fashion-mnist"][0], 28, 28)],
    ids=["every-op", "colour-jitter", "mixed-probabilities", "fashion-mnist"],
)
def test_each_view_equals_torchvision_applied_with_the_same_parameters(recipe, stored, size):
    count = 48
    images, rngs = photos(count, stored), generators(range(500, 500 + count))
    (view,) = make_views(images, rngs, (recipe,), size)
    params = draw_params(view_uniforms(rngs, 0), recipe, stored, stored)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    expected = torch.stack([torchvision_view(pixels[i], params, i, recipe, size) for i in range(count)])
    torch.testing.assert_close(view, expected, atol=2e-5, rtol=0)
    assert params.jitter.any() and (recipe.hue == 0 or np.abs(params.factors[:, HUE]).max() > recipe.hue / 2)


def torchvision_crop_box(uniforms: np.ndarray, scale, ratio, height: int, width: int) -> tuple[int, int, int, int]:
    """RandomResizedCrop.make_params step by step, with its torch draws replaced by the given uniforms."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(CROP_ATTEMPTS):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * uniforms[attempt])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * uniforms[CROP_ATTEMPTS + attempt])
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(uniforms[2 * CROP_ATTEMPTS] * (height - h + 1))
            left = int(uniforms[2 * CROP_ATTEMPTS + 1] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "scale,ratio,height,width",
    [((0.08, 1.0), (3 / 4, 4 / 3), 28, 28), ((0.2, 1.0), (3 / 4, 4 / 3), 40, 30), ((0.9, 1.0), (3.0, 4.0), 28, 28)],
    ids=["simclr", "non-square", "fallback"],
)
def test_crop_boxes_follow_torchvision_and_lie_inside_the_image(scale, ratio, height, width):
    recipe = ViewRecipe(crop_scale=scale, crop_ratio=ratio)
    uniforms = view_uniforms(generators(range(400)), 0)
    params = draw_params(uniforms, recipe, height, width)
    boxes = np.stack([params.top, params.left, params.height, params.width], axis=1)
    expected = np.array([torchvision_crop_box(u, scale, ratio, height, width) for u in uniforms])
    np.testing.assert_array_equal(boxes, expected)
    assert (params.top >= 0).all() and (params.left >= 0).all() and (params.height > 0).all()
    assert (params.top + params.height <= height).all() and (params.left + params.width <= width).all()
    if ratio[0] > width / height:  # no attempt fits: torchvision's centre crop at the nearest allowed aspect
        assert (boxes == [(height - 9) // 2, 0, 9, width]).all()
    else:
        fraction = params.height * params.width / (height * width)
        assert fraction.min() >= scale[0] * 0.9 and len(np.unique(boxes, axis=0)) > 300


def test_grayscale_views_have_equal_channels():
    (view,) = make_views(photos(8), generators(range(8)), (EVERYTHING,), 32)
    assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 1], view[:, 2])
    assert view.min() >= 0 and view.max() <= 1


# -- probabilities ------------------------------------------------------------------------------------------

DRAWS = 2000


@pytest.mark.parametrize(
    "field,flag",
    [
        ("flip_probability", "flip"),
        ("jitter_probability", "jitter"),
        ("grayscale_probability", "gray"),
        ("blur_probability", "blur"),
        ("solarize_probability", "solarize"),
    ],  # fmt: skip
)
def test_each_op_is_applied_at_its_probability(field, flag):
    uniforms = view_uniforms(generators(range(DRAWS)), 1)
    for probability in (0.0, 0.2, 0.5, 1.0):
        params = draw_params(uniforms, ViewRecipe(**{field: probability}), 32, 32)
        rate, sigma = getattr(params, flag).mean(), math.sqrt(probability * (1 - probability) / DRAWS)
        assert abs(rate - probability) <= 4 * sigma, (field, probability, rate)


def test_jitter_order_and_factors_are_uniform():
    recipe = ViewRecipe(**{"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2})
    params = draw_params(view_uniforms(generators(range(DRAWS)), 0), recipe, 32, 32)
    assert sorted(map(tuple, np.sort(params.order, axis=1))) == [(0, 1, 2, 3)] * DRAWS
    first_counts = np.bincount(params.order[:, 0], minlength=4)
    assert np.abs(first_counts / DRAWS - 0.25).max() <= 4 * math.sqrt(0.25 * 0.75 / DRAWS)
    brightness, hue = params.factors[:, BRIGHTNESS], params.factors[:, HUE]
    assert 0.2 <= brightness.min() < 0.25 and 1.75 < brightness.max() <= 1.8
    assert -0.2 <= hue.min() < -0.19 and 0.19 < hue.max() <= 0.2
    assert abs(brightness.mean() - 1.0) < 0.05 and abs(hue.mean()) < 0.01


# -- presets and bad input ----------------------------------------------------------------------------------


def test_presets_exist_and_run():
    names = {"simclr-fashion-mnist", "simclr-photos", "simclr-imagenet", "byol-imagenet", "byol-photos", "cmc-photos"}
    assert names <= set(VIEW_PRESETS)
    for name, recipes in VIEW_PRESETS.items():
        count = 1 if name.startswith("cmc") else 2  # CMC splits one crop into its L and ab views
        assert len(recipes) == count and all(isinstance(recipe, ViewRecipe) for recipe in recipes), name
        views = make_views(photos(4, 36), generators(range(4)), recipes, 32)
        assert [tuple(view.shape) for view in views] == [(4, 3, 32, 32)] * count, name
    fashion = VIEW_PRESETS["simclr-fashion-mnist"][0]
    assert fashion.hue == fashion.saturation == fashion.grayscale_probability == 0 and fashion.crop_scale[0] > 0.08
    assert VIEW_PRESETS["simclr-photos"][0].blur_probability == 0
    assert VIEW_PRESETS["simclr-imagenet"][0].blur_probability == 0.5
    assert VIEW_PRESETS["simclr-imagenet"][0].blur_kernel_size(224) == 23
    first, second = VIEW_PRESETS["byol-imagenet"]
    assert (first.blur_probability, first.solarize_probability) == (1.0, 0.0)
    assert (second.blur_probability, second.solarize_probability) == (0.1, 0.2)
    small = [(view.blur_probability, view.solarize_probability) for view in VIEW_PRESETS["byol-photos"]]
    assert small == [(0.0, 0.0), (0.0, 0.2)]
    (cmc,) = VIEW_PRESETS["cmc-photos"]
    assert cmc.jitter_probability == cmc.grayscale_probability == 0 and cmc.crop_scale == (0.2, 1.0)


def test_a_view_larger_than_the_stored_images_is_refused():
    with pytest.raises(ValueError, match=r"view size 40 is larger than the stored images \(32x32\)"):
        make_views(photos(2), generators(range(2)), (ViewRecipe(),), 40)


@pytest.mark.parametrize(
    "values,message",
    [({"flip_probability": 1.5}, "flip_probability = 1.5"), ({"blur_probability": -0.1}, "blur_probability"),
     ({"crop_scale": (0.0, 1.0)}, "crop_scale"), ({"crop_scale": (0.6, 0.5)}, "crop_scale"),
     ({"crop_scale": (0.5, 1.2)}, "crop_scale"), ({"hue": 0.7}, "hue"), ({"brightness": -1.0}, "brightness")],
)  # fmt: skip
def test_bad_recipe_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        ViewRecipe(**values)
