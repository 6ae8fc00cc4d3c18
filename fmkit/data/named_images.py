"""Image sources given by name instead of by path: Fashion-MNIST and the parts of the embedded images.

fashion-mnist:train | fashion-mnist:test     a whole split (60,000 / 10,000 labelled images)
fashion-mnist:train:10000                    a fixed subset with the same number of images per class
embedded:photos                              crops of the bundled colour photographs (unlabelled)
embedded:digits:train | embedded:digits:test the embedded digits' probe splits (1,297 / 500 labelled)
"""

from __future__ import annotations

import logging

from fmkit.data.embedded_images import embedded_images
from fmkit.data.fashion_mnist import INSTALL_HINT, fashion_mnist_array, fashion_mnist_installed
from fmkit.data.image_array import ImageArray
from fmkit.data.images import NAMED_SOURCES
from fmkit.errors import DataError

logger = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_PROBE = ("fashion-mnist:train:10000", "fashion-mnist:test:2000")
DIGITS_PROBE = ("embedded:digits:train", "embedded:digits:test")
EMBEDDED_PARTS = {"photos": "photos", "digits:train": "probe_train", "digits:test": "probe_test"}
"""`embedded:<part>` -> the EmbeddedImages field it names."""
UNLABELLED_PARTS = frozenset({"photos"})


def named_image_array(source: str, size: int, labelled: bool) -> ImageArray:
    """The cached array a named source stands for; a one-line error for a name, split or count not known."""
    family, _, rest = source.partition(":")
    if family == FASHION_MNIST:
        split, _, count = rest.partition(":")
        if count and not count.isdigit():
            raise DataError(f"{source}: expected a count of images after the split, got {count!r}")
        return fashion_mnist_array(split, size, int(count) if count else None)
    if rest not in EMBEDDED_PARTS:
        raise DataError(f"{source}: unknown named source (expected {NAMED_SOURCES})")
    if labelled and rest in UNLABELLED_PARTS:
        raise DataError(f"{source}: these images have no labels (expected embedded:digits:train|test)")
    return getattr(embedded_images(size), EMBEDDED_PARTS[rest])


def default_probe_sources() -> tuple[str, str]:
    """The labelled (train, test) sources that vision probes use unless told otherwise.

    A fixed class-balanced Fashion-MNIST subset, sized so that a CPU probes it in seconds, where the package is
    installed; the embedded digits, which any install has, where it is not.
    """
    if fashion_mnist_installed():
        return FASHION_MNIST_PROBE
    logger.warning("Fashion-MNIST not found (%s): probing on the embedded digits instead", INSTALL_HINT)
    return DIGITS_PROBE


def default_train_sources() -> str | None:
    """Unlabelled vision training images unless told otherwise: Fashion-MNIST's training split where the package
    is installed; None (the embedded images, which any install has) where it is not."""
    return f"{FASHION_MNIST}:train" if fashion_mnist_installed() else None
