"""What every task that trains a vision backbone shares: images, the backbone, its evaluation, its export.

Pretext and contrastive tasks differ in what they make of a batch of images (`make_batch`, run in data-loader
workers with one seeded generator per sample) and in their model and loss. The rest lives here once:

* images are decoded once into a cached array; a slice of the training images is held out for the task's
  own held-out metrics (pretext accuracy, PSNR, contrastive loss);
* every evaluation measures the frozen backbone with fmkit.eval.representation (linear probe, kNN, few-shot)
  next to a randomly initialised backbone of the same architecture, and names the probe set;
* the export is the backbone alone, as a stock transformers model with its image processor.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from fmkit.config import POSITIVE, TrainConfig, ranged
from fmkit.data.embedded_images import EMBEDDED_DESCRIPTION, embedded_images
from fmkit.data.image_array import ImageArray, load_image_array
from fmkit.data.loader import EVAL_STREAM, TRAIN_STREAM, Sharding, eval_batches, sample_seeds
from fmkit.data.named_images import default_train_sources
from fmkit.errors import ConfigError, DataError
from fmkit.eval.probe import KNN_K
from fmkit.eval.representation import ProbePixels, RepresentationProbe, load_probe_splits
from fmkit.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    FeaturePooling,
    build_backbone,
    image_processor,
    random_copy,
)
from fmkit.tasks.base import BatchCount, CardDetails, Task
from fmkit.vision.crops import square_crops

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone.model."
"""Where the trained module keeps the transformers backbone: the export is the weights under it."""


@dataclass
class VisionConfig(TrainConfig):
    """Options of every task that trains a vision backbone: its images, its architecture, its probes."""

    train_images: str | list[str] | None = None
    """Unlabelled training images: folders (recursive), globs, WebDataset .tar shards, hf:NAME[:SPLIT], or one
    named source (fashion-mnist:train, embedded:photos, ...). Default: Fashion-MNIST's 60,000 training images
    where the package is installed, else the embedded images (scikit-learn digits and scikit-image photographs)."""
    probe_train_images: str | list[str] | None = None
    """Labelled images for the linear, kNN and few-shot probes: ImageFolder layout (root/class/image), .tar shards
    with .cls labels, hf:NAME[:SPLIT] with a label column, or fashion-mnist:train[:COUNT] / embedded:digits:train.
    Default: fashion-mnist:train:10000 (1,000 per class) if Fashion-MNIST is installed, else embedded:digits:train."""
    probe_test_images: str | list[str] | None = None
    """Labelled held-out images the probes are scored on (same forms as probe_train_images). Default:
    fashion-mnist:test:2000 if Fashion-MNIST is installed, else embedded:digits:test."""
    image_size: int = ranged(64, POSITIVE)
    """Side of the square crops the backbone sees."""
    stored_size: int = ranged(72, POSITIVE)
    """Images are decoded once and cached at this square size; training takes random image_size crops."""
    horizontal_flip: bool = False
    """Also flip training crops at random (off by default: flips change digits and text)."""
    max_image_pixels: int = ranged(89_478_485, POSITIVE)
    """Refuse larger images (possible decompression bombs) instead of decoding them."""
    heldout_images: int = ranged(256, POSITIVE)
    """Training images set aside for the pretext task's own held-out metrics (accuracy, PSNR)."""
    knn_k: int = ranged(KNN_K, POSITIVE)
    """Neighbours in the kNN vote; keep fmkit's one definition (200) to compare runs and methods."""
    backbone_type: str = "resnet"
    """A transformers vision model type to build from scratch: resnet, vit, convnext, ..."""
    backbone_config: dict = field(default_factory=dict)
    """Overrides for the new backbone's config, e.g. {hidden_sizes: [32, 64, 128], depths: [1, 1, 1]}."""
    backbone_name_or_path: str | None = None
    """Continue from this pretrained backbone instead of building one from scratch."""
    feature_pooling: FeaturePooling = "default"
    """One vector per image for the probes and the classifying heads: default ([CLS] / pooled last stage),
    patch_mean (ViTs) or stages (CNNs: every stage averaged and concatenated)."""

    def validate(self) -> None:
        super().validate()
        if self.stored_size < self.image_size:
            raise ConfigError(f"stored_size {self.stored_size} is smaller than image_size {self.image_size}")


class VisionTask(Task):
    config: VisionConfig
    family: str = ""
    """What kind of objective trains the backbone, for the model card ("pretext task", "contrastive method")."""
    pipeline_note: str = ""
    unusable_reason: str = ""
    input_channels: int = 3
    """Channels the backbone takes: 3 (RGB) unless the task feeds it something else (CMC's L encoder: 1)."""

    # -- what a task supplies ---------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, backbone: Backbone) -> nn.Module:
        """The trained module, holding the backbone as `.backbone` (its forward is the task's prediction, so
        DDP sees every parameter used)."""

    @abstractmethod
    def make_batch(self, images: np.ndarray, rngs: list[np.random.Generator], training: bool) -> dict:
        """uint8 [B, stored, stored, 3] images -> model inputs and targets, in workers; `rngs` are the samples'."""

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Sums over the batch's loss terms, averaged by the caller into eval_<name>; must include "loss"."""
        return {"loss": self.loss(model, batch)}

    def usable_images(self, images: np.ndarray) -> np.ndarray:
        """Which of the (uint8 [N, H, W, 3]) training images the task can learn from; all, unless it says why not."""
        return np.ones(len(images), dtype=bool)

    def count(self, batch: dict) -> BatchCount:
        samples = batch["pixel_values"].shape[0]
        return BatchCount(items=samples, samples=samples)

    def exported_processor(self):
        """The image processor saved with the backbone: a new image's path to the backbone's input, which the
        probes follow (fmkit.eval.representation.ProbePixels.of)."""
        return image_processor(self.config.image_size, self.config.stored_size)

    # -- shared machinery -------------------------------------------------------------------------------
    def setup(self, accelerator) -> nn.Module | dict[str, nn.Module]:
        config = self.config
        self.device = accelerator.device
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        self.train_images, probe_train, probe_test, self.data_description = self._load_images()
        order = np.random.default_rng(0).permutation(len(self.train_images.images))
        usable = self.usable_images(self.train_images.images)
        if not usable.all():
            logger.info("%s: %d of %d training images left out (%s)", self.name, (~usable).sum(), len(usable),
                        self.unusable_reason)  # fmt: skip
        order = order[usable[order]]
        if len(order) <= config.heldout_images:
            left_out = f" ({(~usable).sum()} left out: {self.unusable_reason})" if not usable.all() else ""
            raise DataError(
                f"{self.train_images.description}: {len(order)} usable images{left_out}, not more than "
                f"heldout_images {config.heldout_images}; add images or lower heldout_images"
            )
        self.heldout_index, self.train_index = np.sort(order[: config.heldout_images]), order[config.heldout_images :]
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.probe = RepresentationProbe(
            probe_train, probe_test, self.probe_set, ProbePixels.of(self.exported_processor()),
            config.per_device_batch_size, config.knn_k, config.seed, self.sharding, self.device,
        )  # fmt: skip
        backbone = build_backbone(
            config.backbone_type,
            {**config.backbone_config, "num_channels": self.input_channels},
            config.backbone_name_or_path,
            config.image_size,
            config.feature_pooling,
        )
        channels = getattr(backbone.model.config, "num_channels", 3)
        if channels != self.input_channels:
            raise ConfigError(
                f"backbone_name_or_path {config.backbone_name_or_path}: takes {channels} input channels; "
                f"{self.name} feeds it {self.input_channels}"
            )
        self.backbone_config = backbone.model.config
        baseline = random_copy(backbone, config.seed).to(self.device)
        self.random_backbone_metrics = self.probe.metrics(baseline, accelerator, "_random_backbone", shard=False)
        self.num_parameters = sum(p.numel() for p in backbone.parameters())
        return self.build_model(backbone)

    def _load_images(self) -> tuple[ImageArray, ImageArray, ImageArray, str]:
        config = self.config
        train_sources = config.train_images or default_train_sources()
        if train_sources:
            train = load_image_array(train_sources, config.stored_size, max_pixels=config.max_image_pixels)
        else:
            train = embedded_images(config.stored_size).train
        probe = load_probe_splits(
            config.probe_train_images, config.probe_test_images, config.stored_size, config.max_image_pixels
        )
        probe_train, probe_test, self.probe_set = probe.train, probe.test, probe.name
        trained_on = EMBEDDED_DESCRIPTION if not train_sources else f"Trained on {train.description}."
        probed_on = (
            f"The linear, kNN and few-shot probes (probe set `{self.probe_set}`) are fitted on "
            f"{probe_train.description}; they are scored on {probe_test.description}."
        )
        return train, probe_train, probe_test, f"{trained_on} {probed_on}"

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def crops(self, images: np.ndarray, rngs: list[np.random.Generator] | None) -> torch.Tensor:
        """[B, 3, image_size, image_size] floats in [0, 1]: seeded random crops (and flips), or centre crops."""
        return square_crops(images, self.config.image_size, rngs, self.config.horizontal_flip)

    def batch(self, index: np.ndarray, stream: int, indices: np.ndarray, positions: np.ndarray) -> dict:
        rngs = [np.random.default_rng(s) for s in sample_seeds(self.config.seed, stream, positions)]
        picked = index[indices]
        order = np.argsort(picked)  # memory-mapped reads in file order
        images = np.empty((len(picked), *self.train_images.images.shape[1:]), dtype=np.uint8)
        images[order] = self.train_images.images[picked[order]]
        return self.make_batch(images, rngs, training=stream == TRAIN_STREAM)

    def first_training_images(self, count: int, option: str) -> np.ndarray:
        """The first `count` training images (train_index is a seeded permutation), for a method that keeps state per
        image (NPID's bank, DeepCluster's clusters); fewer than `option` asks for is a one-line error."""
        if len(self.train_index) < count:
            raise ConfigError(
                f"{option} {count}: {self.train_images.description} leave only {len(self.train_index)} training "
                f"images after heldout_images {self.config.heldout_images}; lower {option} or add images"
            )
        return self.train_index[:count]

    def heldout_batch(self, indices: np.ndarray) -> dict:
        return self.batch(self.heldout_index, EVAL_STREAM, indices, indices)

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        return self.indexed_batches(
            len(self.train_index),
            lambda indices, positions: self.batch(self.train_index, TRAIN_STREAM, indices, positions),
            start,
            sharding,
        )

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        items = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        batches = eval_batches(
            len(self.heldout_index),
            lambda indices, positions: self.batch(self.heldout_index, EVAL_STREAM, indices, positions),
            self.config.per_device_batch_size,
            self.sharding,
            self.config.eval_batches,
        )
        for batch in batches:
            items += self.count(batch).items
            for name, value in self.heldout_sums(model, send_to_device(batch, accelerator.device)).items():
                sums[name] = sums.get(name, 0) + value.detach().double()
        names = sorted(sums)
        totals = accelerator.reduce(torch.stack([sums[n] for n in names] + [items]), "sum").tolist()
        metrics = {f"eval_{name}": total / max(totals[-1], 1.0) for name, total in zip(names, totals[:-1], strict=True)}
        # probe_set is a string: metrics.jsonl and the model card keep it, TensorBoard skips it.
        metrics["probe_set"] = self.probe_set
        metrics.update(self.probe.metrics(accelerator.unwrap_model(model).backbone, accelerator))
        metrics.update(self.random_backbone_metrics)
        return metrics

    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        """The backbone alone, as a stock transformers model; heads and discriminators stay in checkpoints."""
        weights = {k[len(BACKBONE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
        model.backbone.model.save_pretrained(output_dir, state_dict=weights)
        self.exported_processor().save_pretrained(output_dir)

    def card_details(self) -> CardDetails:
        config = self.backbone_config
        architecture = (
            f"{config.model_type} backbone, {self.num_parameters / 1e6:.2f}M parameters, "
            f"trained on {self.config.image_size}x{self.config.image_size} images by the {self.name} {self.family}"
        )
        usage = (
            "from transformers import AutoImageProcessor, AutoModel\n\n"
            'processor = AutoImageProcessor.from_pretrained("PATH_OR_HUB_ID")\n'
            'backbone = AutoModel.from_pretrained("PATH_OR_HUB_ID")\n'
            'features = backbone(**processor(images, return_tensors="pt"))'
        )
        return CardDetails(
            title=f"{config.model_type} backbone pretrained by {self.name} with fmkit",
            pipeline_tag="image-feature-extraction",
            tags=["self-supervised", self.family.split()[0], config.model_type],
            architecture=architecture,
            data=self.data_description,
            training={self.family: self.pipeline_note or self.name},
            usage=usage,
        )
