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
from transformers import AutoConfig, AutoModelForImageClassification, ConvNextImageProcessor

from fmkit.config import POSITIVE, ranged
from fmkit.data.fashion_mnist import fashion_mnist_installed
from fmkit.data.image_array import PIL_MAX_PIXELS, ImageArray, load_image_array
from fmkit.data.images import BadImage, decode_image, resize_square
from fmkit.data.loader import sample_seeds
from fmkit.data.named_images import default_probe_sources
from fmkit.errors import ConfigError, DataError
from fmkit.eval.representation import ProbePixels, feeds_lightness
from fmkit.models.backbone import IMAGENET_MEAN, IMAGENET_STD, image_processor, load_image_processor, processor_geometry
from fmkit.models.luminance_processor import LuminanceImageProcessor
from fmkit.tasks import register_task
from fmkit.tasks.finetune.common import ClassificationTask, FinetuneConfig, LabelledData, Split, class_ids

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
    image_size: int | None = ranged(None, POSITIVE)
    """Side of the square crops the model sees; default: what the pretrained model's image processor crops (else
    64)."""
    stored_size: int | None = ranged(None, POSITIVE)
    """Images are decoded once and cached at this square size, training takes random image_size crops; default: what
    the pretrained model's image processor resizes to (else 72)."""
    horizontal_flip: bool = False
    """Also flip training crops at random."""
    max_image_pixels: int = ranged(PIL_MAX_PIXELS, POSITIVE)
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
        self._load_geometry()
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
        array = load_image_array(sources, self.stored_size, labelled=True, max_pixels=config.max_image_pixels)
        if array.labels is None or not len(array.images):
            raise DataError(f"{sources}: no labelled images")
        return array

    def _load_geometry(self) -> None:
        """Crop, stored size, mean and std: as given, else the pretrained model's image processor's, else fmkit's
        vision defaults (64 of 72 pixels, ImageNet's statistics)."""
        config = self.config
        image_size, stored_size, mean, std = 64, 72, IMAGENET_MEAN, IMAGENET_STD
        try:
            processor = load_image_processor(config.model_name_or_path)
        except (OSError, ValueError):
            processor = None
        if processor is not None:
            image_size, stored_size = processor_geometry(processor)
            mean, std = processor.image_mean, processor.image_std
        lightness = feeds_lightness(processor)
        try:
            channels = getattr(AutoConfig.from_pretrained(config.model_name_or_path), "num_channels", 3)
        except (OSError, ValueError):
            channels = 3
        if channels != (1 if lightness else 3):
            saved_with = f"image processor {type(processor).__name__}" if processor else "no image processor"
            raise ConfigError(
                f"model_name_or_path {config.model_name_or_path}: a {channels}-channel backbone with {saved_with}; "
                "image-classification fine-tunes RGB (3-channel) models and 1-channel ones saved with fmkit's "
                "LuminanceImageProcessor (CMC's L encoder)"
            )
        image_size = config.image_size or image_size
        self.stored_size = config.stored_size or max(stored_size, image_size)
        self.pixels = ProbePixels(image_size, mean, std, lightness)

    def fixed_baselines(self, accelerator) -> dict[str, dict[str, float]]:
        """For a CLIP model: its own zero-shot accuracy (class names as prompts), which the fine-tune must beat.
        Only a whole CLIPModel has the text tower for it; a CLIP classifier, already fine-tuned, has none."""
        path = self.config.model_name_or_path
        if self.config.from_scratch or "CLIPModel" not in (AutoConfig.from_pretrained(path).architectures or []):
            return super().fixed_baselines(accelerator)
        from transformers import AutoTokenizer, CLIPModel

        from fmkit.data.embedded_pairs import zero_shot_prompts
        from fmkit.eval.retrieval import zero_shot_accuracy
        from fmkit.models.clip import HFClip
        from fmkit.tasks.clip import Tokenize

        clip = CLIPModel.from_pretrained(path)
        model = HFClip(clip, getattr(clip.config, "logit_bias", None)).to(accelerator.device).eval()
        tokenize = Tokenize(AutoTokenizer.from_pretrained(path), model.context_length)
        names, templates = zero_shot_prompts(self.class_names)
        baselines = {}
        for prefix, split in (("eval", self.validation), ("test", self.test)):
            batch_size = self.config.per_device_batch_size
            batches = (
                (batch["pixel_values"], batch["labels"])
                for batch in (self.make_batch(split, np.arange(start, min(start + batch_size, len(split))), False)
                              for start in range(0, len(split), batch_size))
            )  # fmt: skip
            with torch.no_grad():
                scores = zero_shot_accuracy(model, tokenize, names, templates, batches, accelerator.device)
            baselines[prefix] = {f"{prefix}_accuracy_zero_shot": scores["zero_shot_top1"]}
        validation, test = baselines["eval"]["eval_accuracy_zero_shot"], baselines["test"]["test_accuracy_zero_shot"]
        logger.info("%s: %s zero-shot: %.4f on validation, %.4f on test", self.name, path, validation, test)
        return baselines

    def make_batch(self, split: Split, positions: np.ndarray, training: bool) -> dict:
        picked = split.index[positions]
        order = np.argsort(picked)  # memory-mapped reads in file order
        images = np.empty((len(picked), *split.inputs.shape[1:]), dtype=np.uint8)
        images[order] = split.inputs[picked[order]]
        rngs = None
        if training:
            rngs = [np.random.default_rng(s) for s in sample_seeds(self.config.seed, TRAIN_SEED_STREAM, positions)]
        pixels = self.pixels(images, rngs, self.config.horizontal_flip)
        return {"pixel_values": pixels, "labels": torch.from_numpy(split.labels[positions])}

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
            images.append(resize_square(image, self.stored_size))
        if skipped:
            logger.warning("do_predict %s: %d undecodable files skipped", path, skipped)
        if not images:
            raise DataError(f"do_predict {path}: no decodable images in it")
        array = np.stack(images)
        return names, Split(array, np.arange(len(array)), np.zeros(len(array), dtype=np.int64))

    def save_processor(self, output_dir: Path) -> None:
        """The processor that feeds the model what it trained on; a LuminanceImageProcessor brings its code along."""
        pixels = self.pixels
        kind = LuminanceImageProcessor if pixels.lightness else ConvNextImageProcessor
        image_processor(pixels.size, self.stored_size, pixels.mean, pixels.std, kind).save_pretrained(output_dir)

    def usage(self) -> str:
        remote_code = ", trust_remote_code=True" if self.pixels.lightness else ""
        return (
            "from transformers import pipeline\n\n"
            f'classify = pipeline("image-classification", model="PATH_OR_HUB_ID"{remote_code})\n'
            'print(classify("photo.jpg"))'
        )


def default_labelled_train() -> str:
    """Fashion-MNIST's 60,000 training images where the package is installed, the embedded digits elsewhere."""
    return "fashion-mnist:train" if fashion_mnist_installed() else "embedded:digits:train"
