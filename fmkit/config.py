"""Typed configs: one flat dataclass per recipe, YAML presets, command-line overrides.

Every recipe config subclasses `TrainConfig`, so the common flags (`--max_steps`, `--output_dir`, ...)
are the same everywhere. jsonargparse does the parsing and type checking; this module only turns its
multi-line errors into the one-line errors the recipes promise.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
from jsonargparse import ArgumentError as _JsonArgumentError

from fmkit.errors import ConfigError

C = TypeVar("C", bound="TrainConfig")

# Field docstrings below become the --help text.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting admits; `TrainConfig.validate` checks every field declared with one."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """Exclude `low` itself (a learning rate > 0 rather than >= 0)."""
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, low_open=True, high_open=True)
"""Strictly between 0 and 1, e.g. a masking probability."""


def ranged(default: float, allowed: Range):
    """A dataclass field whose value `validate` checks against `allowed`, with a one-line error."""
    return dataclasses.field(default=default, metadata={"range": allowed})


@dataclass
class TrainConfig:
    """Options shared by every recipe: the loop, the optimizer, logging, checkpoints and export."""

    output_dir: str = "runs/default"
    """Folder for the final model, config.yaml, metrics.jsonl, TensorBoard logs and checkpoints/."""
    overwrite_output_dir: bool = False
    """Start a new run in an output_dir that already holds one (its checkpoints are replaced)."""
    seed: int = 42
    """Seeds model initialisation and the data order; each process adds its rank for dropout and augmentation."""
    max_steps: int = ranged(1000, POSITIVE)
    """Optimizer steps to train for; the learning-rate schedule spans exactly these."""
    per_device_batch_size: int = ranged(32, POSITIVE)
    """Samples per process per micro-batch; the global batch is this x processes x accumulation."""
    gradient_accumulation_steps: int = ranged(1, POSITIVE)
    """Micro-batches per optimizer step; the loss is normalised over all of them, so any split gives the same step."""
    learning_rate: float = ranged(5e-4, NON_NEGATIVE)
    """Peak learning rate (0 keeps the weights fixed: a control run)."""
    weight_decay: float = ranged(0.01, NON_NEGATIVE)
    """Applied to matrices only: biases and normalisation weights are never decayed."""
    optimizer: Literal["adamw", "sgd", "lars", "lamb"] = "adamw"
    """adamw and sgd from torch; lars (layer-wise trust ratio on SGD, for large-batch SimCLR/BYOL) and lamb
    from timm. LARS adapts the decayed matrices only, as in SimCLR."""
    adam_beta1: float = ranged(0.9, Range(0, 1, high_open=True))
    """AdamW / LAMB first-moment decay."""
    adam_beta2: float = ranged(0.999, Range(0, 1, high_open=True))
    """AdamW / LAMB second-moment decay."""
    adam_epsilon: float = ranged(1e-8, Range(0, low_open=True))
    """AdamW / LAMB denominator guard."""
    momentum: float = ranged(0.9, Range(0, 1, high_open=True))
    """SGD / LARS momentum."""
    nesterov: bool = False
    """SGD / LARS: Nesterov momentum."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup, counted in optimizer steps."""
    warmup_steps: int = ranged(100, NON_NEGATIVE)
    """Optimizer steps of linear warmup from 0 to learning_rate."""
    max_grad_norm: float = ranged(1.0, NON_NEGATIVE)
    """Clip the global gradient norm to this; 0 turns clipping off."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 elsewhere (bf16 is ~100x slower on most CPUs)."""
    torch_compile: bool = False
    """Compile the model with torch.compile (inductor); the export is the plain module."""
    num_workers: int = ranged(0, NON_NEGATIVE)
    """Data-loader worker processes per rank (0 loads in the training process)."""
    cpu_threads: int = ranged(0, NON_NEGATIVE)
    """Torch threads per process on CPU; 0 = the machine's cores split over its processes (overrides the
    OMP_NUM_THREADS=1 that `accelerate launch` sets on some machines)."""
    log_every: int = ranged(10, POSITIVE)
    """Write training loss, learning rate and throughput every N optimizer steps."""
    eval_every: int = ranged(200, NON_NEGATIVE)
    """Evaluate every N steps and at the end; 0 evaluates only at the end."""
    eval_batches: int = ranged(0, NON_NEGATIVE)
    """Cap on evaluation batches per process; 0 uses the whole held-out split."""
    save_every: int = ranged(500, NON_NEGATIVE)
    """Write a resumable checkpoint every N steps; 0 turns checkpoints off."""
    save_total_limit: int = ranged(2, NON_NEGATIVE)
    """Keep this many most recent checkpoints."""
    resume_from_checkpoint: str | None = None
    """'latest' or a path to checkpoints/step_N: continue that run exactly."""
    report_to: str = "tensorboard"
    """Comma-separated Accelerate trackers (tensorboard, wandb, ...) or 'none'."""
    push_to_hub: bool = False
    """Upload output_dir (model, processor, model card) to hub_model_id at the end."""
    hub_model_id: str | None = None
    """Repository on the Hub, e.g. user/my-model. The token comes from HF_TOKEN or `hf auth login`."""
    hub_private: bool = False
    """Create the Hub repository as private."""

    def validate(self) -> None:
        """Catch impossible settings before any work starts: every ranged field, in every recipe's config."""
        check_ranges(self)
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id, e.g. --hub_model_id your-name/model-name")


def check_ranges(config) -> None:
    """A one-line error for the first field of a dataclass config declared with `ranged` whose value is outside it."""
    for item in dataclasses.fields(config):
        allowed = item.metadata.get("range")
        value = getattr(config, item.name)
        if allowed is not None and value is not None and not allowed.admits(value):
            raise ConfigError(f"{item.name} {value}: expected a value {allowed}")


def build_parser(config_cls: type[TrainConfig], prog: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=config_cls.__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML preset; later flags override it.")
    parser.add_class_arguments(config_cls, as_group=False)
    return parser


def parse_config(
    config_cls: type[C],
    argv: list[str] | None = None,
    default_preset: str | Path | None = None,
    prog: str | None = None,
) -> C:
    """Parse presets and flags into `config_cls`; with no --config, `default_preset` is applied first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if default_preset is not None and not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(default_preset), *argv]
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config" and not Path(argv[i + 1]).is_file():
            raise ConfigError(f"--config {argv[i + 1]}: no such preset file")
    parser = build_parser(config_cls, prog or Path(sys.argv[0]).name)
    try:
        namespace = parser.parse_args(argv)
    except _JsonArgumentError as error:
        raise ConfigError(_one_line(str(error), config_cls)) from None
    values = namespace.as_dict()
    values.pop("config", None)
    return config_cls(**values)


def _one_line(message: str, config_cls: type[TrainConfig]) -> str:
    valid = sorted(f.name for f in dataclasses.fields(config_cls))
    unknown = re.findall(r"--([\w.-]+)", message) if "unrecognized arguments" in message else []
    unknown += re.findall(r"Option '([\w.-]+)' is not accepted", message)
    unknown += re.findall(r'Key "([\w.-]+)" is not expected', message)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, valid, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown config key '{key}'{hint} Valid keys: {', '.join(valid)}"
    flat = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return flat.replace("Parser key", "config key")


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config; it holds no secrets (the Hub token is never a config field)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    tmp.replace(path)
