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
from fmkit.models.masked_positions import MaskedPositionsOnly
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount, CardDetails
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
        # The unigram baseline always answers the training split's most frequent token that may be masked.
        maskable = self.unigram_counts.copy()
        maskable[self.tokenizer.all_special_ids] = -1
        self.most_frequent = int(maskable.argmax())
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
        logits, labels = self._predictions(model, batch)
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    def _predictions(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) at the predicted positions only."""
        labels = batch["labels"]
        predicted = labels != IGNORE_INDEX
        with self.head.selecting(predicted):
            logits = model(input_ids=batch["input_ids"]).logits
        return logits, labels[predicted]

    def held_out_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Accuracy counts only where the input holds the mask token: at the 10% of predicted positions left
        unchanged a model that copies its input would be right without using any context."""
        logits, labels = self._predictions(model, batch)
        masked = batch["input_ids"][batch["labels"] != IGNORE_INDEX] == self.masker.mask_id
        return {
            "loss": F.cross_entropy(logits.float(), labels, reduction="sum"),
            "items": torch.tensor(labels.numel()),
            "masked": masked.sum(),
            "correct": (masked & (logits.argmax(dim=-1) == labels)).sum(),
            "unigram_correct": (masked & (labels == self.most_frequent)).sum(),
        }

    def held_out_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        masked = max(sums["masked"], 1.0)
        return {"eval_accuracy": sums["correct"] / masked, "eval_accuracy_unigram": sums["unigram_correct"] / masked}

    def predicted_fraction(self) -> float:
        return self.config.mlm_probability  # the decoder runs only at the masked positions

    def card_details(self) -> CardDetails:
        usage = (
            "from transformers import pipeline\n\n"
            'fill = pipeline("fill-mask", model="PATH_OR_HUB_ID")\n'
            f'print(fill("The quick brown {self.tokenizer.mask_token} jumps over the lazy dog."))'
        )
        return CardDetails(
            title=f"{self.model_config.model_type} masked language model trained with fmkit",
            pipeline_tag="fill-mask",
            tags=["masked-lm", self.model_config.model_type],
            architecture=self.architecture(),
            data=self.data_description,
            training={"masking": f"{self.config.mlm_probability:.0%} of tokens, 80/10/10"},
            usage=usage,
        )
