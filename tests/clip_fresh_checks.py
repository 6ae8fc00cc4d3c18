"""What a user does with an exported CLIP in a new Python process, with plain transformers and open_clip.

tests/test_clip_recipe.py runs each function in a fresh interpreter; each prints one JSON line.
"""

from __future__ import annotations

import json
import sys

import torch
from PIL import Image


def both_layouts(folder: str, image_path: str) -> None:
    """Embeddings of the open_clip layout and of the converted CLIPModel for the same inputs."""
    import open_clip
    from transformers import CLIPModel, CLIPProcessor

    oc, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
    oc_tokenize = open_clip.get_tokenizer("local-dir:" + folder)
    hf, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    oc.eval()
    image, texts = Image.open(image_path).convert("RGB"), ["a handwritten 3", "a handwritten 7"]
    inputs = processor(text=texts, images=image, return_tensors="pt", padding="max_length")
    with torch.no_grad():
        oc_image = oc.encode_image(inputs["pixel_values"])
        hf_image = hf.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        oc_text = oc.encode_text(oc_tokenize(texts))
        hf_text = hf.get_text_features(input_ids=inputs["input_ids"]).pooler_output
        own_preprocessing = oc.encode_image(preprocess(image)[None])
    report = {
        "image": (oc_image - hf_image).abs().max().item(),
        "text": (oc_text - hf_text).abs().max().item(),
        "preprocess": (own_preprocessing - oc_image).abs().max().item(),
        "norm": oc_image.norm().item(),
        "scale": (oc.logit_scale - hf.logit_scale).abs().item(),
    }
    print(json.dumps(report))


def demo_zero_shot(folder: str) -> None:
    """Zero-shot accuracy on the demo's held-out digits from the export alone, and one pipeline call."""
    from transformers import CLIPModel, CLIPProcessor, pipeline

    from fmkit.data.embedded_pairs import ZERO_SHOT_TEMPLATES, embedded_pairs

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    data = embedded_pairs(32).zero_shot
    images = [Image.fromarray(pixels) for pixels in data.images.pixels]
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        weights = []
        for name in data.class_names:
            prompts = processor(text=[t.format(name) for t in ZERO_SHOT_TEMPLATES], return_tensors="pt", padding=True)
            text = normalize(model.get_text_features(**prompts).pooler_output, dim=-1).mean(0)
            weights.append(text / text.norm())
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image = normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    accuracy = ((image @ torch.stack(weights).T).argmax(1).numpy() == data.labels).mean()
    classify = pipeline("zero-shot-image-classification", model=folder)
    top = classify(images[0], candidate_labels=data.class_names, hypothesis_template="a handwritten digit {}.")
    report = {"accuracy": float(accuracy), "labels": sorted(t["label"] for t in top),
              "total": sum(t["score"] for t in top)}  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
