"""The CLIP model wrapper and its loss: checkpointing and feature caching change memory, not results; locking
freezes a whole tower."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CLIP_TEXT, TINY_CLIP_VISION, TINY_OPEN_CLIP
from open_clip.loss import ClipLoss, SigLipLoss

from fmkit.losses.contrastive import AccumulatedContrastiveLoss
from fmkit.models.clip import ClipModelSpec, build_clip_model

TINY_VISION = {**TINY_CLIP_VISION, "num_hidden_layers": 2}
TINY_TEXT = {**TINY_CLIP_TEXT, "num_hidden_layers": 2}


def tiny(model: str = "clip", **options) -> ClipModelSpec:
    return ClipModelSpec(model=model, vision_config=TINY_VISION, text_config=TINY_TEXT, projection_dim=32, **options)


@pytest.fixture(scope="module")
def open_clip_name(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("open_clip") / "tiny-vit-2.json"
    path.write_text(json.dumps({**TINY_OPEN_CLIP, "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "layers": 2},
                                "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "layers": 2}}))  # fmt: skip
    return f"open_clip:{path}"


def loss_and_gradients(spec: ClipModelSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_clip_model(spec).train()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, 3, model.image_size, model.image_size, generator=generator)
    ids = torch.randint(0, 49406, (4, model.context_length), generator=generator)
    ids[:, -1] = 49407
    loss = ClipLoss()(*model(pixels, ids))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["clip", "open_clip"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family, open_clip_name):
    model = open_clip_name if family == "open_clip" else "clip"
    plain_loss, plain = loss_and_gradients(tiny(model))
    ckpt_loss, ckpt = loss_and_gradients(tiny(model, gradient_checkpointing=True))
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", ["clip", "open_clip"])
def test_locking_a_tower_leaves_it_without_gradients(family, open_clip_name):
    model = open_clip_name if family == "open_clip" else "clip"
    _, gradients = loss_and_gradients(tiny(model, lock_image=True))
    image_prefixes = ("clip.vision_model.", "clip.visual_projection", "clip.visual.")
    assert not [name for name in gradients if name.startswith(image_prefixes)]
    assert [name for name in gradients if "text" in name or "token_embedding" in name]


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_two_cached_micro_batches_give_the_big_batch_gradients(loss):
    """Every parameter's gradient, temperature and bias included, as the loop computes them: each micro-batch's
    loss divided by the step's 16 rows. (End to end, Adam would hide a mis-scaled temperature gradient.)"""
    loss_fn = SigLipLoss() if loss == "siglip" else ClipLoss()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(16, 3, 16, 16, generator=generator)
    ids = torch.randint(0, 49406, (16, 16), generator=generator)
    ids[:, -1] = 49407
    gradients, values = [], []
    for parts in (1, 2):
        torch.manual_seed(0)
        model = build_clip_model(tiny(loss=loss))
        contrastive = AccumulatedContrastiveLoss(lambda im, tx, scale, bias: loss_fn(im, tx, scale, bias) * len(im))
        chunks = list(zip(pixels.chunk(parts), ids.chunk(parts), strict=True))
        with torch.no_grad():
            contrastive.begin([model(p, i)[:2] for p, i in chunks])
        value = 0.0
        for position, (p, i) in enumerate(chunks):
            image, text, scale, bias = model(p, i)
            step_loss = contrastive((image, text), (scale, bias), position)
            (step_loss / 16).backward()
            value += step_loss.item()
        gradients.append({n: p.grad for n, p in model.named_parameters()})
        values.append(value)
    assert values[1] == pytest.approx(values[0], rel=1e-6)
    big, accumulated = gradients
    assert "logit_scale" in big and ("logit_bias" in big) == (loss == "siglip")
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-7, msg=name)
