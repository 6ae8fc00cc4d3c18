"""Masked language modeling (BERT / RoBERTa / ModernBERT style) on packed blocks of text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM

from fmkit.data.loader import sample_seeds
from fmkit.data.masking import IGNORE_INDEX, Masker
from fmkit.data.text import Blocks, TextDataConfig
from fmkit.data.tokenizer import BERT_SPECIALS, ROBERTA_SPECIALS, SpecialTokens
from fmkit.hub import ModelCard
from fmkit.models.masked_positions import MaskedPositionsOnly
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount
from fmkit.tasks.language_model import LanguageModelTask


@dataclass
class MLMConfig(TextDataConfig):
    """Masked language modeling: predict masked tokens from both sides."""

    mlm_probability: float = 0.15
    """Fraction of tokens to predict; of those 80% become [MASK], 10% a random token, 10% stay."""
    whole_word_masking: bool = False
    """Mask all sub-tokens of a word together."""


@register_task
class MaskedLM(LanguageModelTask):
    name = "mlm"
    config_class = MLMConfig
    config: MLMConfig
    auto_class = AutoModelForMaskedLM

    def special_tokens(self) -> SpecialTokens:
        return ROBERTA_SPECIALS if self.config.tokenizer_type == "bpe" else BERT_SPECIALS

    def setup(self, accelerator) -> nn.Module:
        model = super().setup(accelerator)
        self.masker = Masker(self.tokenizer, self.config.mlm_probability, self.config.whole_word_masking)
        self.head = MaskedPositionsOnly(model)
        return model

    def make_batch(self, blocks: Blocks, stream: int, indices: np.ndarray, positions: np.ndarray) -> dict:
        seeds = sample_seeds(self.config.seed, stream, positions)  # held-out masks are the same at every evaluation
        input_ids, labels = self.masker(blocks.get(indices), seeds)
        return {"input_ids": input_ids, "labels": labels}

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

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        return self.held_out_loss(model, accelerator)

    def predicted_fraction(self) -> float:
        return self.config.mlm_probability  # the decoder runs only at the masked positions

    def model_card(self, training: dict[str, object], metrics: dict[str, float]) -> ModelCard:
        usage = (
            "from transformers import pipeline\n\n"
            'fill = pipeline("fill-mask", model="PATH_OR_HUB_ID")\n'
            f'print(fill("The quick brown {self.tokenizer.mask_token} jumps over the lazy dog."))'
        )
        return ModelCard(
            title=f"{self.model_config.model_type} masked language model trained with fmkit",
            library_name="transformers",
            pipeline_tag="fill-mask",
            tags=["fmkit", "masked-lm", self.model_config.model_type],
            architecture=self.architecture(),
            data=self.data_description,
            training={**training, "masking": f"{self.config.mlm_probability:.0%} of tokens, 80/10/10"},
            metrics=metrics,
            usage=usage,
        )
