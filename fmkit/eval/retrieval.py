"""Image<->text retrieval recall and zero-shot hits, from normalised embeddings."""

from __future__ import annotations

from collections.abc import Sequence

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
