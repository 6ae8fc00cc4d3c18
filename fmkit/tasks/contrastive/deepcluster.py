"""DeepCluster (Caron et al. 2018): k-means on the network's own features gives the pseudo-labels it learns to classify.

Before step 0 and every `--recluster_every` steps, the projections of `--cluster_images` training images (centre
crops, eval mode) are PCA-whitened to `--pca_dim`, L2-normalised and clustered by k-means into `--num_clusters`
groups, as the paper does; the assignments are the pseudo-labels and the classifier head is re-initialised. Until
the next clustering, training draws from the clustered images uniformly over the non-empty pseudo-classes (the
paper's sampler), one seeded draw per clustering; the number of empty clusters is logged (and reported with every
evaluation). Held-out images are labelled by their nearest centroid.

k-means is scikit-learn's: already a dependency, and at these sizes (thousands of points in tens of dimensions) it
takes about a second on one core, where faiss-cpu would be another native wheel for no gain. Every process
embeds every clustered image with the same weights, clusters with the same seed, and then takes rank 0's result
(broadcast), so the pseudo-labels are identical even where floating point is not.

The clustering happens where the loop draws the first micro-batch of a clustering period (`train_batches`), after
the previous step's update, so a resumed run re-clusters from the same weights. Re-initialising the head writes
the trained module's parameters in place, which the optimizer's own copies under DeepSpeed and FSDP would undo:
those are refused. The optimizer's moments of the head carry over (the task has no access to the optimizer).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fmkit.config import NON_NEGATIVE, POSITIVE, ranged
from fmkit.data.loader import TRAIN_STREAM, Sharding
from fmkit.errors import ConfigError
from fmkit.losses.gather import world_size
from fmkit.models.backbone import Backbone
from fmkit.models.heads import mlp_head
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount, Supports
from fmkit.tasks.contrastive.common import ContrastiveConfig, ContrastiveTask, OnlineNetwork
from fmkit.vision.views import VIEW_PRESETS

logger = logging.getLogger(__name__)


@dataclass
class DeepClusterConfig(ContrastiveConfig):
    """DeepCluster: classify k-means pseudo-labels of the network's own features, re-clustered periodically."""

    views_needed: ClassVar[int] = 1

    num_clusters: int = ranged(100, POSITIVE)
    """k of k-means (the paper over-segments: 10,000 clusters for ImageNet's 1,000 classes)."""
    cluster_images: int = ranged(10_000, POSITIVE)
    """How many training images are clustered (the same sample every time); training draws only from them."""
    recluster_every: int = ranged(300, POSITIVE)
    """Optimizer steps between clusterings (the paper: one epoch)."""
    pca_dim: int = ranged(32, NON_NEGATIVE)
    """PCA-whiten the projections to this many dimensions before k-means (the paper: 256 of 4,096); 0: no PCA."""

    def validate(self) -> None:
        super().validate()
        if self.num_clusters > self.cluster_images:
            raise ConfigError(
                f"num_clusters {self.num_clusters} is more than cluster_images {self.cluster_images}: k-means needs "
                "at least one image per cluster; lower num_clusters or raise cluster_images"
            )
        if self.pca_dim > min(self.projection_dim, self.cluster_images):
            raise ConfigError(
                f"pca_dim {self.pca_dim} is more than projection_dim {self.projection_dim} or cluster_images "
                f"{self.cluster_images}: PCA keeps at most that many dimensions; lower pca_dim (0: no PCA)"
            )


@dataclass
class Clustering:
    """One k-means result, in the whitened and normalised space the centroids live in."""

    mean: torch.Tensor
    """[d] the projections' mean."""
    whitening: torch.Tensor
    """[d, pca_dim] PCA components scaled to unit variance (the identity without PCA)."""
    centroids: torch.Tensor
    """[k, pca_dim]."""
    assignments: torch.Tensor
    """[cluster_images] each clustered image's pseudo-label."""

    @property
    def empty(self) -> int:
        return len(self.centroids) - len(torch.unique(self.assignments))

    def labels(self, features: torch.Tensor) -> torch.Tensor:
        """The nearest centroid of each projection (held-out images), as k-means assigns."""
        points = F.normalize((features - self.mean) @ self.whitening, dim=1)
        return torch.cdist(points, self.centroids).argmin(dim=1)


def cluster_features(features: torch.Tensor, num_clusters: int, pca_dim: int, seed: int) -> Clustering:
    """The paper's pipeline: PCA whitening, L2 normalisation, k-means (one run, seeded)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    points = features.double().numpy()
    mean = points.mean(axis=0)
    if pca_dim:
        pca = PCA(pca_dim, whiten=True, random_state=seed).fit(points)
        whitening = pca.components_.T / np.sqrt(pca.explained_variance_)
    else:
        whitening = np.eye(points.shape[1])
    projected = (points - mean) @ whitening
    projected /= np.linalg.norm(projected, axis=1, keepdims=True).clip(min=1e-12)
    kmeans = KMeans(num_clusters, n_init=1, random_state=seed).fit(projected)
    return Clustering(*(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (mean, whitening)),
                      torch.from_numpy(kmeans.cluster_centers_.astype(np.float32)),
                      torch.from_numpy(kmeans.labels_.astype(np.int64)))  # fmt: skip


def balanced_draw(assignments: np.ndarray, count: int, seed: int, period: int) -> np.ndarray:
    """`count` positions into `assignments`, ceil(count / classes) from every non-empty pseudo-class (with
    replacement where a class is smaller), shuffled and cut to `count`: uniform over pseudo-classes."""
    rng = np.random.default_rng([seed, period])
    classes = np.unique(assignments)
    per_class = math.ceil(count / len(classes))
    draws = [rng.choice(members, per_class, replace=len(members) < per_class)
             for members in (np.flatnonzero(assignments == label) for label in classes)]  # fmt: skip
    drawn = np.concatenate(draws)
    rng.shuffle(drawn)
    return drawn[:count]


def reinitialise_head(head: nn.Linear, seed: int, period: int) -> None:
    """nn.Linear's own initialisation, drawn from (seed, period): the same on every process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + period)
    bound = 1 / math.sqrt(head.in_features)
    with torch.no_grad():
        for parameter in (head.weight, head.bias):
            fresh = torch.empty(parameter.shape).uniform_(-bound, bound, generator=generator)
            parameter.copy_(fresh.to(parameter.device, parameter.dtype))


def from_rank_zero(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


@register_task
class DeepCluster(ContrastiveTask):
    name = "deepcluster"
    config_class = DeepClusterConfig
    config: DeepClusterConfig
    pipeline_note = "DeepCluster: classify k-means pseudo-labels of the network's own features, re-clustered"

    def build_model(self, backbone: Backbone) -> OnlineNetwork:
        config = self.config
        projector = mlp_head(backbone.vector_dim, config.projection_hidden, config.projection_dim)
        return OnlineNetwork(backbone, projector, nn.Linear(config.projection_dim, config.num_clusters))

    def setup(self, accelerator) -> nn.Module:
        model = super().setup(accelerator)
        # Sorted, so the clustered images are read in file order.
        self.cluster_index = np.sort(self.first_training_images(self.config.cluster_images, "cluster_images"))
        self.clustering: Clustering | None = None
        self.period = -1
        """The clustering period (step // recluster_every) the current clustering was made for."""
        return model

    def make_batch(self, images: np.ndarray, rngs: list[np.random.Generator], training: bool) -> dict:
        return self.stacked_views(images, rngs, VIEW_PRESETS[self.config.views][:1])

    def count(self, batch: dict) -> BatchCount:
        images = batch["views"].shape[0]
        return BatchCount(items=images, samples=images)

    # -- clustering ---------------------------------------------------------------------------------------------
    def recluster(self, period: int) -> None:
        config = self.config
        clustering = cluster_features(self.projections(self.cluster_index), config.num_clusters, config.pca_dim,
                                      config.seed + period)  # fmt: skip
        self.clustering = Clustering(*(from_rank_zero(t.to(self.device)).cpu() for t in (
            clustering.mean, clustering.whitening, clustering.centroids, clustering.assignments)))  # fmt: skip
        self.period = period
        reinitialise_head(self.model.predictor, config.seed, period)
        logger.info("deepcluster: step %d: %d images in %d clusters, %d empty", period * config.recluster_every,
                    len(self.cluster_index), config.num_clusters, self.clustering.empty)  # fmt: skip

    # -- data ---------------------------------------------------------------------------------------------------
    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        """Each clustering period's micro-batches from a fresh loader over its balanced draw; the period's first
        micro-batch waits for its clustering (collective: every process draws at the same step)."""
        per_period = self.config.recluster_every * self.config.gradient_accumulation_steps
        first, within = divmod(start, per_period)
        for period in itertools.count(first):
            if self.period != period:
                self.recluster(period)
            yield from itertools.islice(self.period_batches(period, within, sharding), per_period - within)
            within = 0

    def period_batches(self, period: int, start: int, sharding: Sharding) -> Iterator[dict]:
        """The period's balanced draw, batched from its micro-batch `start` on; images seeded by their position in
        the run (periods follow each other in the stream), labelled with their pseudo-class."""
        config = self.config
        per_period = config.recluster_every * config.gradient_accumulation_steps
        assignments = self.clustering.assignments.numpy()
        drawn = balanced_draw(assignments, per_period * config.per_device_batch_size * sharding.world, config.seed,
                              period)  # fmt: skip

        def make_batch(indices: np.ndarray, positions: np.ndarray) -> dict:
            picked = drawn[indices]
            batch = self.batch(self.cluster_index, TRAIN_STREAM, picked, positions + period * len(drawn))
            return {**batch, "labels": torch.from_numpy(assignments[picked])}

        return self.indexed_batches(len(drawn), make_batch, start, sharding)

    # -- loss, evaluation, state ----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        return F.cross_entropy(model(batch["views"][:, 0]).float(), batch["labels"], reduction="sum")

    def heldout_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-entropy against each held-out image's nearest centroid (before the first clustering: none)."""
        pixels = batch["views"][:, 0]
        if self.clustering is None:
            return {"loss": torch.zeros((), device=pixels.device)}
        unwrapped = self.model
        labels = self.clustering.labels(unwrapped.project(pixels).float().cpu()).to(pixels.device)
        return {"loss": F.cross_entropy(model(pixels).float(), labels, reduction="sum")}

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        metrics = super().evaluate(model, accelerator, step)
        if self.clustering is not None:
            metrics["empty_clusters"] = float(self.clustering.empty)
        return metrics

    def state_dict(self) -> dict:
        if self.clustering is None:
            return {"period": self.period}
        c = self.clustering
        return {"period": self.period, "mean": c.mean, "whitening": c.whitening, "centroids": c.centroids,
                "assignments": c.assignments}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.period = int(state["period"])
        if "assignments" in state:
            self.clustering = Clustering(state["mean"], state["whitening"], state["centroids"], state["assignments"])

    def supports(self) -> Supports:
        return Supports(deepspeed=False, deepspeed_zero3=False, fsdp=False,
                        why="it re-initialises its classifier head in place after each clustering, which the "
                            "optimizer's own copy of the parameters would undo; use DDP")  # fmt: skip
