"""What the text objectives share: token blocks, a transformers model, held-out loss, export and model card.

A subclass says which tokens are special, which `AutoModelFor...` it trains, how a batch is made from
blocks, and how its loss is computed; the rest is here once.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from fmkit.data.loader import EVAL_STREAM, TRAIN_STREAM, Sharding, eval_batches
from fmkit.data.text import Blocks, TextDataConfig, prepare_text_data
from fmkit.data.tokenizer import SpecialTokens
from fmkit.metrics import transformer_flops_per_token
from fmkit.models.language_model import build_language_model, dense_parameters, usable_positions
from fmkit.tasks.base import Task


class LanguageModelTask(Task):
    config: TextDataConfig
    auto_class: ClassVar[type]
    """The transformers auto class the export loads with (AutoModelForMaskedLM, AutoModelForCausalLM)."""
    block_overlap: ClassVar[int] = 0
    """Tokens read past each block (1 for next-token targets), see PackedBlocks."""

    @abstractmethod
    def special_tokens(self) -> SpecialTokens:
        """Special tokens of a newly trained tokenizer."""

    @abstractmethod
    def make_batch(self, blocks: Blocks, stream: int, indices: np.ndarray, positions: np.ndarray) -> dict:
        """A micro-batch from blocks `indices`; `positions` seed per-sample randomness in data `stream`."""

    @abstractmethod
    def predicted_fraction(self) -> float:
        """Share of positions the output projection runs on, for the FLOPs count."""

    def setup(self, accelerator) -> nn.Module:
        config = self.config
        data = prepare_text_data(config, self.special_tokens())
        self.tokenizer, self.data_description = data.tokenizer, data.description
        model = build_language_model(config, self.tokenizer, self.auto_class)
        self.tokenizer.model_max_length = usable_positions(model.config)
        self.train_blocks, self.eval_blocks = data.blocks(config.block_size, self.block_overlap)
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        self.model_config = model.config
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.dense_parameters = dense_parameters(model)
        return model

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        return self.indexed_batches(
            len(self.train_blocks), lambda i, p: self.make_batch(self.train_blocks, TRAIN_STREAM, i, p), start, sharding
        )

    def held_out_loss(self, model: nn.Module, accelerator) -> dict[str, float]:
        """Loss over the held-out blocks, accumulated as two scalars (never all logits)."""
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        batches = eval_batches(
            len(self.eval_blocks),
            lambda i, p: self.make_batch(self.eval_blocks, EVAL_STREAM, i, p),
            self.config.per_device_batch_size,
            self.sharding,
            self.config.eval_batches,
        )
        for batch in batches:
            totals[1] += self.count(batch).items
            totals[0] += self.loss(model, send_to_device(batch, accelerator.device)).double()
        loss_sum, items = accelerator.reduce(totals, "sum").tolist()
        loss = loss_sum / max(items, 1.0)
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}

    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        model.save_pretrained(output_dir, state_dict=state_dict)
        self.tokenizer.save_pretrained(output_dir)

    def flops_per_token(self) -> float:
        config = self.model_config
        head = 6.0 * self.predicted_fraction() * config.hidden_size * config.vocab_size
        return transformer_flops_per_token(
            self.dense_parameters, config.num_hidden_layers, config.hidden_size, self.config.block_size, head
        )

    def architecture(self) -> str:
        config = self.model_config
        return (
            f"{config.architectures[0] if config.architectures else config.model_type}: "
            f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
            f"{config.num_attention_heads} heads, vocabulary {config.vocab_size}, "
            f"{self.num_parameters / 1e6:.1f}M parameters, trained on blocks of {self.config.block_size} tokens"
        )
