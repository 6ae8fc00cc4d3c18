"""open_clip models saved in open_clip's own folder layout, and converted to Hugging Face's CLIPModel.

Only the original CLIP architecture maps onto CLIPModel: a ViT image tower pooled at its class token, a causal
text tower pooled at the end-of-text token over OpenAI's vocabulary, plain pre-norm blocks and a softmax
(temperature-only) logit. Anything else raises NotConvertible instead of producing a model that computes
something different.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from open_clip import CLIP
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.transform import PreprocessCfg
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, Transformer, VisionTransformer
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel

from fmkit.errors import ConfigError, FmkitError

OPENAI_VOCAB_SIZE = 49408
START_OF_TEXT_ID = 49406
END_OF_TEXT_ID = 49407

# open_clip key -> CLIPModel key, for tensors that keep their layout.
_RENAMED = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# open_clip multiplies by [width, embed_dim] matrices; CLIPModel uses nn.Linear weights, [embed_dim, width].
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_LAYERS = {
    "visual.transformer.resblocks.": "vision_model.encoder.layers.",
    "transformer.resblocks.": "text_model.encoder.layers.",
}
_IN_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}  # fmt: skip


class NotConvertible(FmkitError):
    """An open_clip model with a part that Hugging Face's CLIPModel has no counterpart for."""


def save_open_clip(model: nn.Module, model_cfg: dict, preprocess_cfg: dict, folder: Path) -> None:
    """Write open_clip's Hub layout, so `open_clip.create_model_and_transforms("local-dir:" + folder)` loads it.

    open_clip's `save_config_for_hf` is not used: it reads the preprocessing from the model's attributes
    and would drop the `preprocess_cfg` given here.
    """
    unknown = set(preprocess_cfg) - {field.name for field in dataclasses.fields(PreprocessCfg)}
    if unknown:
        raise ConfigError(f"preprocess_cfg: unknown keys {sorted(unknown)} (open_clip would ignore them)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / HF_CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file(_own_storage(model.state_dict()), str(folder / HF_SAFE_WEIGHTS_NAME))


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights) or are not contiguous. open_clip loads
    strictly, so an alias is written as its own copy rather than dropped."""
    seen, tensors = set(), {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        shared = storage in seen
        seen.add(storage)
        tensors[name] = tensor.clone(memory_format=torch.contiguous_format) if shared else tensor.contiguous()
    return tensors


def open_clip_to_hf(model: CLIP, model_cfg: dict) -> CLIPModel:
    """The same model as a transformers CLIPModel, on the same device, whose `get_image_features` and
    `get_text_features` equal open_clip's unnormalised `encode_image` and `encode_text` (at eval)."""
    problems = _unmappable(model, model_cfg)
    if problems:
        raise NotConvertible("open_clip model does not map onto transformers' CLIPModel: " + "; ".join(problems))
    config = _hf_config(model, model_cfg)
    with torch.device(model.logit_scale.device):
        hf_model = CLIPModel(config)
    missing, unexpected = hf_model.load_state_dict(_hf_state_dict(model), strict=False)
    if missing or unexpected:
        raise NotConvertible(f"open_clip weights do not fill CLIPModel: missing {missing}, unexpected {unexpected}")
    return hf_model.eval()


def _unmappable(model: nn.Module, model_cfg: dict) -> list[str]:
    if not isinstance(model, CLIP):
        return [f"{type(model).__name__} is not open_clip's CLIP (HF or multimodal text tower)"]
    problems = _vision_problems(model.visual) + _text_problems(model, model_cfg.get("text_cfg", {}))
    if model.logit_bias is not None:
        problems.append("logit_bias (SigLIP-style sigmoid logits; CLIPModel only has logit_scale)")
    if isinstance(model.visual, VisionTransformer):
        problems += _activation_problems(model, _hidden_act(model_cfg))
    return problems


def _vision_problems(visual: nn.Module) -> list[str]:
    if not isinstance(visual, VisionTransformer):
        return [f"{type(visual).__name__} image tower (only open_clip's VisionTransformer maps)"]
    problems = _block_problems(visual.transformer, "image")
    if visual.attn_pool is not None:
        problems.append("attentional pooling in the image tower")
    elif visual.pool_type != "tok":
        problems.append(f"image pool_type {visual.pool_type!r} (CLIPModel pools the class token)")
    if isinstance(visual.ln_pre, nn.Identity):
        problems.append("no_ln_pre (CLIPModel always normalises before the image transformer)")
    if len(set(visual.image_size)) != 1 or len(set(visual.patch_size)) != 1:
        problems.append(f"non-square image_size {visual.image_size} or patch_size {visual.patch_size}")
    return problems


def _text_problems(model: CLIP, text_cfg: dict) -> list[str]:
    problems = _block_problems(model.transformer, "text")
    if model.attn_mask is None:
        problems.append("no_causal_mask (CLIPModel's text tower is causal)")
    if model.text_pool_type != "argmax":
        problems.append(f"text pool_type {model.text_pool_type!r} (CLIPModel pools at the first end-of-text token)")
    if model.vocab_size != OPENAI_VOCAB_SIZE or text_cfg.get("hf_tokenizer_name") or text_cfg.get("tokenizer_kwargs"):
        problems.append("custom text vocabulary or tokenizer (CLIPModel is used with OpenAI's CLIP tokenizer)")
    if not isinstance(model.text_projection, nn.Parameter):
        problems.append("text projection that is absent or has a bias")
    return problems


def _block_problems(transformer: Transformer, tower: str) -> list[str]:
    blocks = transformer.resblocks
    if not all(type(block) is ResidualAttentionBlock for block in blocks):
        return [f"custom attention blocks in the {tower} tower (qk_norm, scaled cosine or scale_* options)"]
    if not all(isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity) for block in blocks):
        return [f"layer scale (ls_init_value) in the {tower} tower"]
    return []


def _activation_problems(model: CLIP, hidden_act: str) -> list[str]:
    """The activation is read from model_cfg; a model built with force_quick_gelu or act_kwargs differs."""
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    found = {_activation_name(block.mlp.gelu) for block in blocks if isinstance(block, ResidualAttentionBlock)}
    if found - {hidden_act}:
        return [f"activation {sorted(found)} where model_cfg's quick_gelu means {hidden_act!r}"]
    return []


def _activation_name(module: nn.Module) -> str:
    if isinstance(module, QuickGELU):
        return "quick_gelu"
    if type(module) is nn.GELU and module.approximate == "none":
        return "gelu"
    return repr(module)


def _hidden_act(model_cfg: dict) -> str:
    return "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"


def _hf_config(model: CLIP, model_cfg: dict) -> CLIPConfig:
    hidden_act = _hidden_act(model_cfg)
    embed_dim = model.visual.output_dim
    vision = _tower_config(model.visual.transformer, [model.visual], hidden_act, embed_dim)
    vision.update(image_size=model.visual.image_size[0], patch_size=model.visual.patch_size[0])
    text = _tower_config(model.transformer, [model.transformer, model.ln_final], hidden_act, embed_dim)
    text.update(
        vocab_size=model.vocab_size,
        max_position_embeddings=model.positional_embedding.shape[0],
        bos_token_id=START_OF_TEXT_ID,
        eos_token_id=END_OF_TEXT_ID,  # CLIPModel pools at its first occurrence (2 would select argmax of the ids)
        pad_token_id=END_OF_TEXT_ID,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _tower_config(transformer: Transformer, tower: list[nn.Module], hidden_act: str, embed_dim: int) -> dict:
    """Sizes read from the modules, so that overrides made when the model was built are honoured."""
    block = transformer.resblocks[0]
    return {
        "hidden_size": transformer.width,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": len(transformer.resblocks),
        "num_attention_heads": block.attn.num_heads,
        "hidden_act": hidden_act,
        "layer_norm_eps": _layer_norm_eps(tower),
        "projection_dim": embed_dim,
    }


def _layer_norm_eps(tower: list[nn.Module]) -> float:
    eps = {module.eps for part in tower for module in part.modules() if isinstance(module, nn.LayerNorm)}
    if len(eps) != 1:
        raise NotConvertible(f"layer norms with different eps {sorted(eps)} (CLIPModel has one per tower)")
    return eps.pop()


def _hf_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    tensors, unmapped = {}, []
    for name, tensor in model.state_dict().items():
        mapped = _hf_tensors(name, tensor)
        tensors.update(mapped)
        if not mapped:
            unmapped.append(name)
    if unmapped:
        raise NotConvertible(f"open_clip weights without a CLIPModel counterpart: {unmapped}")
    tensors["logit_scale"] = tensors["logit_scale"].reshape(())  # nonscalar_logit_scale models keep it as [1]
    return tensors


def _hf_tensors(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if name in _RENAMED:
        return {_RENAMED[name]: tensor}
    if name in _TRANSPOSED:
        return {_TRANSPOSED[name]: tensor.T}
    for prefix, hf_prefix in _LAYERS.items():
        match = re.fullmatch(re.escape(prefix) + r"(\d+)\.(.+)", name)
        if match:
            return _block_tensors(f"{hf_prefix}{match[1]}.", match[2], tensor)
    return {}


def _block_tensors(hf_prefix: str, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = name.rsplit("_", 1)[1]
        # nn.MultiheadAttention stacks the query, key and value projections in that order.
        return {f"{hf_prefix}self_attn.{part}_proj.{kind}": t for part, t in zip("qkv", tensor.chunk(3), strict=True)}
    module, _, parameter = name.rpartition(".")
    if module in _IN_BLOCK:
        return {f"{hf_prefix}{_IN_BLOCK[module]}.{parameter}": tensor}
    return {}
