"""Autoregressive (GPT / Llama style) language modeling on packed blocks of text."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM

from fmkit.data.packing import document_position_ids
from fmkit.data.text import Blocks, TextDataConfig
from fmkit.data.tokenizer import SpecialTokens
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount, CardDetails
from fmkit.tasks.language_model import LanguageModelTask

logger = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"
# GPT-2's convention: one token ends every document and also serves as BOS. No padding token: packed blocks
# need none, and generation pads with the end-of-text token (set in the generation config).
CLM_SPECIALS = SpecialTokens(bos=END_OF_TEXT, eos=END_OF_TEXT)


@dataclass
class CLMConfig(TextDataConfig):
    """Causal language modeling: predict every next token from the ones before it."""

    model_type: str = "gpt2"
    tokenizer_type: Literal["wordpiece", "bpe", "unigram"] = "bpe"
    document_aware: bool = False
    """Restart positions after every end-of-text token, so no token attends to an earlier document in its block."""
    samples: int = 3
    """Sampled continuations of held-out document openings logged at each evaluation (0: none)."""
    sample_prompt_tokens: int = 8
    """Tokens of each held-out prompt that samples continue."""
    sample_new_tokens: int = 32
    """Tokens generated for each sample."""
    sample_temperature: float = 1.0
    """Saved in the model's generation config: sampling is its default (greedy decoding loops in small models)."""
    sample_top_p: float = 0.9
    """Nucleus sampling: draw from the most likely tokens that together hold this probability."""


@register_task
class CausalLM(LanguageModelTask):
    name = "clm"
    config_class = CLMConfig
    config: CLMConfig
    auto_class = AutoModelForCausalLM
    block_overlap = 1  # one token past each block is its last position's target

    def special_tokens(self) -> SpecialTokens:
        return CLM_SPECIALS

    def setup(self, accelerator) -> nn.Module:
        model = super().setup(accelerator)
        config = self.config
        generation = model.generation_config
        if generation.pad_token_id is None:
            generation.pad_token_id = self.tokenizer.eos_token_id
        # Nucleus sampling alone (top_k 0 turns off transformers' default top-50), in the saved config too.
        generation.do_sample, generation.top_k = True, 0
        generation.temperature, generation.top_p = config.sample_temperature, config.sample_top_p
        self.end_id = self.tokenizer.eos_token_id
        # Add-one smoothing keeps tokens never seen in training finite; the baseline is a context-free model.
        counts = torch.from_numpy(self.unigram_counts).double() + 1.0
        self.unigram_nll = (counts.sum().log() - counts.log()).float()
        self.prompts = held_out_prompts(self.eval_blocks, self.end_id, config.samples, config.sample_prompt_tokens)
        self.output_dir = Path(config.output_dir)
        return model

    def make_batch(self, blocks: Blocks, stream: int, indices: np.ndarray, positions: np.ndarray) -> dict:
        tokens = blocks.get(indices)
        batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
        if self.config.document_aware:
            batch["position_ids"] = document_position_ids(batch["input_ids"], self.end_id)
        return batch

    def count(self, batch: dict) -> BatchCount:
        tokens = batch["labels"].numel()
        return BatchCount(items=tokens, samples=batch["labels"].shape[0], tokens=tokens)

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), reduction="sum")

    def held_out_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        return {
            "loss": self.loss(model, batch),
            "items": torch.tensor(labels.numel()),
            "unigram_loss": self.unigram_nll.to(labels.device)[labels].sum(),
        }

    def held_out_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"eval_loss_unigram": sums["unigram_loss"] / max(sums["items"], 1.0)}

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        metrics = super().evaluate(model, accelerator, step)
        self._log_samples(accelerator.unwrap_model(model), accelerator, step)
        return metrics

    def _log_samples(self, model: nn.Module, accelerator, step: int) -> None:
        """Continuations with the model's own generation config, each after `torch.manual_seed(seed)`: the
        same draw at every evaluation and on every process (sharded weights need all of them to generate), and
        the same again from the exported model. The training RNG is left as it was."""
        records = []
        for number, prompt in enumerate(self.prompts):
            seed = self.config.seed + number
            input_ids = torch.tensor([prompt], device=accelerator.device)
            with seeded(seed, accelerator.device):
                output = model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.config.sample_new_tokens
                )
            records.append(
                {
                    "step": step,
                    "seed": seed,
                    "prompt": self.tokenizer.decode(prompt),
                    "completion": self.tokenizer.decode(output[0, len(prompt) :]),
                }
            )
        if accelerator.is_main_process and records:
            with open(self.output_dir / "samples.jsonl", "a") as out:
                out.writelines(json.dumps(record) + "\n" for record in records)
            for record in records:
                logger.info("sample at step %d: %r → %r", step, record["prompt"], record["completion"])

    def predicted_fraction(self) -> float:
        return 1.0

    def card_details(self) -> CardDetails:
        usage = (
            "from transformers import pipeline\n\n"
            'generate = pipeline("text-generation", model="PATH_OR_HUB_ID")\n'
            'print(generate("The quick brown fox", max_new_tokens=20)[0]["generated_text"])'
        )
        packing = (
            "document-aware (attention stops at document boundaries)"
            if self.config.document_aware
            else "documents joined by end-of-text tokens"
        )
        return CardDetails(
            title=f"{self.model_config.model_type} causal language model trained with fmkit",
            pipeline_tag="text-generation",
            tags=["causal-lm", self.model_config.model_type],
            architecture=self.architecture(),
            data=self.data_description,
            training={"packing": packing},
            usage=usage,
        )


@contextmanager
def seeded(seed: int, device: torch.device):
    """Run the block after `torch.manual_seed(seed)`, then put back the CPU's and `device`'s RNG states."""
    devices = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=devices, device_type="cuda" if device.type == "cpu" else device.type):
        torch.manual_seed(seed)
        yield


def held_out_prompts(blocks: Blocks, end_id: int, count: int, length: int) -> list[list[int]]:
    """Openings of held-out documents: the `length` tokens after an end-of-text token, from blocks spread evenly."""
    prompts: list[list[int]] = []
    for index in np.linspace(0, len(blocks) - 1, num=min(count * 4, len(blocks)), dtype=int):
        tokens = blocks.get(np.array([index]))[0].tolist()
        ends = [i for i, token in enumerate(tokens[:-length]) if token == end_id]
        if ends and len(prompts) < count:
            opening = tokens[ends[0] + 1 : ends[0] + 1 + length]
            if end_id not in opening:
                prompts.append(opening)
    return prompts
