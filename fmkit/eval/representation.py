"""How good a backbone's frozen features are: linear probe, kNN and few-shot accuracy on a labelled image set.

One piece for every family that trains a vision backbone (pretext, contrastive), so their numbers are measured
the same way and compare. "Frozen" is meant strictly: the backbone runs in eval mode (BatchNorm uses its
running statistics) under no_grad, and is put back in the mode it was in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fmkit.data.image_array import ImageArray
from fmkit.data.loader import Sharding
from fmkit.eval.probe import few_shot_accuracy, knn_accuracy, linear_probe_accuracy
from fmkit.models.backbone import Backbone


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
