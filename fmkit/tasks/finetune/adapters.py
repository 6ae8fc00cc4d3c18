"""How much of a pretrained model a downstream run trains: all of it, its head only, or LoRA matrices (peft).

peft does the LoRA itself. fmkit adds what peft leaves to its users: a default set of target modules for every
architecture fmkit trains or exports (peft knows only some), a one-line error naming the model's adaptable
modules when a target matches none, and the classification head always trained and saved with the adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers.pytorch_utils import Conv1D

from fmkit.errors import ConfigError

Adapter = Literal["full", "linear", "lora"]

HEAD_MODULES = ("classifier", "score")
"""What transformers names the classification head of every *ForSequenceClassification / *ForImageClassification
fmkit adapts; it is new at fine-tuning time, so it is always trained and saved (peft's modules_to_save)."""

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("word_embeddings", "query", "key", "value", "dense"),
    "roberta": ("word_embeddings", "query", "key", "value", "dense"),
    "distilbert": ("word_embeddings", "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    "modernbert": ("tok_embeddings", "Wqkv", "Wo", "Wi", "dense"),
    "gpt2": ("wte", "c_attn", "c_proj", "c_fc"),
    "llama": ("embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "vit": ("query", "key", "value", "dense"),
    "clip": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "clip_vision_model": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "resnet": ("convolution",),
    "convnext": ("pwconv1", "pwconv2"),  # ConvNeXt's pointwise convolutions are Linear layers
}
"""Default LoRA targets (module-name suffixes) by model type: attention and MLP projections of transformers (with
the pooling head's dense layer where it has one), the token embeddings of text models, the convolutions of
ResNets and the pointwise convolutions of ConvNeXts. The embeddings are in because, on the text demo, LoRA
without them trailed full fine-tuning by 12 points and with them (r 8: 4.8% of the parameters) did not."""

_ADAPTABLE = (nn.Linear, nn.Conv2d, Conv1D, nn.Embedding)
_LAYER_INDEX = re.compile(r"\.(?:layers?|h|stages)\.(\d+)\.")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    """Empty: LORA_TARGETS for the model type."""


PEFT_PREFIX = "base_model.model."
"""What peft puts before the wrapped model's own parameter names."""


def is_head(parameter_name: str) -> bool:
    return parameter_name.removeprefix(PEFT_PREFIX).split(".", 1)[0] in HEAD_MODULES


def freeze_backbone(model: nn.Module) -> None:
    """The linear probe: no parameter outside the head gets a gradient (see `frozen_modules` for BatchNorm)."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_head(name))


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of a frozen backbone that must run in eval mode, so BatchNorm statistics stay pretrained."""
    return [module for name, module in model.named_children() if name not in HEAD_MODULES]


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """The model wrapped by peft, with LoRA on the targets and the head trained in full (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model

    model_type = model.config.model_type
    targets = settings.target_modules or LORA_TARGETS.get(model_type, ())
    adaptable = adaptable_module_names(model)
    if not targets:
        raise ConfigError(
            f"model type {model_type!r} has no default LoRA targets; pass --lora_target_modules, e.g. "
            f"{','.join(adaptable[:6])} (its adaptable modules: {', '.join(adaptable)})"
        )
    unknown = [target for target in targets if target not in adaptable]
    if unknown:
        raise ConfigError(
            f"--lora_target_modules {','.join(unknown)}: no such linear, convolution or embedding module in this "
            f"{model_type} model; its adaptable modules are {', '.join(adaptable)}"
        )
    head = [name for name, _ in model.named_children() if name in HEAD_MODULES]
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        modules_to_save=head,
    )
    return get_peft_model(model, config)


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Distinct last names of the linear, convolution and embedding modules outside the head: what LoRA can
    target."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, _ADAPTABLE) and not is_head(name)
    }
    return sorted(names)


def layer_depths(parameter_names: list[str]) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise decay: 0 for embeddings, i + 1 for block i, blocks + 1 for the head
    and anything after the last block (final norms, poolers); and that top depth."""
    matches = {name: _LAYER_INDEX.search(name) for name in parameter_names}
    top = max((int(match.group(1)) + 2 for match in matches.values() if match), default=1)
    depths, seen_block = {}, False
    for name, match in matches.items():
        seen_block = seen_block or match is not None
        depths[name] = int(match.group(1)) + 1 if match else (top if seen_block or is_head(name) else 0)
    return depths, top
