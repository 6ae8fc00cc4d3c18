"""Resumable, rank-aware batching: global micro-batches, resumption, workers and evaluation shards."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from fmkit.data.loader import GlobalBatchSampler, Sharding, eval_batches, train_loader
from fmkit.errors import DataError


def take(sampler: GlobalBatchSampler, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(islice(sampler, count))


def global_batches(num_samples: int, batch: int, world: int, seed: int, count: int) -> list[tuple[list, list]]:
    """Global micro-batch g as (indices, positions), concatenated over ranks in rank order."""
    per_rank = [take(GlobalBatchSampler(num_samples, batch, Sharding(r, world), seed), count) for r in range(world)]
    return [
        (
            np.concatenate([per_rank[r][g][0] for r in range(world)]).tolist(),
            np.concatenate([per_rank[r][g][1] for r in range(world)]).tolist(),
        )
        for g in range(count)
    ]


def make_batch(indices: np.ndarray, positions: np.ndarray) -> dict:
    return {"indices": torch.tensor(indices), "positions": torch.tensor(positions)}


def test_one_epoch_over_all_ranks_covers_samples_at_most_once():
    num_samples, batch, world = 103, 4, 2
    samplers = [GlobalBatchSampler(num_samples, batch, Sharding(r, world), seed=1) for r in range(world)]
    epoch = samplers[0].batches_per_epoch
    assert epoch == num_samples // (batch * world)
    seen = np.concatenate([indices for s in samplers for indices, _ in take(s, epoch)])
    assert len(seen) == epoch * batch * world
    assert len(set(seen.tolist())) == len(seen)
    assert seen.min() >= 0 and seen.max() < num_samples


def test_global_batch_is_the_same_whatever_the_world_size():
    split = global_batches(100, batch=4, world=2, seed=3, count=30)
    whole = global_batches(100, batch=8, world=1, seed=3, count=30)
    assert split == whole
    assert split[0][1] == list(range(8)) and split[29][1] == list(range(29 * 8, 30 * 8))


@pytest.mark.parametrize("start", [0, 5, 11, 12, 13, 30])
def test_start_equals_skipping(start):
    sharding = Sharding(1, 2)
    reference = take(GlobalBatchSampler(100, 4, sharding, seed=7), start + 20)[start:]
    assert GlobalBatchSampler(100, 4, sharding, seed=7).batches_per_epoch == 12
    resumed = take(GlobalBatchSampler(100, 4, sharding, seed=7, start=start), 20)
    assert [(i.tolist(), p.tolist()) for i, p in resumed] == [(i.tolist(), p.tolist()) for i, p in reference]


def epoch_orders(seed: int, epochs: int = 3) -> list[list[int]]:
    sampler = GlobalBatchSampler(64, 8, Sharding(), seed)
    batches = take(sampler, epochs * sampler.batches_per_epoch)
    return [np.concatenate([i for i, _ in batches[e * 8 : (e + 1) * 8]]).tolist() for e in range(epochs)]


def test_epochs_reshuffle_and_seeds_reproduce():
    orders = epoch_orders(seed=0)
    assert all(sorted(order) == list(range(64)) for order in orders)
    assert orders[0] != orders[1] and orders[1] != orders[2]
    assert orders == epoch_orders(seed=0)
    assert orders[0] != epoch_orders(seed=1)[0]


def test_dataset_smaller_than_a_global_batch_is_an_error():
    with pytest.raises(DataError, match="15 samples.*16"):
        GlobalBatchSampler(15, 8, Sharding(0, 2), seed=0)
    with pytest.raises(DataError):
        train_loader(15, make_batch, 8, Sharding(1, 2), seed=0)
    assert GlobalBatchSampler(16, 8, Sharding(0, 2), seed=0).batches_per_epoch == 1


def test_workers_do_not_change_batches_or_order():
    def batches(workers: int, start: int) -> list[tuple[list, list]]:
        loader = train_loader(50, make_batch, 4, Sharding(1, 2), seed=5, start=start, num_workers=workers)
        return [(b["indices"].tolist(), b["positions"].tolist()) for b in islice(loader, 15)]

    in_process = batches(0, start=3)
    assert in_process == batches(2, start=3)
    expected = take(GlobalBatchSampler(50, 4, Sharding(1, 2), seed=5, start=3), 15)
    assert in_process == [(i.tolist(), p.tolist()) for i, p in expected]


@pytest.mark.parametrize("num_samples, world, batch", [(23, 2, 4), (24, 3, 5), (7, 1, 3), (10, 4, 8)])
def test_eval_batches_equal_counts_and_cover_the_split(num_samples, world, batch):
    per_rank = [list(eval_batches(num_samples, make_batch, batch, Sharding(r, world))) for r in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1
    indices = [i for batches in per_rank for b in batches for i in b["indices"].tolist()]
    assert len(indices) == len(set(indices)) == (num_samples // world) * world
    assert all(0 <= i < num_samples for i in indices)
    assert all(len(b["indices"]) <= batch for batches in per_rank for b in batches)


def test_eval_batches_limit():
    per_rank = [list(eval_batches(40, make_batch, 4, Sharding(r, 2), limit=3)) for r in range(2)]
    assert [len(batches) for batches in per_rank] == [3, 3]
    assert per_rank[0][0]["indices"].tolist() != per_rank[1][0]["indices"].tolist()
