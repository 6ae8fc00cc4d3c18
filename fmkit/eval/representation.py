"""How good a backbone's frozen features are: linear probe, kNN and few-shot accuracy on a labelled image set.

One piece for every family that trains a vision backbone (pretext, contrastive), so their numbers are measured
the same way and compare. "Frozen" is meant strictly: the backbone runs in eval mode (BatchNorm uses its
running statistics) under no_grad, and is put back in the mode it was in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fmkit.data.image_array import ImageArray, load_image_array
from fmkit.data.loader import Sharding
from fmkit.data.named_images import default_probe_sources
from fmkit.errors import DataError
from fmkit.eval.probe import few_shot_accuracy, knn_accuracy, linear_probe_accuracy
from fmkit.models.backbone import Backbone, processor_geometry
from fmkit.models.luminance_processor import LuminanceImageProcessor, cie_lightness
from fmkit.vision.crops import square_crops


@dataclass
class RepresentationProbe:
    train: ImageArray
    test: ImageArray
    probe_set: str
    """The probe splits' name as given (e.g. fashion-mnist:train:10000 -> fashion-mnist:test:2000), logged with
    every number so results on different sets are never compared by mistake."""
    pixels: Callable[[np.ndarray], torch.Tensor]
    """uint8 [B, H, W, 3] images -> the backbone's normalised input (centre crops)."""
    batch_size: int
    knn_k: int
    seed: int
    sharding: Sharding
    device: torch.device

    def metrics(self, backbone: Backbone, accelerator, suffix: str = "", shard: bool = True) -> dict[str, float]:
        """linear_probe_accuracy<suffix>, knn_accuracy<suffix> and few_shot_accuracy<suffix>; the same on every
        process.

        With `shard`, each process embeds its share of the images and the features are gathered (the trained
        backbone, a collective); without, each process embeds all of them alone (a plain module, such as the
        random-backbone baseline). Both use the first (n // processes) x processes images of each split.
        """
        features = []
        for split in (self.train, self.test):
            per_rank = len(split.images) // self.sharding.world
            used = per_rank * self.sharding.world
            if shard:
                first = self.sharding.rank * per_rank
                feats = self.features(backbone, split.images, first, first + per_rank)
                feats = accelerator.gather(feats.to(accelerator.device)).cpu()
            else:
                feats = self.features(backbone, split.images, 0, used)
            features.append((feats.float().numpy(), split.labels[:used]))
        (train_x, train_y), (test_x, test_y) = features
        return {
            f"linear_probe_accuracy{suffix}": linear_probe_accuracy(train_x, train_y, test_x, test_y, self.seed),
            f"knn_accuracy{suffix}": knn_accuracy(train_x, train_y, test_x, test_y, k=self.knn_k),
            f"few_shot_accuracy{suffix}": few_shot_accuracy(train_x, train_y, test_x, test_y),
        }

    @torch.no_grad()
    def features(self, backbone: Backbone, images: np.ndarray, start: int, stop: int) -> torch.Tensor:
        was_training = backbone.training
        backbone.eval()
        out = []
        for first in range(start, stop, self.batch_size):
            pixels = self.pixels(images[first : min(first + self.batch_size, stop)]).to(self.device)
            out.append(backbone(pixels).float().cpu())
        backbone.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, backbone.vector_dim)


def feeds_lightness(processor) -> bool:
    """Whether an image processor is fmkit's LuminanceImageProcessor, so its model takes CIE lightness alone. By
    name: loaded with trust_remote_code, the class comes from the folder's copy, not from fmkit."""
    return type(processor).__name__ == LuminanceImageProcessor.__name__


@dataclass(frozen=True)
class ProbePixels:
    """uint8 [B, S, S, 3] stored images -> [B, C, size, size] normalised centre crops: what the probes feed a
    backbone, and what the image processor a backbone is exported with does to a new image (fine-tuning's
    training batches take seeded random crops instead)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    lightness: bool = False
    """Feed the CIE lightness alone, L / 100 (one channel: CMC's L encoder), instead of RGB."""

    @classmethod
    def of(cls, processor) -> ProbePixels:
        """What an fmkit export's image processor does to an image stored at the size it resizes to."""
        size, _ = processor_geometry(processor)
        return cls(size, processor.image_mean, processor.image_std, feeds_lightness(processor))

    def __call__(
        self, images: np.ndarray, rngs: list[np.random.Generator] | None = None, flip: bool = False
    ) -> torch.Tensor:
        crops = square_crops(images, self.size, rngs, flip)
        if self.lightness:
            crops = cie_lightness(crops) / 100
        mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in (self.mean, self.std))
        return (crops - mean) / std


@dataclass
class ProbeSplits:
    train: ImageArray
    test: ImageArray
    name: str
    """The sources as given, e.g. "fashion-mnist:train:10000 -> fashion-mnist:test:2000"."""


def load_probe_splits(
    train_sources: str | list[str] | None, test_sources: str | list[str] | None, stored_size: int, max_pixels: int
) -> ProbeSplits:
    """The labelled probe images, decoded at `stored_size`: the ones given, else fmkit's default probe set."""
    default_train, default_test = default_probe_sources()
    sources = (train_sources or default_train, test_sources or default_test)
    train, test = (load_image_array(split, stored_size, labelled=True, max_pixels=max_pixels) for split in sources)
    if train.class_names != test.class_names:
        raise DataError(f"probe splits disagree on classes: {train.class_names[:5]}... vs {test.class_names[:5]}...")
    name = " -> ".join(split if isinstance(split, str) else ", ".join(split) for split in sources)
    return ProbeSplits(train, test, name)
