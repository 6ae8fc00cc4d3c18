"""CLIP-style image–text contrastive pretraining (and SigLIP's sigmoid variant) on the shared loop.

The losses are open_clip's own: ClipLoss with features gathered across ranks *with gradients* and a local
loss (each rank scores its own rows against every rank's columns — the configuration that scales), or
SigLipLoss. With gradient accumulation, every micro-batch's features are computed first without gradients
and cached, so each micro-batch's loss is taken over the whole accumulated batch (open_clip's --accum-freq):
the contrastive batch is the global batch, however it is split over micro-batches and processes.

Evaluation: zero-shot classification of held-out labelled images (class prompts through open_clip's
zero-shot classifier builder), image<->text retrieval recall@1/5/10 and the contrastive loss on held-out
pairs. The export is a transformers CLIPModel with its CLIPProcessor; open_clip architectures are also saved
in open_clip's own layout.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object, send_to_device
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from fmkit.config import POSITIVE, TrainConfig, ranged
from fmkit.data.embedded_pairs import embedded_pairs
from fmkit.data.image_array import label_classes
from fmkit.data.image_text import (
    ClassifiedImages,
    Images,
    ImageTextPairs,
    PairBatches,
    classified_pixels,
    load_pairs,
)
from fmkit.data.images import Listing, iter_image_records
from fmkit.data.loader import EVAL_STREAM, TRAIN_STREAM, Sharding, eval_batches
from fmkit.errors import ConfigError, DataError
from fmkit.eval.retrieval import recall_at_k, recall_at_k_chance, zero_shot_accuracy
from fmkit.losses.contrastive import AccumulatedContrastiveLoss
from fmkit.models.batch_norm import running_statistics_kept
from fmkit.models.clip import MAX_LOGIT_SCALE, ClipModel, ClipModelSpec, build_clip_model
from fmkit.models.clip_export import export_clip
from fmkit.models.clip_processor import clip_tokenizer
from fmkit.tasks import register_task
from fmkit.tasks.base import MAIN_STAGE, BatchCount, CardDetails, Supports, Task

logger = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)


@dataclass
class ClipConfig(TrainConfig, ClipModelSpec):
    """Contrastive image-text pretraining (CLIP, SigLIP) on image-text pairs."""

    train_data: str | list[str] | None = None
    """Image-text pairs: WebDataset .tar shards (image + .txt or .json caption; folders and globs of shards),
    .csv/.tsv/.jsonl tables (image path + caption column) or hf:NAME[:SPLIT]. Default: the embedded pairs
    (scikit-learn digits and scikit-image photographs with template captions)."""
    eval_data: str | list[str] | None = None
    """Held-out pairs for retrieval and the held-out loss (same forms); default: held_out_pairs of train_data."""
    held_out_pairs: int = ranged(1000, POSITIVE)
    """Pairs of train_data set aside for evaluation when eval_data is not given."""
    image_column: str = "image"
    """Image-path column of .csv/.tsv/.jsonl tables (relative to the table's folder)."""
    caption_column: str = "caption"
    """Caption column of tables and HF datasets, and the caption key of .json shard members."""
    zero_shot_data: str | list[str] | None = None
    """Labelled images for zero-shot classification: ImageFolder layout, .tar shards with .cls labels or
    hf:NAME[:SPLIT] with a label column. The embedded default uses its held-out digits."""
    zero_shot_templates: list[str] | None = None
    """Prompts a class name is put into ({} marks where); their text embeddings are averaged into the class's
    weights. Default: the embedded digits' own prompts for the embedded data, else ["a photo of a {}."]"""
    max_image_pixels: int = ranged(89_478_485, POSITIVE)
    """Refuse larger images (possible decompression bombs) instead of decoding them."""

    def validate(self) -> None:
        super().validate()
        templates = self.zero_shot_templates
        if templates is not None and (not templates or any("{}" not in t for t in templates)):
            raise ConfigError(f"zero_shot_templates {self.zero_shot_templates}: each needs a {{}} for the class name")


@dataclass
class Tokenize:
    """Captions to fixed-length token ids (picklable, for data-loader workers)."""

    tokenizer: object
    context_length: int

    def __call__(self, texts: list[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"]


@register_task
class ClipTask(Task):
    name = "clip"
    config_class = ClipConfig
    config: ClipConfig

    def setup(self, accelerator) -> nn.Module:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers tokenize; the Rust pool would fork
        config = self.config
        self.device = accelerator.device
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        model = build_clip_model(config)
        self.tokenizer = clip_tokenizer(model.context_length)
        self.tokenize = Tokenize(self.tokenizer, model.context_length)
        self.image_size = model.image_size
        self.mean = torch.tensor(model.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(model.std, device=self.device).view(1, 3, 1, 1) * 255
        self.train_pairs, self.held_out, self.zero_shot, self.data_description = self._load_data()
        rank, world = accelerator.process_index, accelerator.num_processes
        if config.loss == "siglip":
            loss_fn, self.held_out_loss_fn = SigLipLoss(rank=rank, world_size=world), SigLipLoss()
        else:
            loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)
            self.held_out_loss_fn = ClipLoss()
        self.contrastive = AccumulatedContrastiveLoss(
            lambda image, text, scale, bias: loss_fn(image, text, scale, bias) * image.shape[0]
        )  # open_clip's losses are means over the local rows
        self.skipped: Counter = Counter()
        self.warned_small_held_out = False
        self.step_batches: list[dict] = []
        self.model_description = model.describe()
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model

    def supports(self) -> Supports:
        return Supports(
            deepspeed_zero3=False,
            fsdp=False,
            why="transformers' CLIP text embeddings and open_clip's towers read parameters outside their module's "
            "forward, where sharded parameters are not gathered; use DeepSpeed ZeRO-2 (deepspeed_zero2.yaml) or DDP",
        )

    def state_dict(self) -> dict:
        return {"skipped_pairs": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = Counter(state["skipped_pairs"])

    # -- data --------------------------------------------------------------------------------------------------
    def _load_data(self) -> tuple[ImageTextPairs, ImageTextPairs, ClassifiedImages | None, str]:
        config = self.config
        if not config.train_data:
            embedded = embedded_pairs(self.image_size)
            held_out = self._pairs(config.eval_data) if config.eval_data else embedded.held_out
            zero_shot = self._classified(config.zero_shot_data) if config.zero_shot_data else embedded.zero_shot
            return embedded.train, held_out, zero_shot, embedded.train.description
        train = self._pairs(config.train_data)
        if config.eval_data:
            held_out = self._pairs(config.eval_data)
        else:
            train, held_out = _split(train, config.held_out_pairs)
        zero_shot = self._classified(config.zero_shot_data) if config.zero_shot_data else None
        return train, held_out, zero_shot, train.description

    def _pairs(self, sources) -> ImageTextPairs:
        pairs = load_pairs(sources, self.config.image_column, self.config.caption_column)
        if pairs.skipped:
            logger.warning("%s", pairs.description)
        return pairs

    def _classified(self, sources) -> ClassifiedImages:
        sources = [sources] if isinstance(sources, str) else list(sources)
        listing = Listing()
        records = list(iter_image_records(sources, labelled=True, listing=listing))
        class_names = label_classes(records, sources, listing)
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index[record.label] for record in records], dtype=np.int64)
        description = f"{len(records):,} labelled images in {len(class_names)} classes from {', '.join(sources)}"
        return ClassifiedImages(Images(records=records), labels, class_names, description)

    def _batches(self, pairs: ImageTextPairs, stream: int) -> PairBatches:
        config = self.config
        return PairBatches(pairs, self.tokenize, self.image_size, config.max_image_pixels, config.seed, stream,
                           train=stream == TRAIN_STREAM)  # fmt: skip

    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        batches = self._batches(self.train_pairs, TRAIN_STREAM)
        return self.indexed_batches(len(self.train_pairs), batches, start, sharding)

    def count(self, batch: dict) -> BatchCount:
        self._note_skipped(batch["skipped"])
        samples = batch["pixel_values"].shape[0]
        return BatchCount(items=samples, samples=samples)

    def _note_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for reason, name in skipped:
            if self.skipped[reason] < 3:
                logger.warning("skipped %s (%s); the next good pair takes its place", name, reason)
            self.skipped[reason] += 1

    # -- loss --------------------------------------------------------------------------------------------------
    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std

    def begin_step(self, model: nn.Module, micro_batches: list[dict], stage: str = MAIN_STAGE) -> None:
        """With accumulation, cache every micro-batch's features: they are each other's negatives (a BatchNorm
        tower's running statistics are left to the forward with gradients, as in SimCLR)."""
        self.step_batches = micro_batches
        with running_statistics_kept(model):
            self.contrastive.begin(
                [model(self.normalize(b["pixel_values"]), b["input_ids"])[:2] for b in micro_batches]
                if len(micro_batches) > 1
                else []
            )

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        """The loss over the step's whole contrastive batch, as this micro-batch's share of it."""
        position = next(i for i, b in enumerate(self.step_batches) if b is batch)  # the loop passes the same dicts
        image, text, scale, bias = model(self.normalize(batch["pixel_values"]), batch["input_ids"])
        return self.contrastive((image, text), (scale, bias), position)

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        raw: ClipModel = accelerator.unwrap_model(model)
        metrics = self._retrieval(raw, accelerator)
        if self.zero_shot is not None:
            metrics.update(self._zero_shot(raw, accelerator))
        skipped = torch.tensor([float(sum(self.skipped.values()))], device=accelerator.device)
        metrics["skipped_pairs"] = accelerator.reduce(skipped, "sum").item()
        return metrics

    def _retrieval(self, model: ClipModel, accelerator) -> dict[str, float]:
        images, texts, captions = [], [], []
        batches = eval_batches(len(self.held_out), self._batches(self.held_out, EVAL_STREAM),
                               self.config.per_device_batch_size, self.sharding, self.config.eval_batches)  # fmt: skip
        for batch in batches:
            batch = send_to_device(batch, accelerator.device)
            images.append(model.encode_image(self.normalize(batch["pixel_values"]), normalize=True).float())
            texts.append(model.encode_text(batch["input_ids"], normalize=True).float())
            captions += batch["captions"]
        image = accelerator.gather(torch.cat(images)).cpu()
        text = accelerator.gather(torch.cat(texts)).cpu()
        captions = gather_object(captions) if accelerator.num_processes > 1 else captions
        metrics = {**recall_at_k(image, text, captions, RECALL_AT), **recall_at_k_chance(captions, RECALL_AT)}
        metrics["eval_loss"] = self._held_out_loss(model, image, text, accelerator)
        return metrics

    def _held_out_loss(self, model: ClipModel, image: torch.Tensor, text: torch.Tensor, accelerator) -> float:
        """The mean loss over held-out chunks the size of a training step's contrastive batch, so it compares
        with the training loss; a partial last chunk (fewer negatives, a lower loss) is left out. A held-out
        set smaller than one chunk is scored whole, with a warning that it is not comparable."""
        config = self.config
        chunk = config.per_device_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        if len(image) < chunk:
            if not self.warned_small_held_out:
                logger.warning("eval_loss: %d held-out pairs, fewer than a contrastive batch of %d; "
                               "it is not comparable with the training loss", len(image), chunk)  # fmt: skip
                self.warned_small_held_out = True
            chunk = len(image)
        scale = model.logit_scale.detach().float().cpu().clamp(0, MAX_LOGIT_SCALE).exp()
        bias = None if model.logit_bias is None else model.logit_bias.detach().float().cpu()
        starts = range(0, len(image) - chunk + 1, chunk)
        losses = [float(self.held_out_loss_fn(image[s : s + chunk], text[s : s + chunk], scale, bias)) for s in starts]
        return sum(losses) / len(losses)

    def _zero_shot(self, model: ClipModel, accelerator) -> dict[str, float]:
        data = self.zero_shot
        templates = self.config.zero_shot_templates or list(data.templates)
        per_rank = len(data.labels) // self.sharding.world
        first = self.sharding.rank * per_rank
        size = self.config.per_device_batch_size

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(first, first + per_rank, size):
                indices = np.arange(start, min(start + size, first + per_rank))
                batch = classified_pixels(data, indices, self.image_size, self.config.max_image_pixels)
                for reason, name in batch["skipped"]:
                    logger.warning("zero-shot evaluation left out %s (%s)", name, reason)
                yield self.normalize(batch["pixel_values"].to(accelerator.device)), batch["labels"]

        return zero_shot_accuracy(model, self.tokenize, data.class_names, templates, batches(), accelerator.device,
                                  lambda hits: accelerator.reduce(hits, "sum"))  # fmt: skip

    # -- export ------------------------------------------------------------------------------------------------
    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        self.exported_hf = export_clip(model, state_dict, output_dir)

    def card_details(self) -> CardDetails:
        config = self.config
        global_batch = config.per_device_batch_size * config.gradient_accumulation_steps * self.sharding.world
        training = {"loss": "SigLIP sigmoid" if config.loss == "siglip" else "CLIP InfoNCE",
                    "contrastive batch": global_batch}  # fmt: skip
        for tower in ("image", "text"):
            source = getattr(config, f"{tower}_tower_from")
            if source or getattr(config, f"lock_{tower}"):
                training[f"{tower} tower"] = f"{'locked' if getattr(config, f'lock_{tower}') else 'trained'}" + (
                    f", initialised from {source}" if source else ""
                )
        if config.loss == "siglip" and self.exported_hf:
            training["logit bias"] = "learned; CLIPModel has none, so it is kept as config.json's logit_bias"
        if self.skipped:
            training["bad pairs replaced"] = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
        hf = self.exported_hf
        usage = (
            "from transformers import pipeline\n\n"
            'classify = pipeline("zero-shot-image-classification", model="PATH_OR_HUB_ID")\n'
            'classify("image.jpg", candidate_labels=["a cat", "a dog"])'
            if hf
            else 'import open_clip\n\nmodel, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH")'
        )
        return CardDetails(
            title="CLIP model pretrained with fmkit" if config.loss == "clip" else "SigLIP model pretrained with fmkit",
            library_name="transformers" if hf else "open_clip",
            pipeline_tag="zero-shot-image-classification",
            tags=["contrastive", config.loss],
            architecture=f"{self.model_description}; {self.num_parameters / 1e6:.1f}M parameters "
            f"({self.trainable_parameters / 1e6:.1f}M trained)",
            data=self.data_description,
            training=training,
            usage=usage,
        )


def _split(pairs: ImageTextPairs, held_out: int) -> tuple[ImageTextPairs, ImageTextPairs]:
    """A fixed random set of `held_out` pairs for evaluation; the rest train."""
    if held_out >= len(pairs):
        raise DataError(
            f"{pairs.description}: cannot hold out {held_out} pairs; lower held_out_pairs or give eval_data"
        )
    order = np.random.default_rng(0).permutation(len(pairs))
    return pairs.subset(np.sort(order[held_out:])), pairs.subset(np.sort(order[:held_out]))
