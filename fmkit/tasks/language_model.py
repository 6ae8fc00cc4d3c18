"""What the text objectives share: token blocks, a transformers model, held-out metrics, export and model card.

A subclass says which tokens are special, which `AutoModelFor...` it trains, how a batch is made from
blocks, how its loss is computed and which sums its held-out metrics need; the rest is here once.
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

    @abstractmethod
    def held_out_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Summed evaluation terms of one held-out batch, always including the summed `loss` over its `items`."""

    def held_out_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics beyond loss and perplexity from the held-out sums over all processes."""
        return {}

    def setup(self, accelerator) -> nn.Module:
        config = self.config
        data = prepare_text_data(config, self.special_tokens())
        self.tokenizer, self.data_description = data.tokenizer, data.description
        model = build_language_model(config, self.tokenizer, self.auto_class)
        self.tokenizer.model_max_length = usable_positions(model.config)
        self.train_blocks, self.eval_blocks = data.blocks(config.block_size, self.block_overlap)
        self.unigram_counts = token_counts(self.train_blocks, len(self.tokenizer))
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        self.model_config = model.config
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.dense_parameters = dense_parameters(model)
        return model

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        return self.indexed_batches(
            len(self.train_blocks), lambda i, p: self.make_batch(self.train_blocks, TRAIN_STREAM, i, p), start, sharding
        )

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        """Held-out loss, perplexity and the task's metrics, each accumulated as scalars (never all logits)."""
        names, totals = None, None
        batches = eval_batches(
            len(self.eval_blocks),
            lambda i, p: self.make_batch(self.eval_blocks, EVAL_STREAM, i, p),
            self.config.per_device_batch_size,
            self.sharding,
            self.config.eval_batches,
        )
        for batch in batches:
            sums = self.held_out_sums(model, send_to_device(batch, accelerator.device))
            if totals is None:
                names, totals = list(sums), torch.zeros(len(sums), dtype=torch.float64, device=accelerator.device)
            totals += torch.stack([torch.as_tensor(sums[name], device=accelerator.device) for name in names]).double()
        sums = dict(zip(names, accelerator.reduce(totals, "sum").tolist(), strict=True))
        loss = sums["loss"] / max(sums["items"], 1.0)
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), **self.held_out_metrics(sums)}

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


UNIGRAM_SAMPLE_TOKENS = 2**21
"""Tokens counted for the unigram baselines: enough for stable frequencies of every common token."""


def token_counts(blocks: Blocks, vocab_size: int, max_tokens: int = UNIGRAM_SAMPLE_TOKENS) -> np.ndarray:
    """How often each token id occurs in (an even spread of) the training blocks, for the unigram baselines.

    At most `max_tokens` tokens are read, from blocks spaced evenly over the split, so a token-shard corpus
    of billions of tokens is sampled in well under a second instead of counted for minutes; a baseline needs
    frequencies, not a census.
    """
    block_tokens = len(blocks.get(np.array([0]))[0])
    wanted = min(len(blocks), max(1, max_tokens // block_tokens))
    indices = np.unique(np.linspace(0, len(blocks) - 1, num=wanted, dtype=np.int64))
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in np.array_split(indices, max(1, len(indices) // 1024)):
        counts += np.bincount(blocks.get(chunk).flatten().numpy(), minlength=vocab_size)[:vocab_size]
    return counts
