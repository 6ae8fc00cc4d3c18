"""Resumable, rank-aware batching for map-style data.

The loop counts global micro-batches. Global micro-batch g is a pure function of (seed, g): its samples
come from the epoch-e permutation, and rank r takes its r-th slice. So a run resumed at step N starts at
g = N x accumulation without replaying anything, and the data order does not depend on timing, worker
count or how many batches were prefetched before a crash.

Each sample also gets its position in the global stream (g x global batch + offset). Per-sample
randomness (masking, augmentation) is seeded by that position, so it is the same whether a global
batch is split over 1 or 8 processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from fmkit.errors import DataError

# Builds one micro-batch from sample indices and their positions in the global stream (seeds for
# per-sample randomness such as masking).
MakeBatch = Callable[[np.ndarray, np.ndarray], dict]
TRAIN_STREAM, EVAL_STREAM = 0, 1


def sample_seeds(seed: int, stream: int, positions: np.ndarray) -> list[int]:
    """One seed per (run, train/eval, position in the data stream): randomness does not depend on what ran before."""
    return [int(np.random.SeedSequence([seed, stream, int(p)]).generate_state(1)[0]) for p in positions]


@dataclass(frozen=True)
class Sharding:
    rank: int = 0
    world: int = 1


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class GlobalBatchSampler:
    """Yields (indices, positions) for this rank's slice of every global micro-batch from `start` on."""

    def __init__(self, num_samples: int, batch_size: int, sharding: Sharding, seed: int, start: int = 0):
        global_batch = batch_size * sharding.world
        self.batches_per_epoch = num_samples // global_batch
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the training split has {num_samples} samples, fewer than one global micro-batch of {global_batch} "
                f"({batch_size} per process x {sharding.world} processes): add data or lower per_device_batch_size"
            )
        self.num_samples, self.batch_size, self.sharding = num_samples, batch_size, sharding
        self.seed, self.start = seed, start

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, permutation = -1, None
        number = self.start
        while True:
            batch_epoch, within = divmod(number, self.batches_per_epoch)
            if batch_epoch != epoch:
                epoch, permutation = batch_epoch, epoch_permutation(self.num_samples, self.seed, batch_epoch)
            offset = self.sharding.rank * self.batch_size
            first = within * self.sharding.world * self.batch_size + offset
            position = number * self.sharding.world * self.batch_size + offset
            yield permutation[first : first + self.batch_size], np.arange(position, position + self.batch_size)
            number += 1


class _BatchesFromSampler(IterableDataset):
    """Runs `make_batch` inside data-loader workers; worker k of n takes every n-th batch, in order."""

    def __init__(self, sampler: GlobalBatchSampler, make_batch: MakeBatch):
        self.sampler, self.make_batch = sampler, make_batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for count, (indices, positions) in enumerate(self.sampler):
            if count % workers == worker:
                yield self.make_batch(indices, positions)


def train_loader(
    num_samples: int,
    make_batch: MakeBatch,
    batch_size: int,
    sharding: Sharding,
    seed: int,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[dict]:
    """An endless iterator over this rank's micro-batches, beginning at global micro-batch `start`."""
    sampler = GlobalBatchSampler(num_samples, batch_size, sharding, seed, start)
    return _endless_loader(_BatchesFromSampler(sampler, make_batch), num_workers, pin_memory)


def _endless_loader(dataset: IterableDataset, num_workers: int, pin_memory: bool) -> Iterator[dict]:
    # A private generator keeps DataLoader from drawing its base seed from the global RNG, which would
    # make a resumed run's dropout differ from an uninterrupted one.
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
    return iter(loader)


def eval_batches(num_samples: int, make_batch: MakeBatch, batch_size: int, sharding: Sharding, limit: int = 0):
    """This rank's share of the held-out split, in order, in the same number of batches on every rank.

    Equal counts matter: under FSDP or ZeRO-3 every forward is a collective, so a rank with one batch more
    would hang the others. The last `num_samples % world` samples are left out for that reason.
    """
    per_rank = num_samples // sharding.world
    first = sharding.rank * per_rank
    starts = range(0, per_rank, batch_size)
    if limit:
        starts = starts[:limit]
    for offset in starts:
        indices = np.arange(first + offset, first + min(offset + batch_size, per_rank))
        yield make_batch(indices, indices)
