"""The embedded default images: real data that every fresh install already has on disk, so vision recipes run offline.

scikit-learn bundles 1,797 handwritten digits (labelled: the probe set where Fashion-MNIST is not installed);
scikit-image and scikit-learn bundle a handful of natural photographs, cut into square crops at several scales
for pretext training. Files are read from the installed packages' folders, never through their download helpers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fmkit.data.image_array import ImageArray, image_array_from_numpy
from fmkit.data.images import decode_image, resize_grey_squares

EMBEDDED_VERSION = 1
"""Bump whenever the same packages and size would give different arrays, so caches rebuild."""
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "retina.jpg", "rocket.jpg",
)  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
CROP_DIVISORS = (2, 3, 4)
"""Crop sides are 1/2, 1/3 and 1/4 of a photograph's shorter side."""
CROP_STEP = 2 / 3
"""Grid spacing as a fraction of the crop side: neighbouring crops overlap by a third."""
DIGITS = 1797
PROBE_TRAIN_DIGITS = 1297
DIGIT_CLASSES = [str(digit) for digit in range(10)]
PHOTO_MAX_PIXELS = 4_000_000

EMBEDDED_DESCRIPTION = (
    "Trained on the embedded default images, which need no download: the "
    f"{PROBE_TRAIN_DIGITS:,} training digits of a seeded split of scikit-learn's {DIGITS:,} handwritten digits (8x8 "
    "pixels, 16 grey levels, scaled to 8-bit RGB and upscaled bicubically), without their labels, plus about 1,000 "
    "square crops, at 1/2, 1/3 and 1/4 of the shorter side on a regular grid, of the natural photographs bundled "
    "with scikit-image (astronaut, coffee, Chelsea the cat, a rocket, motorcycles, the Hubble deep field, a retina, "
    "coins, textures such as brick, grass and gravel, ...) and scikit-learn (china.jpg, flower.jpg)."
)


@dataclass
class EmbeddedImages:
    train: ImageArray
    """Unlabelled pretext training images: the training digits and the photograph crops."""
    photos: ImageArray
    """The photograph crops alone (`embedded:photos`): colour, for tasks that learn from it."""
    probe_train: ImageArray
    """Labelled digits 0-9, for training linear probes and kNN."""
    probe_test: ImageArray
    """Labelled held-out digits."""


def embedded_images(size: int) -> EmbeddedImages:
    """The default data at `size` x `size` pixels, built once per machine and cached."""
    photos = _photo_files()
    crops = _crop_boxes(photos)
    key = (EMBEDDED_VERSION, size, _versions(), [(path.name, path.stat().st_size) for path in photos])
    digits = f"scikit-learn handwritten digits (0-9) at {size}x{size}"
    photo_crops = f"{len(crops):,} crops of {len(photos)} photographs bundled with scikit-image and scikit-learn"
    train = image_array_from_numpy(
        "embedded-train",
        key,
        lambda: (np.concatenate([_digit_split(size, "train")[0], _crop_images(crops, size)]), None),
        description=f"{PROBE_TRAIN_DIGITS + len(crops):,} unlabelled images at {size}x{size}: {PROBE_TRAIN_DIGITS:,} "
        f"scikit-learn handwritten digits and {photo_crops}",
    )
    photo_array = image_array_from_numpy(
        "embedded-photos",
        key,
        lambda: (_crop_images(crops, size), None),
        description=f"{photo_crops} at {size}x{size}",
    )
    probe_train = image_array_from_numpy(
        "embedded-probe-train",
        key,
        lambda: _digit_split(size, "train"),
        class_names=DIGIT_CLASSES,
        description=f"{PROBE_TRAIN_DIGITS:,} {digits}, probe training split",
    )
    probe_test = image_array_from_numpy(
        "embedded-probe-test",
        key,
        lambda: _digit_split(size, "test"),
        class_names=DIGIT_CLASSES,
        description=f"{DIGITS - PROBE_TRAIN_DIGITS} held-out {digits}, probe test split",
    )
    return EmbeddedImages(train=train, photos=photo_array, probe_train=probe_train, probe_test=probe_test)


def photo_crop_sources() -> list[str]:
    """The photograph (file stem, e.g. "chelsea") each crop in `EmbeddedImages.train` comes from, in order."""
    return [path.stem for path, _box in _crop_boxes(_photo_files())]


def _package_dir(package: str) -> Path:
    """A package's folder, found without importing it."""
    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations)))


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("scikit-learn", "scikit-image")}


def _photo_files() -> list[Path]:
    """The bundled photographs present on disk; scikit-image fetches others on demand, which we never do."""
    candidates = [_package_dir("skimage") / "data" / name for name in SKIMAGE_PHOTOS]
    candidates += [_package_dir("sklearn") / "datasets" / "images" / name for name in SKLEARN_PHOTOS]
    return [path for path in candidates if path.is_file()]


def _digit_split(size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, size, size, 3] and labels of one split of the seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.target))
    chosen = order[:PROBE_TRAIN_DIGITS] if split == "train" else order[PROBE_TRAIN_DIGITS:]
    grey = np.rint(digits.images[chosen] * (255 / 16)).astype(np.uint8)
    return resize_grey_squares(grey, size), digits.target[chosen].astype(np.int64)


def _crop_boxes(photos: list[Path]) -> list[tuple[Path, tuple[int, int, int, int]]]:
    """(photo, box) for square crops on a regular grid at each scale; only image headers are read."""
    boxes = []
    for path in photos:
        with Image.open(path) as image:
            width, height = image.size
        for divisor in CROP_DIVISORS:
            side = min(width, height) // divisor
            for top in _grid(height, side):
                boxes += [(path, (left, top, left + side, top + side)) for left in _grid(width, side)]
    return boxes


def _grid(extent: int, side: int) -> list[int]:
    """Evenly spaced crop starts from one edge to the other, about CROP_STEP * side apart."""
    count = int((extent - side) / (side * CROP_STEP)) + 1
    return [round(start) for start in np.linspace(0, extent - side, count)]


def _crop_images(boxes: list[tuple[Path, tuple[int, int, int, int]]], size: int) -> np.ndarray:
    photos = {path: decode_image(path.read_bytes(), PHOTO_MAX_PIXELS) for path in dict.fromkeys(p for p, _ in boxes)}
    crops = [photos[path].resize((size, size), Image.Resampling.BICUBIC, box=box) for path, box in boxes]
    return np.stack([np.asarray(crop, dtype=np.uint8) for crop in crops])
