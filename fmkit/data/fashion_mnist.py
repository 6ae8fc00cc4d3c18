"""Fashion-MNIST (Xiao et al. 2017) from Debian's `dataset-fashion-mnist` package, as cached image arrays.

70,000 grey 28x28 photographs of clothing in 10 balanced classes (60,000 train, 10,000 test): a labelled set
small enough to probe features on a CPU and hard enough that the probe separates good features from bad ones,
which the embedded 8x8 digits do not. Images are stored as RGB with three equal channels, so any backbone
takes them as it takes photographs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fmkit.data.idx import read_labelled_images
from fmkit.data.image_array import ImageArray, image_array_from_numpy
from fmkit.data.images import resize_grey_squares
from fmkit.errors import DataError

DIRECTORY_ENV = "FMKIT_FASHION_MNIST_DIR"
DEFAULT_DIRECTORY = "/usr/share/datasets/fashion-mnist"
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SUBSET_SEED = 0
"""Picks the images of a subset; fixed, not the run's seed, so every run is probed on the same images."""
FASHION_MNIST_VERSION = 1
"""Bump whenever the same files, split, count and size would give different arrays, so caches rebuild."""
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


def fashion_mnist_directory() -> Path:
    """Where the IDX files are: $FMKIT_FASHION_MNIST_DIR, else where the Debian package puts them."""
    return Path(os.environ.get(DIRECTORY_ENV) or DEFAULT_DIRECTORY)


def fashion_mnist_installed() -> bool:
    folder = fashion_mnist_directory()
    return all((folder / name).is_file() for files in SPLIT_FILES.values() for name in files)


def fashion_mnist_array(split: str, size: int, count: int | None = None) -> ImageArray:
    """One split at `size` x `size`, whole or as a fixed class-balanced subset of `count` images, cached."""
    if split not in SPLIT_FILES:
        raise DataError(f"fashion-mnist:{split}: unknown split (expected {' or '.join(SPLIT_FILES)})")
    paths = _split_paths(split)
    states = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in paths]
    what = f"Fashion-MNIST {split} images at {size}x{size}"
    if count is None:
        description = f"all {what} (Xiao et al. 2017, Debian's dataset-fashion-mnist)"
    else:
        description = f"{count:,} {what}, {count // len(CLASS_NAMES):,} per class, a fixed stratified subset"

    def make() -> tuple[np.ndarray, np.ndarray]:
        grey, labels = read_labelled_images(*paths)
        if count is not None:
            chosen = stratified_subset(labels, count, f"fashion-mnist:{split}:{count}")
            grey, labels = grey[chosen], labels[chosen]
        return resize_grey_squares(grey, size), labels

    return image_array_from_numpy(
        f"fashion-mnist-{split}",
        (FASHION_MNIST_VERSION, split, size, count, states),
        make,
        class_names=CLASS_NAMES,
        description=description,
    )


def stratified_subset(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    """Sorted indices of `count` images, the same number from every class, drawn with SUBSET_SEED."""
    classes = np.unique(labels)
    per_class, remainder = divmod(count, len(classes))
    smallest = int(np.bincount(labels)[classes].min())
    if count < 1 or remainder or per_class > smallest:
        raise DataError(
            f"{source}: expected a count that is a positive multiple of {len(classes)} (the classes) and at most "
            f"{smallest * len(classes):,}, got {count:,}"
        )
    rng = np.random.default_rng(SUBSET_SEED)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:per_class] for label in classes]
    return np.sort(np.concatenate(chosen))


def _split_paths(split: str) -> tuple[Path, Path]:
    folder = fashion_mnist_directory()
    paths = tuple(folder / name for name in SPLIT_FILES[split])
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"fashion-mnist:{split}: {', '.join(missing)} not found in {folder} (expected `{INSTALL_HINT}`, "
            f"or ${DIRECTORY_ENV} set to the folder that holds the IDX files)"
        )
    return paths
