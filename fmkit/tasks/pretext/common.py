"""What every vision pretext task shares: images, the backbone, evaluation by linear probe and kNN, export.

A task says how it alters a batch of images (`make_inputs`, run in data-loader workers with one seeded
generator per sample), what its model predicts and what the loss is. Everything else lives here once:

* images are decoded once into a cached array; training takes seeded random crops, evaluation centre crops;
* a slice of the training images is held out for the task's own metrics (pretext accuracy, PSNR);
* every evaluation fits a linear probe, a kNN classifier and few-shot linear probes on frozen backbone features
  of a labelled split, next to the same numbers for a randomly initialised backbone of the same architecture,
  and names the probe set, so numbers measured on different sets are never compared by mistake;
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
from fmkit.data.named_images import default_probe_sources, default_train_sources
from fmkit.errors import ConfigError, DataError
from fmkit.eval.probe import KNN_K, few_shot_accuracy, knn_accuracy, linear_probe_accuracy
from fmkit.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    FeaturePooling,
    build_backbone,
    image_processor,
    random_copy,
)
from fmkit.plots import write_sample_grid
from fmkit.tasks.base import MAIN_STAGE, BatchCount, CardDetails, Task

logger = logging.getLogger(__name__)

SAMPLE_IMAGES = 4
"""Held-out images (the first ones, the same at every evaluation) in the sample grid of image-output tasks."""


@dataclass
class PretextConfig(TrainConfig):
    """Options shared by the vision pretext tasks."""

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


class PretextModel(nn.Module):
    """Backbone plus the task's head. `forward` is the task's prediction, so DDP sees every parameter used."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone


class PretextTask(Task):
    config: PretextConfig
    pipeline_note: str = ""

    # -- what a task supplies ---------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, backbone: Backbone) -> PretextModel: ...

    @abstractmethod
    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        """Alter a batch of crops ([B, 3, H, W] in [0, 1]) into model inputs and targets (in workers)."""

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Sums over the batch's loss terms, averaged by the caller into eval_<name>; must include "loss"."""
        return {"loss": self.loss(model, batch)}

    def sample_columns(self, model: nn.Module, batch: dict) -> list[torch.Tensor] | None:
        """Input, prediction and target ([B, 3, H, W] in [0, 1]) for samples/step_<N>.png; None: no image output."""
        return None

    def count(self, batch: dict) -> BatchCount:
        samples = batch["pixel_values"].shape[0]
        return BatchCount(items=samples, samples=samples)

    def extra_models(self) -> dict[str, nn.Module]:
        """Modules trained in stages before the main one (a discriminator), in order."""
        return {}

    unusable_reason: str = ""

    def usable_images(self, images: np.ndarray) -> np.ndarray:
        """Which of the (uint8 [N, H, W, 3]) training images the task can learn from; all, unless it says why not."""
        return np.ones(len(images), dtype=bool)

    # -- shared machinery -------------------------------------------------------------------------------
    def setup(self, accelerator) -> nn.Module | dict[str, nn.Module]:
        config = self.config
        self.device = accelerator.device
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        self.train_images, self.probe_train, self.probe_test, self.data_description = self._load_images()
        order = np.random.default_rng(0).permutation(len(self.train_images.images))
        usable = self.usable_images(self.train_images.images)
        if not usable.all():
            logger.info("%s: %d of %d training images left out (%s)", self.name, (~usable).sum(), len(usable),
                        self.unusable_reason)  # fmt: skip
        order = order[usable[order]]
        if len(order) <= config.heldout_images:
            raise DataError(
                f"{self.train_images.description}: {len(order)} usable images, not more than heldout_images "
                f"{config.heldout_images}; add images or lower heldout_images"
            )
        self.heldout_index, self.train_index = np.sort(order[: config.heldout_images]), order[config.heldout_images :]
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        backbone = build_backbone(
            config.backbone_type,
            config.backbone_config,
            config.backbone_name_or_path,
            config.image_size,
            config.feature_pooling,
        )
        self.backbone_config = backbone.model.config
        self.random_backbone_metrics = self._representation_metrics(
            random_copy(backbone, config.seed).to(self.device), accelerator, baseline=True
        )
        model = self.build_model(backbone)
        self.num_parameters = sum(p.numel() for p in backbone.parameters())
        extra = self.extra_models()
        return {**extra, MAIN_STAGE: model} if extra else model

    def _load_images(self) -> tuple[ImageArray, ImageArray, ImageArray, str]:
        config = self.config
        default_train, default_test = default_probe_sources()
        probe_sources = (config.probe_train_images or default_train, config.probe_test_images or default_test)

        def load(sources, labelled: bool) -> ImageArray:
            sources = [sources] if isinstance(sources, str) else list(sources)
            return load_image_array(sources, config.stored_size, labelled=labelled, max_pixels=config.max_image_pixels)

        train_sources = config.train_images or default_train_sources()
        train = load(train_sources, False) if train_sources else embedded_images(config.stored_size).train
        probe_train, probe_test = (load(sources, True) for sources in probe_sources)
        if probe_train.class_names != probe_test.class_names:
            raise DataError(
                f"probe splits disagree on classes: {probe_train.class_names[:5]}... vs {probe_test.class_names[:5]}..."
            )
        self.probe_set = " -> ".join(_spelled(sources) for sources in probe_sources)
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
        size, stored = self.config.image_size, self.config.stored_size
        out = []
        for i, image in enumerate(images):
            if rngs is None:
                top = left = (stored - size) // 2
                flip = False
            else:
                top, left = (int(v) for v in rngs[i].integers(0, stored - size + 1, size=2))
                flip = self.config.horizontal_flip and bool(rngs[i].integers(2))
            crop = image[top : top + size, left : left + size]
            out.append(crop[:, ::-1] if flip else crop)
        return torch.from_numpy(np.ascontiguousarray(np.stack(out))).permute(0, 3, 1, 2).float().div_(255)

    def _batch(self, index: np.ndarray, stream: int, indices: np.ndarray, positions: np.ndarray) -> dict:
        rngs = [np.random.default_rng(s) for s in sample_seeds(self.config.seed, stream, positions)]
        picked = index[indices]
        order = np.argsort(picked)  # memory-mapped reads in file order
        images = np.empty((len(picked), *self.train_images.images.shape[1:]), dtype=np.uint8)
        images[order] = self.train_images.images[picked[order]]
        return self.make_inputs(self.crops(images, rngs if stream == TRAIN_STREAM else None), rngs)

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        return self.indexed_batches(
            len(self.train_index),
            lambda indices, positions: self._batch(self.train_index, TRAIN_STREAM, indices, positions),
            start,
            sharding,
        )

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        items = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        batches = eval_batches(
            len(self.heldout_index),
            lambda indices, positions: self._batch(self.heldout_index, EVAL_STREAM, indices, positions),
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
        metrics.update(self._representation_metrics(accelerator.unwrap_model(model).backbone, accelerator))
        metrics.update(self.random_backbone_metrics)
        # Every process runs the samples (a forward may be a collective); the main one writes them.
        first = np.arange(min(SAMPLE_IMAGES, len(self.heldout_index)))
        samples = send_to_device(self._batch(self.heldout_index, EVAL_STREAM, first, first), accelerator.device)
        columns = self.sample_columns(model, samples)
        if columns is not None:
            write_sample_grid(columns, accelerator, self.config.output_dir, step)
        return metrics

    def _representation_metrics(
        self, backbone: Backbone, accelerator, baseline: bool = False
    ) -> dict[str, float | str]:
        """Linear probe, kNN and few-shot accuracy on frozen features, and the probe set's name (a string, which
        metrics.jsonl and the model card keep and TensorBoard skips); every process gets the same numbers.

        The baseline runs on each process alone (a plain module); the trained backbone's features are
        computed in shards and gathered. Both use the first (n // processes) x processes images.
        """
        features = []
        for split in (self.probe_train, self.probe_test):
            per_rank = len(split.images) // self.sharding.world
            used = per_rank * self.sharding.world
            if baseline:
                feats = self._features(backbone, split.images, 0, used)
            else:
                first = self.sharding.rank * per_rank
                feats = self._features(backbone, split.images, first, first + per_rank)
                feats = accelerator.gather(feats.to(accelerator.device)).cpu()
            features.append((feats.float().numpy(), split.labels[:used]))
        (train_x, train_y), (test_x, test_y) = features
        suffix = "_random_backbone" if baseline else ""
        metrics = {} if baseline else {"probe_set": self.probe_set}
        return metrics | {
            f"linear_probe_accuracy{suffix}": linear_probe_accuracy(train_x, train_y, test_x, test_y, self.config.seed),
            f"knn_accuracy{suffix}": knn_accuracy(train_x, train_y, test_x, test_y, k=self.config.knn_k),
            f"few_shot_accuracy{suffix}": few_shot_accuracy(train_x, train_y, test_x, test_y),
        }

    @torch.no_grad()
    def _features(self, backbone: Backbone, images: np.ndarray, start: int, stop: int) -> torch.Tensor:
        was_training = backbone.training
        backbone.eval()
        out = []
        for first in range(start, stop, self.config.per_device_batch_size):
            chunk = images[first : min(first + self.config.per_device_batch_size, stop)]
            pixels = self.normalize(self.crops(chunk, None)).to(self.device)
            out.append(backbone(pixels).float().cpu())
        backbone.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, backbone.vector_dim)

    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        """The backbone alone, as a stock transformers model; heads and discriminators stay in checkpoints."""
        prefix = "backbone.model."
        weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        model.backbone.model.save_pretrained(output_dir, state_dict=weights)
        image_processor(self.config.image_size, self.config.stored_size).save_pretrained(output_dir)

    def card_details(self) -> CardDetails:
        config = self.backbone_config
        architecture = (
            f"{config.model_type} backbone, {self.num_parameters / 1e6:.2f}M parameters, "
            f"trained on {self.config.image_size}x{self.config.image_size} images by the {self.name} pretext task"
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
            tags=["self-supervised", "pretext", config.model_type],
            architecture=architecture,
            data=self.data_description,
            training={"pretext task": self.pipeline_note or self.name},
            usage=usage,
        )


def _spelled(sources: str | list[str]) -> str:
    return sources if isinstance(sources, str) else ", ".join(sources)
