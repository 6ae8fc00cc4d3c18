"""Image classification: any fmkit pretext or contrastive backbone, or a transformers vision model, as
`AutoModelForImageClassification` (ResNet, ViT, ConvNeXt, ...).

Labelled images come in every form the vision recipes read (ImageFolder, .tar shards with labels, hf:NAME,
fashion-mnist:SPLIT[:COUNT], embedded:digits:SPLIT) and are decoded once into the cached array. Training sees
seeded random crops, evaluation centre crops: what the saved image processor does to a new image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from fmkit.config import POSITIVE, ranged
from fmkit.data.fashion_mnist import fashion_mnist_installed
from fmkit.data.image_array import ImageArray, load_image_array
from fmkit.data.images import BadImage, decode_image, resize_square
from fmkit.data.loader import sample_seeds
from fmkit.data.named_images import default_probe_sources
from fmkit.errors import DataError
from fmkit.models.backbone import IMAGENET_MEAN, IMAGENET_STD, image_processor
from fmkit.tasks import register_task
from fmkit.tasks.finetune.common import ClassificationTask, FinetuneConfig, LabelledData, Split, class_ids
from fmkit.vision.crops import square_crops

logger = logging.getLogger(__name__)

TRAIN_SEED_STREAM = 11
"""The data stream seeding training crops (any fixed number apart from the loader's own)."""


@dataclass
class ImageClassificationConfig(FinetuneConfig):
    """Fine-tune a vision backbone to classify images."""

    train_images: str | list[str] | None = None
    """Labelled training images: ImageFolder (root/class/image), .tar shards with .cls labels, hf:NAME[:SPLIT] with
    a label column, fashion-mnist:train[:COUNT] or embedded:digits:train. Default: Fashion-MNIST's training split
    where the package is installed, else the embedded digits."""
    validation_images: str | list[str] | None = None
    """Labelled images that pick the best checkpoint; none: validation_fraction of the training images."""
    test_images: str | list[str] | None = None
    """Labelled images scored once at the end. Default: fashion-mnist:test:2000, else embedded:digits:test."""
    image_size: int = ranged(64, POSITIVE)
    """Side of the square crops the model sees (fmkit's vision demos train at 64)."""
    stored_size: int = ranged(72, POSITIVE)
    """Images are decoded once and cached at this square size; training takes random image_size crops."""
    horizontal_flip: bool = False
    """Also flip training crops at random."""
    max_image_pixels: int = ranged(89_478_485, POSITIVE)
    """Refuse larger images (possible decompression bombs) instead of decoding them."""


@register_task
class ImageClassification(ClassificationTask):
    name = "image-classification"
    config_class = ImageClassificationConfig
    config: ImageClassificationConfig
    auto_class = AutoModelForImageClassification
    pipeline_tag = "image-classification"

    def load_data(self) -> LabelledData:
        config = self.config
        self._load_normalisation()
        _, default_test = default_probe_sources()
        train = self._images(config.train_images or default_labelled_train())
        test = self._images(config.test_images or default_test)
        validation = self._images(config.validation_images) if config.validation_images else None
        class_names = list(train.class_names)
        splits = {}
        for role, array in (("train", train), ("validation", validation), ("test", test)):
            if array is not None:
                values = [array.class_names[i] for i in array.labels]
                labels = class_ids(values, class_names, f"{role} images ({array.description})")
                splits[role] = Split(array.images, np.arange(len(array.images)), labels)
        description = f"Trained on {train.description}; scored on {test.description}."
        return LabelledData(splits["train"], splits.get("validation"), splits["test"], class_names, description)

    def _images(self, sources: str | list[str]) -> ImageArray:
        config = self.config
        array = load_image_array(sources, config.stored_size, labelled=True, max_pixels=config.max_image_pixels)
        if array.labels is None or not len(array.images):
            raise DataError(f"{sources}: no labelled images")
        return array

    def _load_normalisation(self) -> None:
        """The pretrained model's own mean and std where it ships an image processor; ImageNet's otherwise."""
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        try:
            processor = AutoImageProcessor.from_pretrained(self.config.model_name_or_path)
            mean, std = processor.image_mean, processor.image_std
        except (OSError, ValueError, AttributeError):
            pass
        self.mean, self.std = (torch.tensor(values, dtype=torch.float32).view(3, 1, 1) for values in (mean, std))

    def make_batch(self, split: Split, positions: np.ndarray, training: bool) -> dict:
        picked = split.index[positions]
        order = np.argsort(picked)  # memory-mapped reads in file order
        images = np.empty((len(picked), *split.inputs.shape[1:]), dtype=np.uint8)
        images[order] = split.inputs[picked[order]]
        rngs = None
        if training:
            rngs = [np.random.default_rng(s) for s in sample_seeds(self.config.seed, TRAIN_SEED_STREAM, positions)]
        pixels = square_crops(images, self.config.image_size, rngs, self.config.horizontal_flip)
        return {"pixel_values": (pixels - self.mean) / self.std, "labels": torch.from_numpy(split.labels[positions])}

    def predict_inputs(self, path: str) -> tuple[list[str], Split]:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        names, images, skipped = [], [], 0
        for file in files:
            try:
                image = decode_image(file.read_bytes(), self.config.max_image_pixels)
            except BadImage:
                skipped += 1
                continue
            names.append(str(file))
            images.append(resize_square(image, self.config.stored_size))
        if skipped:
            logger.warning("do_predict %s: %d undecodable files skipped", path, skipped)
        if not images:
            raise DataError(f"do_predict {path}: no decodable images in it")
        array = np.stack(images)
        return names, Split(array, np.arange(len(array)), np.zeros(len(array), dtype=np.int64))

    def save_processor(self, output_dir: Path) -> None:
        processor = image_processor(self.config.image_size, self.config.stored_size)
        processor.image_mean, processor.image_std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        processor.save_pretrained(output_dir)

    def usage(self) -> str:
        return (
            "from transformers import pipeline\n\n"
            'classify = pipeline("image-classification", model="PATH_OR_HUB_ID")\n'
            'print(classify("photo.jpg"))'
        )


def default_labelled_train() -> str:
    """Fashion-MNIST's 60,000 training images where the package is installed, the embedded digits elsewhere."""
    return "fashion-mnist:train" if fashion_mnist_installed() else "embedded:digits:train"
