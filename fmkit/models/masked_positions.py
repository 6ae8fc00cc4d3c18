"""Run a masked-LM head only at the positions that are predicted.

The vocabulary projection costs 2·d·V FLOPs per position, more than the whole encoder for small models
with large vocabularies, yet only ~15% of positions carry a label. A forward hook on the base model
keeps the hidden states of those positions alone, so `*ForMaskedLM.forward` feeds its head an (M, d)
tensor and returns (M, V) logits. It works for every HF masked-LM whose head is position-wise and reads
`base_model(...)[0]` (BERT, RoBERTa, DistilBERT, ModernBERT, ...), and the model still saves and loads
as the unmodified architecture.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class MaskedPositionsOnly:
    def __init__(self, model: nn.Module):
        self.positions: torch.Tensor | None = None
        model.base_model.register_forward_hook(self._keep_selected)

    @contextmanager
    def selecting(self, positions: torch.Tensor):
        """Within this block the model's logits are those of `positions` (a boolean mask) only."""
        self.positions = positions
        try:
            yield
        finally:
            self.positions = None

    def _keep_selected(self, module, args, output):
        if self.positions is None:
            return output
        output.last_hidden_state = output.last_hidden_state[self.positions]
        return output
