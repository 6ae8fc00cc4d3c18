"""A transformers language model, from a checkpoint or built from a config, checked against its data.

Shared by the text objectives (masked and causal LM): the model must hold every token id the tokenizer
produces and every position of a training block, or training would index out of range on the first batch.
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from fmkit.data.text import TextDataConfig
from fmkit.data.tokenizer import round_up
from fmkit.errors import ConfigError

logger = logging.getLogger(__name__)

# RoBERTa-family position ids start after the padding index, so two embedding rows are not positions.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def build_language_model(config: TextDataConfig, tokenizer: PreTrainedTokenizerBase, auto_class) -> PreTrainedModel:
    """`auto_class` (AutoModelForMaskedLM, AutoModelForCausalLM) from `model_name_or_path` or from `model_type`.

    A new model's vocabulary is the tokenizer's rounded up to a multiple of 64 (tensor-core friendly), and its
    special token ids are the tokenizer's, so generation and padding work after `from_pretrained`.
    """
    attention = config.attn_implementation
    if config.model_name_or_path:
        if config.model_config:
            # Typically the preset's architecture; a pretrained model brings its own.
            logger.warning("model_config is ignored: continuing from %s with its own config", config.model_name_or_path)
        try:
            model = auto_class.from_pretrained(config.model_name_or_path, attn_implementation=attention)
        except (OSError, ValueError, ImportError) as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"model {config.model_name_or_path}: cannot load it ({reason})") from None
    else:
        overrides = dict(config.model_config)
        overrides.setdefault("vocab_size", round_up(len(tokenizer)))
        try:
            # Every special-token id the architecture knows comes from the tokenizer, None included: defaults
            # such as ModernBERT's 50281 would point past a new, smaller vocabulary.
            known = AutoConfig.for_model(config.model_type).to_dict()
            for name in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
                if name in known:
                    overrides.setdefault(name, getattr(tokenizer, name))
            model_config = AutoConfig.for_model(config.model_type, **overrides)
            _fused_gelu(model_config, overrides)
            model = auto_class.from_config(model_config, attn_implementation=attention)
        except (ValueError, KeyError, ImportError) as error:
            raise ConfigError(f"model_type {config.model_type!r}: {str(error).splitlines()[0]}") from None
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


def _fused_gelu(model_config, overrides: dict) -> None:
    """GPT-2's default `gelu_new` is the tanh GELU written as several elementwise ops; `gelu_pytorch_tanh` is
    the same function (within 3e-7) in one kernel, 2-4x faster, and a quarter of a small GPT-2's CPU step."""
    for name in ("activation_function", "hidden_act"):
        if getattr(model_config, name, None) == "gelu_new" and name not in overrides:
            setattr(model_config, name, "gelu_pytorch_tanh")


def usable_positions(model_config) -> int:
    offset = POSITION_OFFSET.get(model_config.model_type, 0)
    return model_config.max_position_embeddings - offset


def dense_parameters(model: nn.Module) -> int:
    """Parameters used once per token in a matmul: all but the embedding tables and the output projection.

    The output projection (tied or not) is counted separately by the caller, at the positions it runs on.
    """
    excluded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    output = model.get_output_embeddings()
    if output is not None:
        excluded.add(id(output.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
