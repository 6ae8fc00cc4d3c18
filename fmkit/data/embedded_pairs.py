"""The embedded default image–text pairs: the embedded images (fmkit.data.embedded_images) with template captions.

Handwritten digits are captioned from their labels ("a handwritten digit seven", "the number 7, written by
hand", ...) and photograph crops from the photograph they come from ("a close-up photo of a cat", ...). Each
pair keeps one caption, picked by a fixed seed, as a scraped dataset would. The held-out digits are the
zero-shot classification set; they and every 8th photograph crop are the held-out retrieval pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmkit.data.embedded_images import DIGIT_CLASSES, PROBE_TRAIN_DIGITS, embedded_images, photo_crop_sources
from fmkit.data.image_text import ClassifiedImages, Images, ImageTextPairs

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_CAPTIONS = (
    "a handwritten digit {word}",
    "the number {numeral}, written by hand",
    "a scan of a handwritten {numeral}",
    "a black and white picture of the digit {word}",
    "the digit {numeral}",
    "{word}",
)
PHOTO_SUBJECTS = {
    "astronaut": "an astronaut", "brick": "a brick wall", "camera": "a man with a camera",
    "cell": "a cell under a microscope", "chelsea": "a cat", "coffee": "a cup of coffee", "coins": "old coins",
    "grass": "grass", "gravel": "gravel", "hubble_deep_field": "galaxies in deep space",
    "ihc": "a stained tissue sample", "moon": "the surface of the moon", "motorcycle_left": "a motorcycle",
    "motorcycle_right": "a motorcycle", "retina": "a retina", "rocket": "a rocket", "china": "a temple in china",
    "flower": "a flower",
}  # fmt: skip
PHOTO_CAPTIONS = ("a photo of {subject}", "a close-up photo of {subject}", "part of a picture of {subject}",
                  "{subject}")  # fmt: skip
ZERO_SHOT_TEMPLATES = ("a handwritten digit {}.", "a picture of the digit {}.", "the number {}.")
HELD_OUT_CROP_EVERY = 8
DESCRIPTION = (
    "The embedded default image-text pairs need no download: scikit-learn's handwritten digits captioned from "
    'their labels through templates ("a handwritten digit seven", "the number 7, written by hand", ...) and '
    "crops of the photographs bundled with scikit-image and scikit-learn captioned with their subject "
    '("a close-up photo of a cat", "part of a picture of a rocket", ...). Zero-shot accuracy is measured on '
    "500 held-out digits (classes zero to nine); retrieval on those digits plus every 8th photograph crop."
)


@dataclass
class EmbeddedPairs:
    train: ImageTextPairs
    held_out: ImageTextPairs
    zero_shot: ClassifiedImages


def embedded_pairs(size: int) -> EmbeddedPairs:
    images = embedded_images(size)
    digit_labels, test_labels = images.probe_train.labels, images.probe_test.labels
    pick = np.random.default_rng(0)
    digit_captions = [_digit_caption(int(label), pick) for label in digit_labels]
    crop_captions = [_photo_caption(stem, pick) for stem in photo_crop_sources()]
    crops = np.arange(PROBE_TRAIN_DIGITS, len(images.train.images))
    held_crops = crops[::HELD_OUT_CROP_EVERY]
    train_index = np.concatenate([np.arange(PROBE_TRAIN_DIGITS), np.setdiff1d(crops, held_crops)])
    captions = digit_captions + crop_captions
    train = ImageTextPairs(
        Images(pixels=images.train.images[train_index]), [captions[i] for i in train_index], DESCRIPTION
    )
    held_pixels = np.concatenate([images.probe_test.images, images.train.images[held_crops]])
    held_captions = [_digit_caption(int(label), pick) for label in test_labels]
    held_captions += [captions[i] for i in held_crops]
    held_out = ImageTextPairs(Images(pixels=held_pixels), held_captions, "held-out embedded pairs")
    zero_shot = ClassifiedImages(
        Images(pixels=images.probe_test.images),
        test_labels,
        DIGIT_WORDS,
        f"{len(test_labels)} held-out digits",
        ZERO_SHOT_TEMPLATES,
    )
    return EmbeddedPairs(train, held_out, zero_shot)


def _digit_caption(label: int, pick: np.random.Generator) -> str:
    template = DIGIT_CAPTIONS[pick.integers(len(DIGIT_CAPTIONS))]
    return template.format(word=DIGIT_WORDS[label], numeral=label)


def _photo_caption(stem: str, pick: np.random.Generator) -> str:
    template = PHOTO_CAPTIONS[pick.integers(len(PHOTO_CAPTIONS))]
    return template.format(subject=PHOTO_SUBJECTS.get(stem, stem.replace("_", " ")))


def zero_shot_prompts(class_names: list[str]) -> tuple[list[str], list[str]]:
    """Class names and prompt templates for scoring a CLIP model zero-shot: the embedded digits as the CLIP recipe
    names and prompts them, any other classes as "a photo of a {}."."""
    if list(class_names) == list(DIGIT_CLASSES):
        return list(DIGIT_WORDS), list(ZERO_SHOT_TEMPLATES)
    return list(class_names), ["a photo of a {}."]
