"""open_clip <-> Hugging Face CLIP: the offline processor against open_clip's tokenizer and eval transform, and
saved or converted tiny random models against the originals, reloaded in a fresh process."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD
from PIL import Image

from fmkit.errors import FmkitError
from fmkit.models.clip_processor import clip_image_processor, clip_processor, clip_tokenizer
from fmkit.models.open_clip_convert import NotConvertible, open_clip_to_hf, save_open_clip

CONTEXT = 16
END_OF_TEXT = 49407
TEXTS = [
    "a photo of a cat.",
    "Hello, World!!! What's up?",
    "The year 2024: 3.14159 & 42% off",
    "UPPER lower MiXeD CamelCase",
    "naïve café résumé — 東京タワー 🚀 Ünïcödé",
    "don't won't it's we'll they're I'd",
    "multiple   spaces\tand\nnewlines",
    "",
    "a long caption that goes on and on well past the sixteen tokens of context",
    "supercalifragilisticexpialidocious" * 3,
]
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic", "resize_mode": "shortest"}


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer(CONTEXT)


def _until_end_of_text(ids: list[int]) -> list[int]:
    return ids[: ids.index(END_OF_TEXT) + 1]


def test_tokenizer_matches_open_clip(tokenizer):
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    ours = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=CONTEXT)["input_ids"]
    theirs = open_clip.tokenize(TEXTS, CONTEXT).tolist()
    for text, hf_ids, open_clip_ids in zip(TEXTS, ours, theirs, strict=True):
        assert len(hf_ids) == CONTEXT
        # Equal up to and including the first end-of-text (kept last when truncated). After it open_clip pads
        # with 0 and transformers with end-of-text: the causal text tower pooled there never sees either.
        assert _until_end_of_text(hf_ids) == _until_end_of_text(open_clip_ids), text
        tail = len(_until_end_of_text(hf_ids))
        assert set(hf_ids[tail:]) <= {END_OF_TEXT} and set(open_clip_ids[tail:]) <= {0}
    assert ours[-1][-1] == END_OF_TEXT and 0 not in theirs[-1]  # the long texts were truncated


def test_tokenizer_matches_after_open_clip_cleaning(tokenizer):
    """Only open_clip cleans text with ftfy and html.unescape; the module docstring's remedy works."""
    texts = ["fish &amp; chips", "don’t stop", "ﬁne ligature", "１２３ fullwidth", "cafÃ© mojibake"]
    theirs = open_clip.tokenize(texts, CONTEXT).tolist()
    raw = tokenizer(texts)["input_ids"]
    cleaned = tokenizer([open_clip.tokenizer.basic_clean(text) for text in texts])["input_ids"]
    assert all(_until_end_of_text(a) != _until_end_of_text(b) for a, b in zip(raw, theirs, strict=True))
    assert [_until_end_of_text(ids) for ids in cleaned] == [_until_end_of_text(ids) for ids in theirs]


def _chelsea() -> Image.Image:
    """scikit-image's bundled 451x300 photo, read from the package folder (its loaders may download)."""
    package = Path(importlib.util.find_spec("skimage").origin).parent
    return Image.open(package / "data" / "chelsea.png").convert("RGB")


def test_image_processor_matches_open_clip_eval_transform():
    image, size = _chelsea(), 224
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    ours = clip_image_processor(size, mean, std)(images=image, return_tensors="pt")["pixel_values"][0]
    reference = open_clip.image_transform(size, is_train=False, mean=mean, std=std)(image)
    # transformers resizes a uint8 tensor with torchvision and open_clip a PIL image: both round to 8 bits,
    # at most one level apart, i.e. 1 / (255 * std) after normalising. Measured: 488 of 150528 values one level
    # apart (max 0.01501), the rest within 2e-7, mean 5e-5.
    one_level = 1 / (255 * min(std)) + 1e-6

    def matches(other: torch.Tensor) -> bool:
        difference = (ours - other).abs()
        return difference.max().item() <= one_level and difference.mean().item() < 1e-3

    assert ours.shape == reference.shape == (3, size, size)
    assert matches(reference), f"max {(ours - reference).abs().max():.5f}, mean {(ours - reference).abs().mean():.6f}"
    # The tolerance is tight enough to catch a wrong mean/std, a squashed resize or a crop one pixel over.
    imagenet = open_clip.image_transform(size, False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    squashed = open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode="squash")
    resized = TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC)
    shifted = TF.normalize(TF.to_tensor(TF.crop(resized, 0, (resized.width - size) // 2 + 1, size, size)), mean, std)
    assert not any(matches(wrong) for wrong in (imagenet(image), squashed(image), shifted))


def _tiny_model(tmp_path: Path, quick_gelu: bool) -> tuple[open_clip.CLIP, dict]:
    """A tiny model registered the way users add configs, with every weight moved off its initial value."""
    name = f"fmkit-tiny-{'quick-gelu' if quick_gelu else 'gelu'}"
    model_cfg = {**copy.deepcopy(TINY), "quick_gelu": quick_gelu}
    (tmp_path / f"{name}.json").write_text(json.dumps(model_cfg), encoding="utf-8")
    open_clip.add_model_config(tmp_path / f"{name}.json")
    model = open_clip.create_model(name).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model, model_cfg


# Runs in a fresh interpreter: loads what the test saved, prints max abs differences to the expected outputs.
FRESH_PROCESS_CHECK = """
import json, sys
import open_clip, torch
from transformers import CLIPModel, CLIPProcessor

report = {}
for case in json.loads(sys.argv[1]):
    data = torch.load(case["data"])
    if "open_clip" in case:
        model, _, _ = open_clip.create_model_and_transforms("local-dir:" + case["open_clip"])
        model.eval()
        with torch.no_grad():
            image = model.encode_image(data["images"])
            text = model.encode_text(data["open_clip_ids"])
        report[case["name"]] = {
            "image": (image - data["image_features"]).abs().max().item(),
            "text": (text - data["text_features"]).abs().max().item(),
            "preprocess_cfg": model.visual.preprocess_cfg,
        }
    else:
        model = CLIPModel.from_pretrained(case["hf"])
        processor = CLIPProcessor.from_pretrained(case["hf"])
        batch = processor.tokenizer(data["texts"], padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            image = model.get_image_features(pixel_values=data["images"]).pooler_output
            text = model.get_text_features(**batch).pooler_output
        report[case["name"]] = {
            "image": (image - data["image_features"]).abs().max().item(),
            "text": (text - data["text_features"]).abs().max().item(),
            "logit_scale": (model.logit_scale - data["logit_scale"]).abs().item(),
            "hidden_act": model.config.text_config.hidden_act,
        }
print(json.dumps(report))
"""


def _expected(model: open_clip.CLIP, path: Path) -> Path:
    """Inputs and open_clip's outputs for the fresh process to compare with."""
    images = torch.randn(3, 3, 32, 32)
    open_clip_ids = open_clip.tokenize(TEXTS, CONTEXT)
    with torch.no_grad():
        data = {
            "images": images,
            "texts": TEXTS,
            "open_clip_ids": open_clip_ids,
            "image_features": model.encode_image(images),
            "text_features": model.encode_text(open_clip_ids),
            "logit_scale": model.logit_scale.detach().clone(),
        }
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def fresh_process_report(tmp_path_factory) -> dict:
    """Save a gelu and a quick_gelu tiny model both ways, then reload all of them in one new interpreter."""
    tmp_path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cases = []
    for activation in ("gelu", "quick_gelu"):
        model, model_cfg = _tiny_model(tmp_path, activation == "quick_gelu")
        # A tied weight: safetensors refuses shared memory, and open_clip's strict load needs both keys.
        model.ln_final.weight = model.visual.ln_post.weight
        data = str(_expected(model, tmp_path / f"{activation}.pt"))
        open_clip_folder, hf_folder = tmp_path / f"open_clip-{activation}", tmp_path / f"hf-{activation}"
        save_open_clip(model, model_cfg, PREPROCESS, open_clip_folder)
        open_clip_to_hf(model, model_cfg).save_pretrained(hf_folder)
        clip_processor(32, PREPROCESS["mean"], PREPROCESS["std"], CONTEXT).save_pretrained(hf_folder)
        cases.append({"name": f"open_clip-{activation}", "open_clip": str(open_clip_folder), "data": data})
        cases.append({"name": f"hf-{activation}", "hf": str(hf_folder), "data": data})
    command = [sys.executable, "-c", FRESH_PROCESS_CHECK, json.dumps(cases)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_save_open_clip_reloads_in_open_clip(fresh_process_report, activation):
    report = fresh_process_report[f"open_clip-{activation}"]
    assert report["image"] < 1e-5 and report["text"] < 1e-5, report
    assert (
        report["preprocess_cfg"]["mean"] == PREPROCESS["mean"] and report["preprocess_cfg"]["std"] == PREPROCESS["std"]
    )


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_open_clip_to_hf_matches_open_clip(fresh_process_report, activation):
    report = fresh_process_report[f"hf-{activation}"]
    assert report["hidden_act"] == activation
    assert report["image"] < 1e-5 and report["text"] < 1e-5, report
    assert report["logit_scale"] == 0.0


def _meta_model(model_cfg: dict) -> torch.nn.Module:
    """Full-size architectures without allocating or initialising their weights."""
    model_cfg = copy.deepcopy(model_cfg)
    model_class = open_clip.CustomTextCLIP if model_cfg.pop("custom_text", False) else open_clip.CLIP
    with torch.device("meta"):
        return model_class(**model_cfg)


def test_vit_b_32_maps_one_to_one():
    model_cfg = open_clip.get_model_config("ViT-B-32")
    model = _meta_model(model_cfg)
    hf_model = open_clip_to_hf(model, model_cfg)  # loads strictly: no missing or unexpected keys
    vision, text = hf_model.config.vision_config, hf_model.config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (224, 32, 768, 12)
    assert (vision.num_attention_heads, vision.intermediate_size, vision.hidden_act) == (12, 3072, "gelu")
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 12, 8)
    assert text.intermediate_size == 2048
    assert (text.max_position_embeddings, text.vocab_size, text.eos_token_id) == (77, 49408, END_OF_TEXT)
    assert hf_model.config.projection_dim == 512 and vision.layer_norm_eps == text.layer_norm_eps == 1e-5
    # One tensor each, except each block's in_proj weight and bias, split into query, key and value.
    assert len(hf_model.state_dict()) == len(model.state_dict()) + 4 * (12 + 12)


def _variant(vision: dict | None = None, text: dict | None = None, **top) -> dict:
    model_cfg = open_clip.get_model_config("ViT-B-32")
    model_cfg["vision_cfg"].update(vision or {})
    model_cfg["text_cfg"].update(text or {})
    return {**model_cfg, **top}


@pytest.mark.parametrize(
    ("model_cfg", "reason"),
    [
        (open_clip.get_model_config("RN50"), "ModifiedResNet image tower"),
        (_variant(vision={"attentional_pool": True}), "attentional pooling"),
        (_variant(vision={"pool_type": "avg"}), "image pool_type 'avg'"),
        (_variant(init_logit_bias=-10.0), "logit_bias"),
        (_variant(vision={"ls_init_value": 1e-5}), "layer scale"),
        (_variant(vision={"qk_norm": True}), "custom attention blocks"),
        (_variant(text={"pool_type": "last"}), "text pool_type 'last'"),
        (_variant(text={"no_causal_mask": True}), "no_causal_mask"),
        (_variant(text={"vocab_size": 32000}), "custom text vocabulary"),
        (_variant(text={"proj_bias": True}), "text projection"),
        (_variant(vision={"act_kwargs": {"approximate": "tanh"}}), "activation"),
        (_variant(custom_text=True), "CustomTextCLIP"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_unmappable_models_raise(model_cfg, reason):
    with pytest.raises(NotConvertible, match=reason) as raised:
        open_clip_to_hf(_meta_model(model_cfg), model_cfg)
    assert isinstance(raised.value, FmkitError)


def test_quick_gelu_must_match_model_cfg():
    """A model built with force_quick_gelu but saved with its registry config would convert wrongly."""
    model_cfg = open_clip.get_model_config("ViT-B-32")
    with pytest.raises(NotConvertible, match="quick_gelu"):
        open_clip_to_hf(_meta_model({**model_cfg, "quick_gelu": True}), model_cfg)
