"""Masked language modeling (BERT / RoBERTa / ModernBERT style) on packed blocks of text."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM

from fmkit.data.loader import EVAL_STREAM, TRAIN_STREAM, Sharding, eval_batches, sample_seeds
from fmkit.data.masking import IGNORE_INDEX, Masker
from fmkit.data.packing import PackedBlocks
from fmkit.data.text import TextDataConfig, prepare_text_data
from fmkit.data.tokenizer import BERT_SPECIALS, ROBERTA_SPECIALS, round_up
from fmkit.errors import ConfigError
from fmkit.hub import ModelCard
from fmkit.metrics import transformer_flops_per_token
from fmkit.models.masked_positions import MaskedPositionsOnly
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount, Task

logger = logging.getLogger(__name__)

# RoBERTa-family position ids start after the padding index, so two embedding rows are not positions.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


@dataclass
class MLMConfig(TextDataConfig):
    """Masked language modeling: predict masked tokens from both sides."""

    mlm_probability: float = 0.15
    """Fraction of tokens to predict; of those 80% become [MASK], 10% a random token, 10% stay."""
    whole_word_masking: bool = False
    """Mask all sub-tokens of a word together."""


@register_task
class MaskedLM(Task):
    name = "mlm"
    config_class = MLMConfig
    config: MLMConfig

    def setup(self, accelerator) -> nn.Module:
        config = self.config
        specials = ROBERTA_SPECIALS if config.tokenizer_type == "bpe" else BERT_SPECIALS
        data = prepare_text_data(config, specials)
        self.tokenizer, self.data_description = data.tokenizer, data.description
        model = build_masked_lm(config, self.tokenizer)
        self.tokenizer.model_max_length = usable_positions(model.config)
        self.train_blocks = PackedBlocks(data.train.tokens, config.block_size)
        self.eval_blocks = PackedBlocks(data.eval.tokens, config.block_size)
        self.masker = Masker(self.tokenizer, config.mlm_probability, config.whole_word_masking)
        self.head = MaskedPositionsOnly(model)
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        self.model_config = model.config
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.embedding_parameters = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
        return model

    def _batch(self, blocks: PackedBlocks, stream: int, indices: np.ndarray, positions: np.ndarray) -> dict:
        seeds = sample_seeds(self.config.seed, stream, positions)
        input_ids, labels = self.masker(blocks.get(indices), seeds)
        return {"input_ids": input_ids, "labels": labels}

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        return self.indexed_batches(
            len(self.train_blocks),
            lambda indices, positions: self._batch(self.train_blocks, TRAIN_STREAM, indices, positions),
            start,
            sharding,
        )

    def count(self, batch: dict) -> BatchCount:
        input_ids = batch["input_ids"]
        items = int((batch["labels"] != IGNORE_INDEX).sum())
        return BatchCount(items=items, samples=input_ids.shape[0], tokens=input_ids.numel())

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        labels = batch["labels"]
        predicted = labels != IGNORE_INDEX
        with self.head.selecting(predicted):
            logits = model(input_ids=batch["input_ids"]).logits
        return F.cross_entropy(logits.float(), labels[predicted], reduction="sum")

    def evaluate(self, model: nn.Module, accelerator) -> dict[str, float]:
        """Loss over the held-out blocks with fixed masks, accumulated as two scalars (never all logits)."""
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        batches = eval_batches(
            len(self.eval_blocks),
            lambda indices, positions: self._batch(self.eval_blocks, EVAL_STREAM, indices, positions),
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
        dense = self.num_parameters - self.embedding_parameters
        # The tied decoder (d x V) is an embedding table but a matmul at the predicted positions.
        head = 6.0 * self.config.mlm_probability * config.hidden_size * config.vocab_size
        return transformer_flops_per_token(
            dense, config.num_hidden_layers, config.hidden_size, self.config.block_size, head
        )

    def model_card(self, training: dict[str, object], metrics: dict[str, float]) -> ModelCard:
        config = self.model_config
        architecture = (
            f"{config.architectures[0] if config.architectures else config.model_type}: "
            f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
            f"{config.num_attention_heads} heads, vocabulary {config.vocab_size}, "
            f"{self.num_parameters / 1e6:.1f}M parameters, trained on blocks of {self.config.block_size} tokens"
        )
        usage = (
            "from transformers import pipeline\n\n"
            'fill = pipeline("fill-mask", model="PATH_OR_HUB_ID")\n'
            f'print(fill("The quick brown {self.tokenizer.mask_token} jumps over the lazy dog."))'
        )
        return ModelCard(
            title=f"{config.model_type} masked language model trained with fmkit",
            library_name="transformers",
            pipeline_tag="fill-mask",
            tags=["fmkit", "masked-lm", config.model_type],
            architecture=architecture,
            data=self.data_description,
            training={**training, "masking": f"{self.config.mlm_probability:.0%} of tokens, 80/10/10"},
            metrics=metrics,
            usage=usage,
        )


def build_masked_lm(config: MLMConfig, tokenizer) -> nn.Module:
    """A masked LM from a checkpoint or from a config; refuses vocabularies or positions that cannot fit."""
    if config.model_name_or_path:
        if config.model_config:
            # Typically the preset's architecture; a pretrained model brings its own.
            logger.warning("model_config is ignored: continuing from %s with its own config", config.model_name_or_path)
        try:
            model = AutoModelForMaskedLM.from_pretrained(config.model_name_or_path, attn_implementation="sdpa")
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"model {config.model_name_or_path}: cannot load it ({reason})") from None
    else:
        overrides = dict(config.model_config)
        overrides.setdefault("vocab_size", round_up(len(tokenizer)))
        overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
        try:
            model_config = AutoConfig.for_model(config.model_type, **overrides)
        except (ValueError, KeyError) as error:
            raise ConfigError(f"model_type {config.model_type!r}: {str(error).splitlines()[0]}") from None
        model = AutoModelForMaskedLM.from_config(model_config, attn_implementation="sdpa")
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's ({len(tokenizer)}): "
            "use the model's own tokenizer or a larger vocab_size"
        )
    positions = usable_positions(model.config)
    if config.block_size > positions:
        raise ConfigError(
            f"block_size {config.block_size} exceeds the model's {positions} positions "
            "(max_position_embeddings): lower block_size or raise it in model_config"
        )
    return model


def usable_positions(model_config) -> int:
    offset = POSITION_OFFSET.get(model_config.model_type, 0)
    return model_config.max_position_embeddings - offset
