"""Image<->text retrieval recall and zero-shot hits, from normalised embeddings."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import open_clip
import torch


def recall_at_k(image: torch.Tensor, text: torch.Tensor, captions: Sequence[str], ks: Sequence[int]) -> dict:
    """Recall@k both ways over paired rows of `image` and `text`.

    A retrieved item counts as correct when its caption is the query's caption, not only when it is the same
    row: with templated or repeated captions ("a photo of a cat" twice), either copy is a right answer, and
    counting only the row would cap recall below 1 for a perfect model.
    """
    ids = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])
    similarity = image.float() @ text.float().T
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
        correct = caption_id[ranked] == caption_id[:, None]
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = correct[:, :k].any(dim=1).float().mean().item()
    return metrics


def zero_shot_hits(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """How many rows have their label among the top k classes, for each k."""
    ranked = logits.topk(max(ks), dim=1).indices
    correct = ranked == labels[:, None]
    return [float(correct[:, :k].any(dim=1).sum()) for k in ks]


def recall_at_k_chance(captions: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """Recall@k of a random ranking, the baseline beside `recall_at_k` (the same both ways).

    A query whose caption m of the n rows share misses with probability C(n - m, k) / C(n, k).
    """
    counts = Counter(captions)
    n = len(captions)
    metrics = {}
    for k in ks:
        misses = [math.prod((n - counts[c] - j) / (n - j) for j in range(min(k, n))) for c in captions]
        chance = 1.0 - sum(misses) / max(n, 1)
        for direction in ("image_to_text", "text_to_image"):
            metrics[f"{direction}_recall@{k}_chance"] = chance
    return metrics


def zero_shot_chance(classes: int, ks: Sequence[int]) -> dict[str, float]:
    """Top-k accuracy of guessing k classes at random: the baseline beside zero_shot_top<k>."""
    return {f"zero_shot_top{k}_chance": min(k, classes) / classes for k in ks}


def zero_shot_accuracy(
    model,
    tokenize: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda hits: hits,
) -> dict[str, float]:
    """zero_shot_top1 (and top5 beyond 5 classes) of a CLIP-style `model` (encode_image / encode_text) over
    (normalised pixels, labels) batches, each beside its chance; `reduce` sums the counts over processes.

    Each class's weights are its prompts' text embeddings averaged (open_clip's zero-shot classifier builder).
    """
    classifier = open_clip.build_zero_shot_classifier(model, tokenize, class_names, templates, device=device).float()
    top = (1, 5) if len(class_names) > 5 else (1,)
    hits = torch.zeros(len(top) + 1, dtype=torch.float64, device=device)
    for pixels, labels in batches:
        features = model.encode_image(pixels.to(device), normalize=True).float()
        hits[:-1] += torch.tensor(zero_shot_hits(features @ classifier, labels.to(device), top), device=device)
        hits[-1] += len(labels)
    totals = reduce(hits).tolist()
    metrics = {f"zero_shot_top{k}": totals[i] / max(totals[-1], 1.0) for i, k in enumerate(top)}
    return {**metrics, **zero_shot_chance(len(class_names), top)}
