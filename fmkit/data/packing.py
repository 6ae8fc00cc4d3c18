"""Fixed-length blocks cut from flat token streams: no padding, so every position is a real token.

Documents are joined by their end-of-text token. A block may start mid-document and span several; with
document-aware packing the position ids restart after every end-of-text token, which transformers turns
into a block-diagonal causal mask (no token attends across a document boundary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class PackedBlocks:
    """Block i is `block_size + overlap` consecutive tokens starting at i·block_size of one shard.

    A causal LM reads one token past its block (overlap=1) so every position has a next-token target and
    consecutive blocks share that token. Blocks never straddle shards; each shard's short tail is dropped.
    """

    def __init__(self, shards: np.ndarray | Sequence[np.ndarray], block_size: int, overlap: int = 0):
        self.shards = [shards] if isinstance(shards, np.ndarray) else list(shards)
        self.block_size, self.overlap = block_size, overlap
        counts = [max(len(tokens) - overlap, 0) // block_size for tokens in self.shards]
        self.first_block = np.cumsum([0, *counts])
        self.offsets = np.arange(block_size + overlap)

    def __len__(self) -> int:
        return int(self.first_block[-1])

    def get(self, indices: np.ndarray) -> torch.Tensor:
        indices = np.asarray(indices)
        shard_of = np.searchsorted(self.first_block, indices, side="right") - 1
        rows = np.empty((len(indices), len(self.offsets)), dtype=np.int64)
        for shard in np.unique(shard_of):
            here = shard_of == shard
            starts = (indices[here] - self.first_block[shard]) * self.block_size
            rows[here] = self.shards[shard][starts[:, None] + self.offsets]
        return torch.from_numpy(rows)


class EveryKthBlock:
    """The held-out (every `stride`-th block) or the training (all others) part of `blocks`, without copies."""

    def __init__(self, blocks: PackedBlocks, stride: int, held_out: bool):
        self.blocks, self.stride, self.held_out = blocks, stride, held_out

    def __len__(self) -> int:
        held_out = len(self.blocks) // self.stride
        return held_out if self.held_out else len(self.blocks) - held_out

    def get(self, indices: np.ndarray) -> torch.Tensor:
        indices = np.asarray(indices)
        if self.held_out:
            return self.blocks.get(indices * self.stride + self.stride - 1)
        groups, within = divmod(indices, self.stride - 1)
        return self.blocks.get(groups * self.stride + within)


def document_position_ids(input_ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """Positions that restart at 0 after every `end_id`, so each document starts at position 0."""
    length = input_ids.shape[-1]
    index = torch.arange(length).expand_as(input_ids)
    starts_document = torch.zeros_like(input_ids, dtype=torch.bool)
    starts_document[..., 1:] = input_ids[..., :-1] == end_id
    last_start = torch.where(starts_document, index, 0).cummax(dim=-1).values
    return index - last_start
