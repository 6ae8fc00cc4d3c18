"""How a backbone pools an image into one vector: the shapes heads are built for, and refusals that name the option."""

from __future__ import annotations

import pytest
import torch

from fmkit.errors import ConfigError
from fmkit.models.backbone import build_backbone, random_copy

RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
CONVNEXT = {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}
REGNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8}
VIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "patch_size": 8}
PIXELS = torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize(("model_type", "overrides"), [("resnet", RESNET), ("convnext", CONVNEXT)])
def test_stages_concatenates_every_stage_averaged_the_last_one_as_default_pools_it(model_type, overrides):
    default = build_backbone(model_type, overrides, None, 16)
    staged = build_backbone(model_type, overrides, None, 16, "stages")
    assert staged.vector_dim == 24 and staged.feature_dim == 16
    staged.load_state_dict(default.state_dict())
    default.eval(), staged.eval()
    with torch.no_grad():
        vector, pooled = staged(PIXELS), default(PIXELS)
        first_stage = staged.model(pixel_values=PIXELS, output_hidden_states=True).hidden_states[1].mean((2, 3))
    assert vector.shape == (2, 24)
    torch.testing.assert_close(vector[:, :16], pooled)
    torch.testing.assert_close(vector[:, 16:], first_stage)


def test_patch_mean_averages_the_patch_tokens_not_the_cls_token():
    backbone = build_backbone("vit", VIT, None, 16, "patch_mean").eval()
    with torch.no_grad():
        tokens = backbone.model(pixel_values=PIXELS).last_hidden_state
        vector = backbone(PIXELS)
    assert backbone.vector_dim == 16
    torch.testing.assert_close(vector, tokens[:, 1:].mean(1))


def test_random_copy_keeps_the_pooling():
    assert random_copy(build_backbone("vit", VIT, None, 16, "patch_mean"), seed=0).pooling == "patch_mean"


@pytest.mark.parametrize(
    ("model_type", "overrides", "pooling"), [("resnet", RESNET, "patch_mean"), ("vit", VIT, "stages")]
)
def test_pooling_that_does_not_fit_the_backbone_is_refused(model_type, overrides, pooling):
    with pytest.raises(ConfigError, match=f"feature_pooling '{pooling}' does not apply"):
        build_backbone(model_type, overrides, None, 16, pooling)


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("resnet", RESNET),
        ("resnet", {**RESNET, "downsample_in_first_stage": True}),
        ("regnet", REGNET),  # a stem of stride 2, halved again in its first stage by default
        ("regnet", {**REGNET, "downsample_in_first_stage": False}),
        ("convnext", CONVNEXT),
        ("convnext", {**CONVNEXT, "patch_size": 2}),
        ("vit", VIT),
    ],
)
def test_stage_maps_have_the_shapes_stage_shapes_gives_and_end_with_the_feature_map(model_type, overrides):
    backbone = build_backbone(model_type, overrides, None, 16).eval()
    with torch.no_grad():
        maps, last = backbone.stage_maps(PIXELS), backbone.feature_map(PIXELS)
    assert [(16 // stage.shape[-1], stage.shape[1]) for stage in maps] == backbone.stage_shapes()
    torch.testing.assert_close(maps[-1], last)


def test_a_cnn_whose_stage_strides_are_unknown_is_refused_by_name():
    with pytest.raises(ConfigError, match="backbone 'poolformer': its stage strides are unknown"):
        build_backbone("poolformer", {"hidden_sizes": [8, 16], "depths": [1, 1], "num_encoder_blocks": 2}, None, 16)
