"""CLIP models behind one interface: a transformers CLIPModel built from tower configs, or any open_clip
architecture by name or JSON config.

The loss, the evaluation and open_clip's zero-shot helpers call `encode_image` / `encode_text` and read
`logit_scale` / `logit_bias`; nothing else needs to know which library built the towers.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
)

from fmkit.errors import ConfigError

logger = logging.getLogger(__name__)

OPEN_CLIP_PREFIX = "open_clip:"
MAX_LOGIT_SCALE = math.log(100)
"""CLIP clamps the learned temperature at 1/100, so logits never exceed 100."""
SIGLIP_INIT = (math.log(10), -10.0)
"""SigLIP's initial logit scale and bias (Zhai et al., 2023)."""
TOWERS = {"image": ("vision_model", "visual_projection", "vision_config"),
          "text": ("text_model", "text_projection", "text_config")}  # fmt: skip


@dataclass
class ClipModelSpec:
    model: str = "clip"
    """'clip' builds a transformers CLIPModel from vision_config/text_config; 'open_clip:NAME' builds one of
    open_clip's architectures (e.g. open_clip:ViT-B-32) and 'open_clip:PATH.json' one from an open_clip config."""
    vision_config: dict = field(default_factory=dict)
    """Overrides for a new CLIPVisionConfig (image_size, patch_size, hidden_size, ...)."""
    text_config: dict = field(default_factory=dict)
    """Overrides for a new CLIPTextConfig (hidden_size, max_position_embeddings as context length, ...)."""
    projection_dim: int = 512
    """Width of the shared image-text embedding space."""
    loss: Literal["clip", "siglip"] = "clip"
    """clip: symmetric InfoNCE with a learned temperature; siglip: pairwise sigmoid loss with a learned bias."""
    image_tower_from: str | None = None
    """Start the image tower (and its projection) from a saved CLIPModel or CLIPVisionModelWithProjection."""
    text_tower_from: str | None = None
    """Start the text tower (and its projection) from a saved CLIPModel or CLIPTextModelWithProjection."""
    lock_image: bool = False
    """Freeze the image tower (LiT-style locked-image tuning)."""
    lock_text: bool = False
    """Freeze the text tower."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for larger contrastive batches."""


class ClipModel(nn.Module):
    """Two towers and a learned temperature (and bias); `forward` returns what the contrastive losses take.

    The temperature and bias live here as one-element parameters, taken out of the towers' model: DeepSpeed
    broadcasts every parameter viewed as bytes, which fails for the 0-dim scalars CLIPModel and open_clip use.
    The export puts them back in each library's shape.
    """

    image_size: int
    context_length: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self, clip: nn.Module, logit_bias: float | None):
        super().__init__()
        scale = float(clip.logit_scale.detach())
        del clip.logit_scale
        if getattr(clip, "logit_bias", None) is not None:
            del clip.logit_bias
        self.clip = clip
        self.logit_scale = nn.Parameter(torch.tensor([scale]))
        self.logit_bias = nn.Parameter(torch.tensor([logit_bias])) if logit_bias is not None else None

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        """(normalised image features, normalised text features, logit scale, logit bias or None)."""
        image = self.encode_image(pixel_values, normalize=True)
        text = self.encode_text(input_ids, normalize=True)
        scale = self.logit_scale.clamp(0, MAX_LOGIT_SCALE).exp()
        return image, text, scale, self.logit_bias

    def describe(self) -> str:
        raise NotImplementedError


class HFClip(ClipModel):
    def __init__(self, clip: CLIPModel, logit_bias: float | None):
        super().__init__(clip, logit_bias)
        vision, text = clip.config.vision_config, clip.config.text_config
        self.image_size, self.context_length = vision.image_size, text.max_position_embeddings
        self.mean, self.std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.clip.get_text_features(input_ids=input_ids).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def describe(self) -> str:
        vision, text = self.clip.config.vision_config, self.clip.config.text_config
        return (
            f"CLIPModel: ViT image tower ({vision.num_hidden_layers} layers, width {vision.hidden_size}, "
            f"patch {vision.patch_size}, {vision.image_size}px), text transformer ({text.num_hidden_layers} layers, "
            f"width {text.hidden_size}, {text.max_position_embeddings} tokens), embedding "
            f"{self.clip.config.projection_dim}"
        )


class OpenClip(ClipModel):
    def __init__(self, clip: nn.Module, name: str, model_cfg: dict):
        super().__init__(clip, model_cfg.get("init_logit_bias"))
        self.name, self.model_cfg = name, model_cfg
        size = clip.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        self.context_length = clip.context_length
        preprocess = getattr(clip.visual, "preprocess_cfg", {})
        self.mean = tuple(preprocess.get("mean", OPENAI_DATASET_MEAN))
        self.std = tuple(preprocess.get("std", OPENAI_DATASET_STD))
        self.preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(pixel_values, normalize=normalize)

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(input_ids, normalize=normalize)

    def describe(self) -> str:
        return f"open_clip {self.name}: {json.dumps(self.model_cfg, sort_keys=True)}"


def build_clip_model(spec: ClipModelSpec) -> ClipModel:
    model = _build_open_clip(spec) if spec.model.startswith(OPEN_CLIP_PREFIX) else _build_hf_clip(spec)
    if spec.gradient_checkpointing:
        if isinstance(model, HFClip):
            model.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.clip.set_grad_checkpointing(True)
    for tower, locked in (("image", spec.lock_image), ("text", spec.lock_text)):
        if locked:
            _lock(model, tower)
    return model


def _build_hf_clip(spec: ClipModelSpec) -> HFClip:
    if spec.model != "clip":
        raise ConfigError(f"model {spec.model!r}: expected 'clip' or '{OPEN_CLIP_PREFIX}NAME', e.g. open_clip:ViT-B-32")
    configs = {"vision_config": dict(spec.vision_config), "text_config": dict(spec.text_config)}
    donors = {}
    for tower, folder in (("image", spec.image_tower_from), ("text", spec.text_tower_from)):
        if folder:
            donors[tower], tower_config = _donor_tower(folder, tower)
            configs[TOWERS[tower][2]] = tower_config.to_dict()
    # CLIP's own tokenizer ends every text with <|endoftext|> (49407): the text tower pools there.
    configs["text_config"].setdefault("eos_token_id", 49407)
    configs["text_config"].setdefault("bos_token_id", 49406)
    configs["text_config"].setdefault("pad_token_id", 49407)
    config = CLIPConfig(**configs, projection_dim=spec.projection_dim)
    clip = CLIPModel(config)
    for tower, donor in donors.items():
        body, projection, _ = TOWERS[tower]
        getattr(clip, body).load_state_dict(getattr(donor, body).state_dict())
        donor_projection = getattr(donor, projection)
        if donor_projection.weight.shape == getattr(clip, projection).weight.shape:
            getattr(clip, projection).load_state_dict(donor_projection.state_dict())
        else:
            logger.warning("%s tower from %s: its projection does not fit projection_dim; a new one is trained",
                           tower, getattr(spec, f"{tower}_tower_from"))  # fmt: skip
    if spec.loss == "siglip":
        clip.logit_scale.data.fill_(SIGLIP_INIT[0])
    return HFClip(clip, SIGLIP_INIT[1] if spec.loss == "siglip" else None)


def _donor_tower(folder: str, tower: str):
    """A pretrained model holding the tower and its projection, and the tower's config."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{tower}_tower_from {folder}: no config.json (expected a CLIP model or tower folder)")
    model_type = AutoConfig.from_pretrained(path).model_type
    single = {"image": ("clip_vision_model", CLIPVisionModelWithProjection),
              "text": ("clip_text_model", CLIPTextModelWithProjection)}[tower]  # fmt: skip
    if model_type == "clip":
        donor = CLIPModel.from_pretrained(path)
    elif model_type == single[0]:
        donor = single[1].from_pretrained(path)
    else:
        raise ConfigError(
            f"{tower}_tower_from {folder}: a {model_type!r} model; expected 'clip' or '{single[0]}' "
            "(a CLIPModel or a single CLIP tower saved with save_pretrained)"
        )
    return donor, getattr(donor.config, TOWERS[tower][2], donor.config)


def _build_open_clip(spec: ClipModelSpec) -> OpenClip:
    name = spec.model[len(OPEN_CLIP_PREFIX) :]
    if spec.image_tower_from or spec.text_tower_from:
        raise ConfigError("image_tower_from and text_tower_from take transformers CLIP folders: use --model clip")
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"model {spec.model}: no such open_clip config file")
        open_clip.add_model_config(path)
        name = path.stem
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ConfigError(f"model {spec.model}: open_clip has no such model (see open_clip.list_models())")
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") or text_cfg.get("vocab_size", 49408) != 49408:
        raise ConfigError(
            f"model {spec.model}: its text tower uses its own tokenizer ({text_cfg.get('hf_tokenizer_name') or ''} "
            f"vocabulary {text_cfg.get('vocab_size')}); fmkit trains open_clip models with CLIP's BPE (49,408 tokens)"
        )
    scale, bias = SIGLIP_INIT if spec.loss == "siglip" else (math.log(1 / 0.07), None)
    model_cfg = {key: value for key, value in copy.deepcopy(model_cfg).items() if key != "init_logit_bias"}
    if bias is not None:
        model_cfg["init_logit_bias"] = bias
    clip = open_clip.create_model(name, init_logit_scale=scale, init_logit_bias=bias)
    return OpenClip(clip, name, model_cfg)


def _lock(model: ClipModel, tower: str) -> None:
    """LiT: the tower (and its projection) stays as initialised; only the other one learns."""
    if isinstance(model, OpenClip):
        (model.clip.lock_image_tower if tower == "image" else model.clip.lock_text_tower)()
        return
    body, projection, _ = TOWERS[tower]
    for module in (getattr(model.clip, body), getattr(model.clip, projection)):
        module.requires_grad_(False)
