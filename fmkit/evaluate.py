"""Measure a saved model without training it: what `python recipes/evaluate.py MODEL` runs.

What MODEL's config.json says it is decides what is measured, each number beside its trivial baseline:

* a vision backbone (what the pretext and contrastive recipes export): linear probe, kNN and few-shot accuracy
  on a labelled probe set, and the same for a randomly initialised backbone of its architecture;
* a CLIP model: zero-shot accuracy on the probe set's classes beside chance, and its image tower probed like a
  backbone;
* a masked or causal language model: the MLM or CLM task's own held-out evaluation (loss, perplexity, masked-token
  accuracy or the unigram loss), on the data the run used (its config.yaml) or the embedded corpus;
* a text or image classifier (what the fine-tune recipe exports): accuracy and macro-F1 on the test split of the
  data the run used (its config.yaml) or the fine-tune demo's, beside always answering the majority class.

The measurements are the training tasks' own (fmkit.eval.representation, fmkit.eval.retrieval, the text tasks'
`evaluate`), so a number here compares with the same number logged while training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from fmkit.config import NON_NEGATIVE, POSITIVE, TrainConfig, check_ranges, parse_config, ranged
from fmkit.data.image_array import PIL_MAX_PIXELS
from fmkit.data.loader import Sharding
from fmkit.errors import ConfigError, FmkitError
from fmkit.eval.probe import KNN_K
from fmkit.eval.representation import ProbePixels, ProbeSplits, RepresentationProbe, load_probe_splits
from fmkit.models.backbone import (
    Backbone,
    FeaturePooling,
    build_backbone,
    load_image_processor,
    processor_geometry,
    random_copy,
)

logger = logging.getLogger(__name__)

PROG = "evaluate.py"
VISION_BACKBONE_TYPES = ("resnet", "regnet", "convnext", "convnextv2", "vit", "deit", "dinov2")
"""Model types fmkit.models.backbone turns into one feature vector per image."""
KINDS = (
    f"a vision backbone (model_type {', '.join(VISION_BACKBONE_TYPES)}), a CLIP model (CLIPModel) or a "
    "language model (*ForMaskedLM, *ForCausalLM) or a classifier (*ForSequenceClassification, *ForImageClassification)"
)
CLASSIFIER_KINDS = {"text-classification": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                    "image-classification": MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES}  # fmt: skip
"""The fine-tune task that scores each kind of classifier, by the architectures its config.json names."""
RUN_CONFIG = "config.yaml"
"""What an fmkit output folder keeps of the run: its data, seed and probe settings are evaluate's defaults."""


@dataclass
class EvaluateConfig:
    """Evaluate a model without training it: python recipes/evaluate.py MODEL [--key value ...]. One process, on
    the GPU if one is visible, else the CPU (no accelerate launch needed). Prints one line per metric and writes
    them as JSON."""

    model: str | None = None
    """An fmkit output folder or a Hub model id; also accepted as the first argument."""
    output_json: str | None = None
    """Where to write the metrics; default MODEL/evaluation.json for a local folder, else ./evaluation.json."""
    probe_train_images: str | list[str] | None = None
    """Vision and CLIP: labelled images the probes are fitted on (same forms as the vision recipes' option).
    Default: fmkit's probe set, fashion-mnist:train:10000 where Fashion-MNIST is installed, else
    embedded:digits:train."""
    probe_test_images: str | list[str] | None = None
    """Vision and CLIP: labelled images the probes (and CLIP's zero-shot) are scored on. Default:
    fashion-mnist:test:2000, else embedded:digits:test."""
    zero_shot_templates: list[str] | None = None
    """CLIP: prompts a class name is put into ({} marks where). Default: the embedded digits' own prompts for
    the digits, else ["a photo of a {}."]"""
    knn_k: int | None = ranged(None, POSITIVE)
    """Vision and CLIP: neighbours in the kNN vote; default: the run's (config.yaml), else fmkit's 200."""
    feature_pooling: FeaturePooling | None = None
    """Vision: how the backbone's output becomes one vector (default, patch_mean, stages); default: the run's."""
    seed: int | None = None
    """Vision and CLIP: seeds the random-init baseline and the probes; default: the run's seed (so its logged
    baseline is reproduced), else 42. Language models keep the run's seed, which fixes the held-out masks."""
    eval_files: str | list[str] | None = None
    """Language models: held-out text files instead of the run's held-out split (default: the embedded
    corpus's). The unigram baseline still counts the run's training text."""
    eval_batches: int = ranged(0, NON_NEGATIVE)
    """Language models: cap on held-out batches; 0 scores the whole held-out split."""
    batch_size: int = ranged(64, POSITIVE)
    """Images or token blocks per forward pass."""
    max_image_pixels: int = ranged(PIL_MAX_PIXELS, POSITIVE)
    """Refuse larger images (possible decompression bombs) instead of decoding them."""
    cpu: bool = False
    """Run on the CPU even when a GPU is visible."""
    cpu_threads: int = ranged(0, NON_NEGATIVE)
    """Torch threads on the CPU; 0 leaves torch's default."""


@dataclass
class Evaluation:
    kind: str
    metrics: dict[str, float]
    data: str
    """Which images or text were scored, for the JSON record."""


def parse_evaluate_config(argv: list[str]) -> EvaluateConfig:
    """MODEL may come first, as a positional argument, or as --model."""
    if argv and not argv[0].startswith("-"):
        argv = ["--model", argv[0], *argv[1:]]
    config = parse_config(EvaluateConfig, argv, prog=PROG)
    check_ranges(config)
    if not config.model:
        raise ConfigError(f"no MODEL given: expected an fmkit output folder or a Hub model id ({PROG} MODEL)")
    return config


def read_model_config(model: str) -> PretrainedConfig:
    """MODEL's config.json, from its folder or the Hub; a one-line error naming what is wrong."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{model}: no config.json in this folder (expected a model saved with save_pretrained)")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{model}: a file, not a model folder (expected an fmkit output folder or a Hub model id)")
    if not path.exists() and (model.startswith(("/", ".", "~")) or model.count("/") > 1):
        raise ConfigError(f"{model}: no such folder (and not a Hub model id, which is NAME or OWNER/NAME)")
    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        where = f"{model}/config.json: cannot read it" if path.is_dir() else f"{model}: no such folder or Hub model id"
        raise ConfigError(f"{where} ({str(error).splitlines()[0]})") from None


def model_kind(model: str, config: PretrainedConfig) -> str:
    architectures = config.architectures or []
    for kind, names in CLASSIFIER_KINDS.items():  # before the backbones: a ResNet classifier is model_type resnet
        if set(architectures) & set(names.values()):
            return kind
    if config.model_type == "clip":
        return "clip"
    if config.model_type in VISION_BACKBONE_TYPES:
        return "vision"
    if set(architectures) & set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()):
        return "mlm"
    if set(architectures) & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return "clm"
    raise ConfigError(
        f"{model}: config.json describes model_type {config.model_type!r} (architectures {architectures}); "
        f"evaluate.py measures {KINDS}"
    )


def run_settings(model: str) -> dict:
    """The resolved config an fmkit run saved beside its model; empty for other models."""
    path = Path(model).expanduser() / RUN_CONFIG
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def evaluate(config: EvaluateConfig, accelerator: Accelerator) -> Evaluation:
    settings = run_settings(config.model)
    model_config = read_model_config(config.model)
    kind = model_kind(config.model, model_config)
    if kind == "vision":
        return evaluate_backbone(config, model_config.model_type, settings, accelerator)
    if kind == "clip":
        return evaluate_clip(config, settings, accelerator)
    if kind in CLASSIFIER_KINDS:
        return evaluate_classifier(config, kind, model_config, accelerator)
    return evaluate_language_model(config, kind, model_config, accelerator)


# -- vision ---------------------------------------------------------------------------------------------------
def representation_metrics(
    backbone: Backbone, pixels: ProbePixels, probe: ProbeSplits, config: EvaluateConfig, settings: dict, accelerator
) -> dict[str, float]:
    """The frozen backbone's probes, then a random-init copy's, exactly as the vision tasks log them."""
    seed = _setting(config.seed, settings, "seed", TrainConfig.seed)
    knn_k = _setting(config.knn_k, settings, "knn_k", KNN_K)
    measure = RepresentationProbe(probe.train, probe.test, probe.name, pixels, config.batch_size, knn_k, seed,
                                  Sharding(0, 1), accelerator.device)  # fmt: skip
    baseline = random_copy(backbone, seed).to(accelerator.device)
    metrics = measure.metrics(backbone.to(accelerator.device), accelerator, shard=False)
    metrics.update(measure.metrics(baseline, accelerator, "_random_backbone", shard=False))
    return metrics


def evaluate_backbone(config: EvaluateConfig, model_type: str, settings: dict, accelerator) -> Evaluation:
    processor = load_part(load_image_processor, config.model, "image processor (preprocessor_config.json)")
    image_size, stored_size = processor_geometry(processor)
    pooling = _setting(config.feature_pooling, settings, "feature_pooling", "default")
    backbone = build_backbone(model_type, {}, config.model, image_size, pooling)
    probe = load_probe_splits(config.probe_train_images, config.probe_test_images, stored_size, config.max_image_pixels)
    metrics = representation_metrics(backbone, ProbePixels.of(processor), probe, config, settings, accelerator)
    return Evaluation("vision backbone", metrics, f"probe set {probe.name}")


def evaluate_clip(config: EvaluateConfig, settings: dict, accelerator) -> Evaluation:
    from transformers import AutoTokenizer, CLIPModel

    from fmkit.data.embedded_pairs import zero_shot_prompts
    from fmkit.eval.retrieval import zero_shot_accuracy
    from fmkit.models.clip import HFClip
    from fmkit.tasks.clip import Tokenize

    clip = load_part(CLIPModel.from_pretrained, config.model, "CLIP weights")
    processor = load_part(AutoImageProcessor.from_pretrained, config.model, "image processor (processor_config.json)")
    image_size, stored_size = processor_geometry(processor)
    pixels = ProbePixels(image_size, processor.image_mean, processor.image_std)
    probe = load_probe_splits(config.probe_train_images, config.probe_test_images, stored_size, config.max_image_pixels)
    # The image tower is a CLIPVisionModel, so it is probed (and copied for the baseline) as any backbone.
    metrics = representation_metrics(Backbone(clip.vision_model), pixels, probe, config, settings, accelerator)

    model = HFClip(clip, getattr(clip.config, "logit_bias", None)).to(accelerator.device).eval()
    tokenize = Tokenize(load_part(AutoTokenizer.from_pretrained, config.model, "tokenizer"), model.context_length)
    class_names, templates = zero_shot_prompts(probe.test.class_names)
    images, labels = probe.test.images, torch.from_numpy(probe.test.labels)
    batches = (
        (pixels(images[start : start + config.batch_size]), labels[start : start + config.batch_size])
        for start in range(0, len(images), config.batch_size)
    )
    with torch.no_grad():
        zero_shot = zero_shot_accuracy(model, tokenize, class_names, config.zero_shot_templates or templates,
                                       batches, accelerator.device)  # fmt: skip
    return Evaluation("CLIP model", {**zero_shot, **metrics}, f"probe set {probe.name}")


# -- language models ------------------------------------------------------------------------------------------
def evaluate_language_model(
    config: EvaluateConfig, kind: str, model_config: PretrainedConfig, accelerator
) -> Evaluation:
    """The text task's own held-out evaluation, set up as the run set it up but from the saved model and tokenizer."""
    from fmkit.data.corpus import python_docs_corpus
    from fmkit.models.language_model import usable_positions
    from fmkit.tasks import get_task

    task_class = get_task(kind)
    run_yaml = Path(config.model).expanduser() / RUN_CONFIG
    run = run_task_config(task_class, config.model)
    overrides = {"model_name_or_path": config.model, "tokenizer_name_or_path": config.model, "model_config": {},
                 "per_device_batch_size": config.batch_size, "eval_batches": config.eval_batches}  # fmt: skip
    if not run_yaml.is_file():
        overrides["block_size"] = min(run.block_size, usable_positions(model_config))
    if kind == "clm":
        overrides["samples"] = 0  # evaluation, not generation: nothing written into MODEL
    if config.eval_files:
        if run.train_shards or run.dataset_name:
            raise ConfigError(
                f"eval_files: {config.model} was trained on token shards or a Hub dataset, whose held-out split "
                "evaluate.py keeps; give eval_files only for a run on text files"
            )
        overrides["eval_files"] = config.eval_files
        # The unigram baseline counts the training text; the embedded corpus pairs with eval_files as a file.
        overrides["train_files"] = run.train_files or str(python_docs_corpus().train)
    task = task_class(dataclasses.replace(run, **overrides))
    model = task.setup(accelerator).to(accelerator.device).eval()
    with torch.no_grad():
        metrics = task.evaluate(model, accelerator, step=0)
    if "eval_loss_unigram" in metrics:
        metrics["eval_perplexity_unigram"] = math.exp(min(metrics["eval_loss_unigram"], 50.0))
    held_out = f"; held out: {config.eval_files}" if config.eval_files else ""
    return Evaluation(f"{kind.upper()} language model", metrics, task.data_description + held_out)


# -- classifiers ----------------------------------------------------------------------------------------------
def evaluate_classifier(config: EvaluateConfig, kind: str, model_config: PretrainedConfig, accelerator) -> Evaluation:
    """The fine-tune task's test split, set up as the run set it up (its data, validation split and label
    fraction, so the majority class is the run's), scored with the saved classifier as it is."""
    from fmkit.eval.classification import classification_metrics
    from fmkit.tasks import get_task

    task_class = get_task(kind)
    run = run_task_config(task_class, config.model)
    overrides = {"model_name_or_path": config.model, "model_config": {}, "adapter": "full", "from_scratch": False,
                 "compare_scratch": False, "label_fractions": None, "do_predict": None,
                 "per_device_batch_size": config.batch_size, "eval_batches": config.eval_batches}  # fmt: skip
    task = task_class(dataclasses.replace(run, **overrides))
    model = task.setup(accelerator).to(accelerator.device).eval()
    to_data_class = head_to_data_classes(config.model, model_config, task.class_names)
    with torch.no_grad():
        predicted, labels = task.predictions(model, task.test, accelerator)
    metrics = classification_metrics(to_data_class[predicted], labels, len(task.class_names), task.majority_class,
                                     "test")  # fmt: skip
    return Evaluation(f"{kind} model", {**metrics, **task.baselines["test"]}, task.data_description)


def head_to_data_classes(model: str, model_config: PretrainedConfig, class_names: list[str]) -> np.ndarray:
    """The data's class id of each of the head's outputs, matched by the label names config.json saved (in
    whatever order the model was trained with); unnamed labels (LABEL_0, ...) are taken in the data's order."""
    names = [model_config.id2label[i] for i in range(len(model_config.id2label))]
    if names == [f"LABEL_{i}" for i in range(len(names))] and len(names) == len(class_names):
        return np.arange(len(names))
    unknown = sorted(set(names) - set(class_names))
    if unknown or len(names) != len(class_names):
        raise ConfigError(
            f"{model}: its labels {names} are not the data's classes {class_names}; give the data it was trained on"
        )
    return np.array([class_names.index(name) for name in names])


def run_task_config(task_class, model: str):
    """The task's config as the run that saved MODEL resolved it (its config.yaml), else the task's defaults."""
    run_yaml = Path(model).expanduser() / RUN_CONFIG
    return parse_config(task_class.config_class, ["--config", str(run_yaml)] if run_yaml.is_file() else [], prog=PROG)


def load_part(load, model: str, what: str):
    """`load(model)`, or a one-line error saying which part of the model is missing or broken."""
    try:
        return load(model)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{model}: cannot load its {what} ({str(error).splitlines()[0]})") from None


def _setting(given, settings: dict, key: str, default):
    """A flag given here, else the run's own setting, else fmkit's default."""
    if given is not None:
        return given
    return settings.get(key, default)


# -- command line ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Errors in the user's input end with one line on stderr and exit status 2, as the recipes do."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%X")
    try:
        config = parse_evaluate_config(list(sys.argv[1:] if argv is None else argv))
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        result = evaluate(config, Accelerator(cpu=config.cpu))
    except FmkitError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    local = Path(config.model).expanduser().is_dir()
    output = Path(config.output_json or (Path(config.model).expanduser() if local else Path()) / "evaluation.json")
    record = {"model": config.model, "kind": result.kind, "data": result.data, "metrics": result.metrics}
    output.write_text(json.dumps(record, indent=2) + "\n")
    for name, value in result.metrics.items():
        print(f"{name} {value:.4f}")
    logger.info("%s (%s, %s): metrics written to %s", config.model, result.kind, result.data, output)
    return 0
