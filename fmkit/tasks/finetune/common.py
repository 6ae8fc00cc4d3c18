"""What text and image classification share: labelled splits, the adapter, best-checkpoint selection, the test
score, the comparison with scratch, the label-efficiency sweep and the export.

A modality supplies its data (`load_data`), its batches and its processor; the rest is here once:

* the validation split (given, or a stratified `validation_fraction` of the training labels) picks the best
  evaluation; that checkpoint's trained weights are task state, so a resumed run picks the same one;
* the test split is scored once, after the last step, with the best checkpoint (`Task.finish`);
* `--compare_scratch` first trains the same architecture from random initialisation with the same settings
  into `scratch/`, and every metric of the run gets its `_scratch` twin beside it;
* `--label_fractions` repeats both runs per fraction under `labels_<fraction>/` and draws what the labels bought.
"""

from __future__ import annotations

import json
import logging
import os
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn

from fmkit.config import POSITIVE, Range, TrainConfig, ranged
from fmkit.data.loader import Sharding, eval_batches
from fmkit.errors import ConfigError, DataError
from fmkit.eval.classification import (
    classification_metrics,
    confusion_figure,
    per_class_table,
    write_confusion_matrix,
)
from fmkit.metrics import baseline_of
from fmkit.tasks.base import MAIN_STAGE, BatchCount, CardDetails, Supports, Task
from fmkit.tasks.finetune.adapters import (
    Adapter,
    LoraSettings,
    apply_lora,
    freeze_backbone,
    frozen_modules,
    is_head,
    layer_depths,
)
from fmkit.tasks.finetune.sweep import FINAL, LABELS_FILE, completed, run_metrics, write_sweep

logger = logging.getLogger(__name__)

SCRATCH_DIR = "scratch"
ADAPTER_DIR = "adapter"
PREDICTIONS_FILE = "predictions.jsonl"


@dataclass
class FinetuneConfig(TrainConfig):
    """Adapt a pretrained model to a labelled classification task, and measure what the pretraining bought."""

    model_name_or_path: str | None = None
    """The model to adapt: an fmkit output folder, any transformers checkpoint folder or a Hub id."""
    model_config: dict = field(default_factory=dict)
    """Overrides for the model's config, e.g. {classifier_pooling: mean} (ModernBERT) or {classifier_dropout: 0.1}."""
    adapter: Adapter = "full"
    """full: train every weight; linear: a frozen backbone (eval-mode BatchNorm, no gradients) under a trained
    head; lora: peft LoRA matrices plus the head."""
    head_lr_multiplier: float = ranged(1.0, Range(0, low_open=True))
    """The classification head's learning rate, as a multiple of learning_rate (a new head often wants 10x)."""
    layer_decay: float = ranged(1.0, Range(0, 1, low_open=True))
    """Layer-wise learning-rate decay: block i of L trains at layer_decay^(L - i) times the rate, embeddings at
    layer_decay^(L + 1); 1 turns it off."""
    lora_r: int = ranged(8, POSITIVE)
    """LoRA rank."""
    lora_alpha: float = ranged(16.0, Range(0, low_open=True))
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = ranged(0.0, Range(0, 1, high_open=True))
    """Dropout on the LoRA branch's input."""
    lora_target_modules: list[str] | None = None
    """Module-name suffixes LoRA adapts; default: fmkit's set for the model type (attention and MLP projections, the
    token embeddings of text models, the convolutions of ResNets and ConvNeXts: adapters.LORA_TARGETS)."""
    merge_lora: bool = True
    """Save the LoRA-merged model at the root of output_dir (the adapter is in adapter/ either way); false puts
    the adapter at the root, naming its base model."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    label_fraction: float = ranged(1.0, Range(0, 1, low_open=True))
    """Train on a stratified fraction of the training labels (every class keeps at least one)."""
    label_fractions: list[float] | None = None
    """A label-efficiency sweep, e.g. [0.01, 0.1, 1.0]: one run (and its scratch twin) per fraction under
    labels_<fraction>/, then a table and a plot of accuracy against labels."""
    validation_fraction: float = ranged(0.1, Range(0, 0.5, low_open=True, high_open=True))
    """Share of the training labels (stratified) held out to pick the best checkpoint, when no validation split is
    given."""
    metric_for_best_model: Literal["accuracy", "macro_f1"] = "accuracy"
    """The validation metric whose best evaluation gives the final model and the test score."""
    compare_scratch: bool = False
    """Also train the same architecture from random initialisation, same settings, into scratch/, and log its
    metrics as <metric>_scratch beside the pretrained ones."""
    from_scratch: bool = False
    """Initialise randomly instead of loading the weights (what the scratch twin of --compare_scratch runs)."""
    ignore_mismatched_sizes: bool = False
    """Start a new head when the checkpoint's classification head has another number of classes."""
    do_predict: str | None = None
    """A file of unlabelled inputs (the same forms as the data) to write predictions for, into predictions.jsonl."""

    def validate(self) -> None:
        super().validate()
        if not self.model_name_or_path:
            raise ConfigError("model_name_or_path is not set: name the pretrained model to adapt")
        for fraction in self.label_fractions or ():
            if not 0 < fraction <= 1:
                raise ConfigError(f"label_fractions {fraction}: expected fractions in (0, 1]")


@dataclass
class Split:
    """Examples `index` of a modality's `inputs` (token lists, an image array), with their class ids."""

    inputs: object
    index: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, keep: np.ndarray) -> Split:
        return Split(self.inputs, self.index[keep], self.labels[keep])


@dataclass
class LabelledData:
    train: Split
    validation: Split | None
    """None: split off validation_fraction of `train`."""
    test: Split
    class_names: list[str]
    description: str


class ClassificationTask(Task):
    config: FinetuneConfig
    auto_class: ClassVar[type]
    pipeline_tag: ClassVar[str]

    # -- what a modality supplies -----------------------------------------------------------------------------
    @abstractmethod
    def load_data(self) -> LabelledData:
        """Load the processor (tokenizer / image processor) and the labelled splits."""

    @abstractmethod
    def make_batch(self, split: Split, positions: np.ndarray, training: bool) -> dict:
        """Model inputs of examples `positions` of `split`, plus "labels"."""

    @abstractmethod
    def predict_inputs(self, path: str) -> tuple[list[str], Split]:
        """The unlabelled examples of a --do_predict file: (how each is named in predictions.jsonl, a split)."""

    @abstractmethod
    def save_processor(self, output_dir: Path) -> None: ...

    @abstractmethod
    def usage(self) -> str: ...

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adjust the loaded model to the processor (a pad token); the model as it is by default."""
        return model

    def fixed_baselines(self, accelerator) -> dict[str, dict[str, float]]:
        """Baselines that training cannot change, measured once on the validation and test splits, as
        {"eval": {...}, "test": {...}} (a CLIP model's own zero-shot accuracy); none by default."""
        return {"eval": {}, "test": {}}

    # -- the run ---------------------------------------------------------------------------------------------
    @classmethod
    def run(cls, config: FinetuneConfig) -> None:
        from fmkit.trainer import Trainer

        def fit(run_config: FinetuneConfig) -> None:
            out = Path(run_config.output_dir)
            if run_config.resume_from_checkpoint and completed(out):
                logger.info("%s is complete: not run again", out)
                return
            if run_config.compare_scratch:
                # A resumed run resumes its twin from the twin's own latest checkpoint.
                resume = "latest" if run_config.resume_from_checkpoint else None
                scratch = replace(run_config, output_dir=str(out / SCRATCH_DIR), from_scratch=True,
                                  compare_scratch=False, push_to_hub=False, do_predict=None,
                                  resume_from_checkpoint=resume)  # fmt: skip
                fit(scratch)
            Trainer(cls(run_config)).fit()

        if not config.label_fractions:
            fit(config)
            return
        runs = {}
        for fraction in config.label_fractions:
            out = Path(config.output_dir) / f"labels_{fraction:g}"
            fit(replace(config, output_dir=str(out), label_fraction=fraction, label_fractions=None))
            runs[fraction] = out
        if os.environ.get("RANK", "0") == "0":
            write_sweep(Path(config.output_dir), runs, config.metric_for_best_model)

    def supports(self) -> Supports:
        return Supports(
            deepspeed_zero3=False,
            fsdp=False,
            why="the best checkpoint is kept as a copy of the trained weights, which ZeRO-3 and FSDP partition; "
            "use DDP or DeepSpeed ZeRO-2",
        )

    def setup(self, accelerator) -> nn.Module:
        config = self.config
        self.sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        demo = DEMO_OUTPUTS.get(str(config.model_name_or_path).rstrip("/"))
        if demo and not (Path(config.model_name_or_path) / "config.json").is_file():
            raise ConfigError(f"model_name_or_path {config.model_name_or_path}: no model there yet; make it first "
                              f"with `{demo}`")  # fmt: skip
        data = self.load_data()
        self.class_names, self.data_description = data.class_names, data.description
        train, validation = data.train, data.validation
        if validation is None:
            keep, held = stratified_split(train.labels, 1 - config.validation_fraction, config.seed, "validation")
            train, validation = train.subset(keep), train.subset(held)
        if config.label_fraction < 1:
            keep, _ = stratified_split(train.labels, config.label_fraction, config.seed, "label_fraction")
            train = train.subset(keep)
        self.train, self.validation, self.test = train, validation, data.test
        self.majority_class = int(np.bincount(train.labels, minlength=len(self.class_names)).argmax())
        logger.info("%s: %d training, %d validation, %d test examples, %d classes", self.name, len(train),
                    len(validation), len(self.test), len(self.class_names))  # fmt: skip
        model = self.prepare_model(self._load_model())
        self.model_type = model.config.model_type
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.frozen: list[nn.Module] = []
        if config.adapter == "linear":
            freeze_backbone(model)
            self.frozen = frozen_modules(model)
        elif config.adapter == "lora":
            lora = LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout,
                                tuple(config.lora_target_modules or ()))  # fmt: skip
            model = apply_lora(model, lora)
        names = [name for name, _ in model.named_parameters()]
        self.depths, self.top_depth = layer_depths(names)
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        share = 100 * self.trainable / self.num_parameters
        logger.info("%s: the %s adapter trains %s of %s parameters (%.2f%%)", self.name, config.adapter,
                    f"{self.trainable:,}", f"{self.num_parameters:,}", share)  # fmt: skip
        self.model = model
        self.best = {"step": -1, "metric": -1.0, "weights": {}}
        self.scratch = run_metrics(Path(config.output_dir) / SCRATCH_DIR) if config.compare_scratch else {}
        self.baselines = self.fixed_baselines(accelerator)
        return model

    def _load_model(self) -> nn.Module:
        from transformers import AutoConfig

        config, labels = self.config, self.class_names
        mapping = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)},
                   **config.model_config}  # fmt: skip
        path = config.model_name_or_path
        try:
            if config.from_scratch:
                model_config = AutoConfig.from_pretrained(path, **mapping)
                return self.auto_class.from_config(model_config)
            model, info = self.auto_class.from_pretrained(
                path, **mapping, ignore_mismatched_sizes=config.ignore_mismatched_sizes, output_loading_info=True
            )
        except (OSError, ValueError) as error:
            raise ConfigError(f"model_name_or_path {path}: cannot load it ({str(error).splitlines()[0]})") from None
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ConfigError(
                f"model_name_or_path {path}: its classification head has another number of classes than the "
                f"{len(labels)} of the data; pass --ignore_mismatched_sizes true to start a new head"
            ) from None
        new = sorted({key.split(".")[0] for key in info["missing_keys"]})
        logger.info("%s: loaded %s; newly initialised: %s", self.name, path, ", ".join(new) or "nothing")
        return model

    # -- a step -------------------------------------------------------------------------------------------------
    def train_batches(self, start: int, sharding: Sharding) -> Iterator[dict]:
        return self.indexed_batches(len(self.train), lambda i, p: self.make_batch(self.train, i, True), start,
                                    sharding)  # fmt: skip

    def count(self, batch: dict) -> BatchCount:
        samples = len(batch["labels"])
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
        return BatchCount(items=samples, samples=samples, tokens=tokens)

    def begin_step(self, model: nn.Module, micro_batches: list[dict], stage: str = MAIN_STAGE) -> None:
        for module in self.frozen:  # the loop puts the model back in train mode after each evaluation
            module.eval()

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return F.cross_entropy(model(**inputs).logits.float(), batch["labels"], reduction="sum")

    def lr_multiplier(self, parameter_name: str, stage: str = MAIN_STAGE) -> float:
        config = self.config
        factor = config.layer_decay ** (self.top_depth - self.depths[parameter_name])
        return factor * (config.head_lr_multiplier if is_head(parameter_name) else 1.0)

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        predictions, labels = self.predictions(model, self.validation, accelerator)
        metrics = classification_metrics(predictions, labels, len(self.class_names), self.majority_class, "eval")
        score = metrics[f"eval_{self.config.metric_for_best_model}"]
        if score > self.best["metric"]:
            kept = {n for n, p in self.model.named_parameters() if p.requires_grad}
            kept |= {n for n, _ in self.model.named_buffers()}  # BatchNorm statistics move in training too
            weights = {n: t.detach().cpu().clone() for n, t in self.model.state_dict().items() if n in kept}
            self.best = {"step": step, "metric": score, "weights": weights}
        return {**metrics, **self.baselines["eval"], **self._scratch_twins(step, metrics)}

    def finish(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        """The test split, scored once with the best evaluation's weights (which the export then saves)."""
        if self.best["weights"]:
            self.model.load_state_dict(self.best["weights"], strict=False)
        predictions, labels = self.predictions(model, self.test, accelerator)
        metrics = classification_metrics(predictions, labels, len(self.class_names), self.majority_class, "test")
        self.per_class = per_class_table(predictions, labels, self.class_names)
        if accelerator.is_main_process:
            title = f"{self.name}, test split, step {self.best['step']}"
            figure = confusion_figure(predictions, labels, self.class_names, title)
            if "tensorboard" in self.config.report_to:
                accelerator.get_tracker("tensorboard", unwrap=True).add_figure("confusion_matrix", figure, step)
            write_confusion_matrix(figure, self.config.output_dir)
            self._write_labels()
        if self.config.do_predict and accelerator.is_main_process:
            self._write_predictions(model, accelerator)
        return {**metrics, **self.baselines["test"], **self._scratch_twins(None, metrics)}

    def predictions(self, model: nn.Module, split: Split, accelerator) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, true) class ids of the first (n // processes) x processes examples, on every process."""
        predicted, true = [], []
        batches = eval_batches(len(split), lambda i, p: self.make_batch(split, i, False),
                               self.config.per_device_batch_size, self.sharding, self.config.eval_batches)  # fmt: skip
        for batch in batches:
            batch = send_to_device(batch, accelerator.device)
            labels = batch.pop("labels")
            predicted.append(model(**batch).logits.argmax(-1))
            true.append(labels)
        empty = torch.zeros(0, dtype=torch.long, device=accelerator.device)
        gathered = [accelerator.gather(torch.cat(part) if part else empty).cpu().numpy() for part in (predicted, true)]
        return gathered[0], gathered[1]

    def _scratch_twins(self, step: int | None, metrics: dict[str, float]) -> dict[str, float]:
        """The scratch run's value of each metric (at the same step; its test score when `step` is None)."""
        record = self.scratch.get(FINAL if step is None else step, {})
        twins = (name for name in metrics if name in record and not baseline_of(name, metrics))
        return {f"{name}_scratch": record[name] for name in twins}

    def _write_labels(self) -> None:
        counts = np.bincount(self.train.labels, minlength=len(self.class_names))
        labels = {"class_names": self.class_names, "training_examples": len(self.train),
                  "training_examples_per_class": dict(zip(self.class_names, counts.tolist(), strict=True))}  # fmt: skip
        (Path(self.config.output_dir) / LABELS_FILE).write_text(json.dumps(labels, indent=2) + "\n")

    def _write_predictions(self, model: nn.Module, accelerator) -> None:
        """On the main process alone, with the plain module: a wrapped one's forward may wait for the others."""
        names, split = self.predict_inputs(self.config.do_predict)
        out = Path(self.config.output_dir) / PREDICTIONS_FILE
        with open(out, "w", encoding="utf-8") as handle:
            for start in range(0, len(split), self.config.per_device_batch_size):
                positions = np.arange(start, min(start + self.config.per_device_batch_size, len(split)))
                batch = send_to_device(self.make_batch(split, positions, False), accelerator.device)
                batch.pop("labels")
                probabilities = accelerator.unwrap_model(model)(**batch).logits.float().softmax(-1).cpu()
                for position, row in zip(positions, probabilities, strict=True):
                    best = int(row.argmax())
                    record = {"input": names[position], "label": self.class_names[best], "score": float(row[best])}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        logger.info("wrote predictions for %d inputs to %s", len(split), out)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]

    # -- export ------------------------------------------------------------------------------------------------
    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        """The model to use at the root; for LoRA also the adapter alone in adapter/ (peft's format)."""
        if self.config.adapter == "lora":
            model.save_pretrained(output_dir / ADAPTER_DIR)
            if self.config.merge_lora:
                model.merge_and_unload().save_pretrained(output_dir)
            else:
                model.save_pretrained(output_dir)
        else:
            model.save_pretrained(output_dir, state_dict=state_dict)
        self.save_processor(output_dir)

    def card_details(self) -> CardDetails:
        config = self.config
        model_type = self.model_type
        start = "random initialisation (the scratch baseline)" if config.from_scratch else config.model_name_or_path
        architecture = (
            f"{model_type} with a {len(self.class_names)}-class head, from {start}; the {config.adapter} adapter "
            f"trains {self.trainable:,} of {self.num_parameters:,} parameters "
            f"({100 * self.trainable / self.num_parameters:.2f}%)"
        )
        training = {"adapter": config.adapter, "training examples": len(self.train),
                    "label fraction": config.label_fraction, "best step (validation)": self.best["step"]}  # fmt: skip
        if config.adapter == "lora":
            training["LoRA"] = f"r {config.lora_r}, alpha {config.lora_alpha:g}, merged: {config.merge_lora}"
        return CardDetails(
            title=f"{model_type} fine-tuned for {self.pipeline_tag.replace('-', ' ')} with fmkit",
            pipeline_tag=self.pipeline_tag,
            tags=["fine-tuned", config.adapter, model_type],
            architecture=architecture,
            data=self.data_description,
            training=training,
            usage=self.usage(),
            base_model=None if config.from_scratch else config.model_name_or_path,
            sections={"Per-class results (test split)": self.per_class},
        )


def stratified_split(labels: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, rest) positions: `fraction` of each class kept (at least one), seeded."""
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        kept.append(members[: max(1, round(fraction * len(members)))])
    kept = np.sort(np.concatenate(kept))
    rest = np.setdiff1d(np.arange(len(labels)), kept)
    if len(kept) == 0 or (fraction < 1 and len(rest) == 0):
        raise DataError(f"{what} {fraction:g}: {len(labels)} labelled examples are too few to split")
    return kept, rest


def class_ids(values: list[str], class_names: list[str], where: str) -> np.ndarray:
    """Class ids of label `values`; labels the training split never had are an error naming them."""
    index = {name: i for i, name in enumerate(class_names)}
    unseen = sorted({value for value in values if value not in index})
    if unseen:
        shown = ", ".join(unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise DataError(f"{where}: labels not in the training split: {shown} (training has {', '.join(class_names)})")
    return np.array([index[value] for value in values], dtype=np.int64)


DEMO_OUTPUTS = {
    "runs/mlm-demo": "accelerate launch recipes/mlm.py",
    "runs/clm-demo": "accelerate launch recipes/clm.py",
    "runs/pretext-rotation": "accelerate launch recipes/pretext.py",
    "runs/contrastive-simclr": "accelerate launch recipes/contrastive.py",
}
"""The demo outputs the fine-tuning presets start from, and the command that makes each."""

