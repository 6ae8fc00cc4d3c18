"""A Hugging Face vision model seen the two ways pretext heads need it: a vector per image, or a feature map.

The backbone stays a stock transformers model (ViT, ResNet, ConvNeXt, ...), so what the pretext task leaves
behind loads with plain `AutoModel.from_pretrained`. ViT is built without its pooler: nothing in
pretraining would train it (Hugging Face's own ViT classifiers drop it too), and an unused layer breaks DDP.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, ConvNextImageProcessor, PreTrainedModel
from transformers.image_processing_base import ImageProcessingMixin

from fmkit.errors import ConfigError
from fmkit.models.luminance_processor import LuminanceImageProcessor

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WITHOUT_POOLER = {"vit", "deit", "dinov2"}
FeaturePooling = Literal["default", "patch_mean", "stages"]
"""How a backbone turns an image into one vector: "default" is the [CLS] token of a ViT and the pooled last
stage of a CNN; "patch_mean" averages a ViT's patch tokens (what MAE trains: its [CLS] token gets no signal);
"stages" concatenates every CNN stage, globally averaged (mid-level features transfer better than the last
stage, which specialises in the pretext task)."""


class Backbone(nn.Module):
    def __init__(self, model: PreTrainedModel, pooling: FeaturePooling = "default"):
        super().__init__()
        self.model = model
        self.pooling = pooling
        config = model.config
        self.is_transformer = hasattr(config, "patch_size") and not hasattr(config, "hidden_sizes")
        if (pooling == "patch_mean" and not self.is_transformer) or (pooling == "stages" and self.is_transformer):
            kind = "ViT" if self.is_transformer else "CNN"
            raise ConfigError(f"feature_pooling {pooling!r} does not apply to a {kind} backbone ({config.model_type})")
        self.feature_dim = config.hidden_sizes[-1] if hasattr(config, "hidden_sizes") else config.hidden_size
        """Channels of `feature_map`."""
        self.vector_dim = sum(config.hidden_sizes) if pooling == "stages" else self.feature_dim
        """Length of the vector `forward` returns."""
        self.stride = config.patch_size if self.is_transformer else self.stage_shapes()[-1][0]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One feature vector per image, pooled as `pooling` says."""
        if self.pooling == "stages":
            outputs = self.model(pixel_values=pixel_values, output_hidden_states=True)
            earlier = (stage.mean((2, 3)) for stage in outputs.hidden_states[1:-1])
            return torch.cat([outputs.pooler_output.flatten(1), *earlier], 1)
        outputs = self._run(pixel_values)
        if self.is_transformer:
            tokens = outputs.last_hidden_state
            return tokens[:, 1:].mean(1) if self.pooling == "patch_mean" else tokens[:, 0]
        return outputs.pooler_output.flatten(1)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, feature_dim, H / stride, W / stride]: patch tokens laid out on their grid for ViTs."""
        outputs = self._run(pixel_values)
        if not self.is_transformer:
            return self._final_norm(outputs.last_hidden_state)
        height, width = (size // self.stride for size in pixel_values.shape[-2:])
        tokens = outputs.last_hidden_state[:, -height * width :]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def stage_maps(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's map, finest first, the last one as `feature_map` gives it; a ViT has one stage."""
        if self.is_transformer:
            return [self.feature_map(pixel_values)]
        stages = list(self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[1:])
        stages[-1] = self._final_norm(stages[-1])
        return stages

    def stage_shapes(self) -> list[tuple[int, int]]:
        """(stride, channels) of each map `stage_maps` returns."""
        if self.is_transformer:
            return [(self.stride, self.feature_dim)]
        first = first_stage_stride(self.model.config)
        return [(first * 2**i, channels) for i, channels in enumerate(self.model.config.hidden_sizes)]

    def _final_norm(self, feature_map: torch.Tensor) -> torch.Tensor:
        """ConvNeXt normalises only its pooled vector; the map goes through the same norm, so that dense
        pretext tasks train every backbone parameter (and DDP finds no unused ones)."""
        norm = getattr(self.model, "layernorm", None)
        if not isinstance(norm, nn.LayerNorm):
            return feature_map
        return norm(feature_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _run(self, pixel_values: torch.Tensor):
        if self.is_transformer:
            # Jigsaw tiles and context patches are smaller than the images the positions were made for.
            resized = pixel_values.shape[-1] != self.model.config.image_size
            return self.model(pixel_values=pixel_values, interpolate_pos_encoding=resized)
        return self.model(pixel_values=pixel_values)


def first_stage_stride(config) -> int:
    """The first stage's output stride, read from the config because stems differ: ResNet's stride-2 conv and
    max-pool (4), RegNet's one stride-2 conv (2), ConvNeXt's patchify (patch_size); ResNet and RegNet halve
    again in their first stage when `downsample_in_first_stage` is set. Each later stage halves."""
    if config.model_type in ("convnext", "convnextv2"):
        return config.patch_size
    stems = {"resnet": 4, "regnet": 2}
    if config.model_type not in stems:
        raise ConfigError(
            f"backbone {config.model_type!r}: its stage strides are unknown to fmkit (CNNs supported: resnet, "
            "regnet, convnext, convnextv2)"
        )
    return stems[config.model_type] * (2 if getattr(config, "downsample_in_first_stage", False) else 1)


def build_backbone(
    model_type: str, overrides: dict, name_or_path: str | None, image_size: int, pooling: FeaturePooling = "default"
) -> Backbone:
    """A new backbone from a config (the preset's architecture), or a pretrained one to continue from."""
    if name_or_path:
        try:
            config = AutoConfig.from_pretrained(name_or_path)
            model = AutoModel.from_pretrained(name_or_path, **_model_kwargs(config.model_type))
        except (OSError, ValueError) as error:
            raise ConfigError(f"backbone {name_or_path}: cannot load it ({str(error).splitlines()[0]})") from None
    else:
        overrides = dict(overrides)
        try:
            config = AutoConfig.for_model(model_type, **overrides)
        except (ValueError, KeyError) as error:
            raise ConfigError(f"backbone_type {model_type!r}: {str(error).splitlines()[0]}") from None
        if hasattr(config, "image_size"):
            config.image_size = image_size
        model = AutoModel.from_config(config, **_model_kwargs(model_type))
    backbone = Backbone(model, pooling)
    if image_size % backbone.stride:
        raise ConfigError(
            f"image_size {image_size} is not a multiple of the backbone's stride {backbone.stride} "
            "(patch size for ViTs, the last stage's output stride for CNNs)"
        )
    return backbone


def random_copy(backbone: Backbone, seed: int) -> Backbone:
    """A freshly initialised backbone of the same architecture: the baseline a pretext task must beat.

    Built by the model class directly, never inside DeepSpeed's partitioned init, so it runs as a plain
    module on every process.
    """
    model = backbone.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config, **_model_kwargs(model.config.model_type))
    return Backbone(fresh.eval(), backbone.pooling)


def image_processor(
    image_size: int,
    stored_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    processor_class: type[ConvNextImageProcessor] = ConvNextImageProcessor,
) -> ConvNextImageProcessor:
    """Resize the shorter side to `stored_size`, centre-crop `image_size`, normalise: what evaluation saw.

    ConvNeXt's processor expresses exactly that through crop_pct, whichever backbone it serves (CMC's
    LuminanceImageProcessor is one with the lightness channel alone).
    """
    return processor_class(
        size={"shortest_edge": image_size},
        crop_pct=image_size / stored_size,
        image_mean=list(mean),
        image_std=list(std),
    )


def load_image_processor(name_or_path: str):
    """AutoImageProcessor's processor, except that CMC's LuminanceImageProcessor comes from fmkit itself rather
    than from the copy of its code in the folder (which AutoImageProcessor runs only with trust_remote_code)."""
    settings, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    if settings.get("image_processor_type") == LuminanceImageProcessor.__name__:
        return LuminanceImageProcessor.from_pretrained(name_or_path)
    return AutoImageProcessor.from_pretrained(name_or_path)


def processor_geometry(processor) -> tuple[int, int]:
    """(crop size, size images are resized to first) of an image processor, for the probes' cached arrays.

    fmkit's export says it as ConvNeXt's shortest_edge and crop_pct (which ConvNeXt applies below 384 pixels);
    CLIP's and most others' as a resize then crop_size; ViT's as a plain resize.
    """
    size = processor.size
    crop_size = getattr(processor, "crop_size", None)
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct and size.get("shortest_edge") and size["shortest_edge"] < 384:
        return size["shortest_edge"], round(size["shortest_edge"] / crop_pct)
    if crop_size and crop_size.get("height"):
        return crop_size["height"], size.get("shortest_edge") or crop_size["height"]
    side = size.get("shortest_edge") or size.get("height")
    return side, side


def _model_kwargs(model_type: str) -> dict:
    return {"add_pooling_layer": False} if model_type in WITHOUT_POOLER else {}


def upsampling_steps(stride: int) -> int:
    steps = math.log2(stride)
    if not steps.is_integer():
        raise ConfigError(f"dense pretext heads need a power-of-two backbone stride, got {stride}")
    return int(steps)
