"""Save a trained CLIP so plain libraries load it: a transformers CLIPModel + CLIPProcessor, and open_clip
architectures also in open_clip's own layout (`create_model_and_transforms("local-dir:" + folder)`)."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
from torch import nn

from fmkit.models.clip import MAX_LOGIT_SCALE, ClipModel, HFClip, OpenClip
from fmkit.models.clip_processor import clip_processor
from fmkit.models.open_clip_convert import NotConvertible, open_clip_to_hf, save_open_clip

logger = logging.getLogger(__name__)


def export_clip(model: ClipModel, state_dict: dict, output_dir: Path) -> bool:
    """Write the model into output_dir; True when a transformers CLIPModel is among what was written.

    `state_dict` is the full one (gathered under ZeRO-3 / FSDP), so the weights never come from `model`'s
    possibly partitioned parameters.
    """
    weights = {key[len("clip.") :]: value for key, value in state_dict.items() if key.startswith("clip.")}
    # The libraries keep the temperature and bias as 0-dim scalars (see ClipModel).
    weights["logit_scale"] = state_dict["logit_scale"].reshape(()).clamp(0, MAX_LOGIT_SCALE)
    processor = clip_processor(model.image_size, model.mean, model.std, model.context_length)
    if isinstance(model, HFClip):
        model.clip.logit_scale = nn.Parameter(weights["logit_scale"].clone())
        if model.logit_bias is not None:  # SigLIP's bias has no place in CLIPModel: keep it in its config
            model.clip.config.logit_bias = float(state_dict["logit_bias"])
        model.clip.save_pretrained(output_dir, state_dict=weights)
        processor.save_pretrained(output_dir)
        return True
    if model.logit_bias is not None:
        weights["logit_bias"] = state_dict["logit_bias"].reshape(())
    return _export_open_clip(model, weights, processor, output_dir)


def _export_open_clip(model: OpenClip, weights: dict, processor, output_dir: Path) -> bool:
    clip = open_clip.create_model(model.name, init_logit_bias=model.model_cfg.get("init_logit_bias"))
    clip.load_state_dict(weights)
    save_open_clip(clip, model.model_cfg, model.preprocess_cfg, output_dir)
    try:
        converted = open_clip_to_hf(clip, model.model_cfg)
    except NotConvertible as reason:
        logger.warning("saved in open_clip's layout only: %s does not map onto a CLIPModel (%s)", model.name, reason)
        return False
    converted.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return True
