"""Fixed-length blocks cut from a flat token stream: no padding, so every position is a real token."""

from __future__ import annotations

import numpy as np
import torch


class PackedBlocks:
    """Block i is tokens[i*T:(i+1)*T]; the tail shorter than one block is dropped."""

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens, self.block_size = tokens, block_size
        self.offsets = np.arange(block_size)

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def get(self, indices: np.ndarray) -> torch.Tensor:
        rows = np.asarray(indices)[:, None] * self.block_size + self.offsets
        return torch.from_numpy(self.tokens[rows].astype(np.int64))
