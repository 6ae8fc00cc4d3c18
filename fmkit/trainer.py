"""THE training loop. Every recipe runs `Trainer(task).fit()`; the loop never knows which task it runs.

Accelerate supplies the distribution (DDP, FSDP, DeepSpeed ZeRO, multi-node) and mixed precision. The
loop adds what makes runs trustworthy at any scale:

* the loss of a step is the sum over all its micro-batches and processes divided by the global number
  of loss terms, so gradients do not depend on how the batch is split (one all-reduce of 3 numbers);
* the learning-rate schedule counts optimizer steps, whatever the number of processes;
* checkpoints restore model, optimizer, scheduler, every rank's RNG, the data position and the task's own
  state, so a resumed run logs the same losses as an uninterrupted one;
* nothing waits for the device between log steps: loss-term counts and losses stay device tensors;
* evaluation runs under the same autocast as training, and one check refuses a distribution backend the
  task does not support (`Task.supports`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration, send_to_device, set_seed
from tqdm.auto import tqdm

from fmkit.checkpoint import LoopState, complete_checkpoints, load_task_state, resolve_resume, save_checkpoint
from fmkit.config import TrainConfig, config_to_dict, save_config
from fmkit.data.loader import Sharding
from fmkit.errors import ConfigError
from fmkit.hub import ModelCard, push_to_hub, write_model_card
from fmkit.metrics import MetricsLog, Throughput, format_line, peak_flops
from fmkit.optim import LAYERWISE_OPTIMIZERS, build_optimizer, build_scheduler, scheduled_learning_rate
from fmkit.plots import write_curves
from fmkit.tasks.base import MAIN_STAGE, Task

logger = logging.getLogger(__name__)


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator that also works on machines without GPUs, which Accelerate alone gets wrong.

    On CPU, plain multi-process runs need `cpu=True` to form a gloo group, while DeepSpeed needs
    `cpu=False` plus an explicit gloo backend, or Accelerate counts one process while DeepSpeed runs two.
    Accelerate applies FSDP only to GPU process groups, so FSDP on CPU is refused instead of silently
    running as plain data parallelism.
    """
    on_gpu = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not on_gpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ConfigError(
            "FSDP needs GPUs (Accelerate applies it to GPU process groups only); on CPU use DDP or DeepSpeed"
        )
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if deepspeed and not on_gpu:
        _skip_deepspeed_shared_memory_build()
    if not on_gpu:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(config.cpu_threads or max(1, cores // local_processes))
    trackers = [t.strip() for t in config.report_to.split(",") if t.strip() and t.strip() != "none"]
    return Accelerator(
        cpu=not on_gpu and not deepspeed,
        mixed_precision=precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=config.output_dir, automatic_checkpoint_naming=False),
        dynamo_backend="inductor" if config.torch_compile else "no",
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed and not on_gpu else [],
    )


def _skip_deepspeed_shared_memory_build() -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce when its process group starts (over a minute on 2
    cores, needing a C++ compiler, once per machine) that only its inference kernels call; training's collectives
    go through gloo. Marking the op unavailable skips that build."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


class Trainer:
    def __init__(self, task: Task):
        self.task, self.config = task, task.config
        self.output_dir = Path(self.config.output_dir)

    def fit(self) -> dict[str, float]:
        config, task = self.config, self.task
        config.validate()
        accelerator = make_accelerator(config)
        refuse_unsupported(task, accelerator)
        resume = self._resume_point(accelerator)
        set_seed(config.seed)
        stages = _stage_modules(task.setup(accelerator))
        if len(stages) > 1 and accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(f"task {task.name} trains {len(stages)} stages: its supports() must refuse DeepSpeed")
        optimizers = [
            build_optimizer(module, config, accelerator.device, partial(task.lr_multiplier, stage=stage))
            for stage, module in stages.items()
        ]
        schedulers = [build_scheduler(optimizer, config) for optimizer in optimizers]
        self._configure_deepspeed(accelerator)
        prepared = accelerator.prepare(*stages.values(), *optimizers)
        self.stages = {
            name: Stage(name, raw, wrapped, optimizer, scheduler)
            for name, raw, wrapped, optimizer, scheduler in zip(
                stages, stages.values(), prepared[: len(stages)], prepared[len(stages) :], schedulers, strict=True
            )
        }
        model = self.stages[MAIN_STAGE].model
        # Dropout should differ across ranks; model init (above) must not. RNG states are checkpointed.
        set_seed(config.seed + accelerator.process_index)
        state = LoopState(
            global_micro_batch=config.per_device_batch_size * accelerator.num_processes,
            processes=accelerator.num_processes,
        )
        accelerator.register_for_checkpointing(*schedulers, state)
        if resume is not None:
            self._load(accelerator, resume, state)
        self.unsettled = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        """Samples and tokens of the steps since the last log, not yet added to `state` (a device tensor)."""

        if accelerator.is_main_process:
            save_config(config, self.output_dir / "config.yaml")
        accelerator.init_trackers("tensorboard", config=_tracker_config(config))
        log = MetricsLog(self.output_dir / "metrics.jsonl", accelerator, state.step if resume else None)
        peak = peak_flops(accelerator.device, accelerator.mixed_precision) * accelerator.num_processes
        sharding = Sharding(accelerator.process_index, accelerator.num_processes)
        batches = task.train_batches(state.step * config.gradient_accumulation_steps, sharding)

        eval_metrics: dict[str, float] = {}
        if resume is None and config.eval_every > 0:
            eval_metrics = self._evaluate(model, accelerator, log, state.step)
        progress = tqdm(total=config.max_steps, initial=state.step, desc=task.name,
                        disable=not accelerator.is_main_process, dynamic_ncols=True)  # fmt: skip
        meter, window_loss, window_items = Throughput(), self._zero_losses(accelerator), 0.0
        while state.step < config.max_steps:
            task.step = state.step
            loss_sums, items = self._step(batches, accelerator, meter)
            for name, loss_sum in loss_sums.items():
                window_loss[name] += loss_sum
            window_items += items
            state.step += 1
            progress.update(1)
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                self._settle(state)
                metrics = self._train_metrics(accelerator, window_loss, window_items, meter, peak)
                log.log(state.step, metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.4g}")
                if accelerator.is_main_process:
                    progress.write(format_line(state.step, metrics))
                window_loss, window_items = self._zero_losses(accelerator), 0.0
                meter.reset()
            if config.eval_every > 0 and state.step % config.eval_every == 0 or state.step == config.max_steps:
                eval_metrics = self._evaluate(model, accelerator, log, state.step)
                meter.reset()
            if config.save_every > 0 and state.step % config.save_every == 0:
                self._settle(state)
                save_checkpoint(accelerator, self.output_dir, state.step, config.save_total_limit, task.state_dict())
                meter.reset()
        progress.close()

        eval_metrics = {**eval_metrics, **self._evaluate(model, accelerator, log, state.step, task.finish)}
        self._settle(state)
        self._export(model, accelerator, state, eval_metrics)
        accelerator.end_training()
        return eval_metrics

    def _step(self, batches: Iterator[dict], accelerator, meter) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimizer step per stage over `gradient_accumulation_steps` micro-batches.

        Returns each stage's local loss sum and the global number of loss terms, as device tensors.
        """
        config, task = self.config, self.task
        waited = time.perf_counter()
        micro_batches = [next(batches) for _ in range(config.gradient_accumulation_steps)]
        meter.data_wait += time.perf_counter() - waited

        counts = [task.count(b) for b in micro_batches]
        local = [sum(c.items for c in counts), sum(c.samples for c in counts), sum(c.tokens for c in counts)]
        totals = accelerator.reduce(_to_device(local, accelerator.device), "sum")
        # accelerator.backward divides by the accumulation steps and DDP averages over processes: undo
        # both, so the gradient is that of (sum of all loss terms) / (global number of terms).
        scale = (config.gradient_accumulation_steps * accelerator.num_processes / totals[0].clamp(min=1.0)).float()

        micro_batches = [send_to_device(b, accelerator.device, non_blocking=True) for b in micro_batches]
        loss_sums = {
            name: self._stage_step(stage, micro_batches, scale, accelerator) for name, stage in self.stages.items()
        }
        self.unsettled += totals[1:]
        meter.add(totals[1:])
        return loss_sums, totals[0]

    def _stage_step(self, stage: Stage, micro_batches: list[dict], scale: torch.Tensor, accelerator) -> torch.Tensor:
        config = self.config
        with self._only_trainable(stage):
            with torch.no_grad(), accelerator.autocast():
                self.task.begin_step(stage.model, micro_batches, stage.name)
            loss_sum = torch.zeros((), device=accelerator.device)
            for batch in micro_batches:
                with accelerator.accumulate(stage.model):
                    with accelerator.autocast():
                        loss = self.task.loss(stage.model, batch, stage.name)
                    accelerator.backward(loss * scale)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(stage.model.parameters(), config.max_grad_norm)
                    stage.optimizer.step()
                    stage.optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach().float()
        if not accelerator.optimizer_step_was_skipped:
            stage.scheduler.step()
            with torch.no_grad():
                self.task.after_step(stage.model, stage.name)
        return loss_sum

    @contextmanager
    def _only_trainable(self, stage: Stage):
        """Freeze the other stages' modules, so calling them inside this stage's loss gives them no gradients."""
        others = [p for s in self.stages.values() if s is not stage for p in s.raw.parameters() if p.requires_grad]
        for param in others:
            param.requires_grad_(False)
        try:
            yield
        finally:
            for param in others:
                param.requires_grad_(True)

    def _zero_losses(self, accelerator) -> dict[str, torch.Tensor]:
        return {name: torch.zeros((), device=accelerator.device) for name in self.stages}

    def _settle(self, state: LoopState) -> None:
        """Add the counted samples and tokens to the loop state (a host sync: at log and save steps only)."""
        samples, tokens = (int(v) for v in self.unsettled.tolist())
        state.samples_seen += samples
        state.tokens_seen += tokens
        self.unsettled.zero_()

    def _train_metrics(self, accelerator, window_loss, window_items, meter, peak) -> dict[str, float]:
        totals = accelerator.reduce(torch.stack(list(window_loss.values())).detach().clone(), "sum").tolist()
        items = max(float(window_items), 1.0)
        metrics = {}
        for name, total in zip(window_loss, totals, strict=True):
            metrics["loss" if name == MAIN_STAGE else f"{name}_loss"] = total / items
        elapsed = meter.elapsed()
        samples, tokens = meter.counts()
        metrics["lr"] = scheduled_learning_rate(self.stages[MAIN_STAGE].scheduler, self.config.learning_rate)
        metrics["samples_per_s"] = samples / elapsed
        if tokens:
            metrics["tokens_per_s"] = tokens / elapsed
            flops = self.task.flops_per_token()
            if flops:
                metrics["mfu"] = flops * metrics["tokens_per_s"] / peak
        metrics["data_wait_fraction"] = meter.data_wait / elapsed
        return metrics

    def _evaluate(self, model, accelerator, log: MetricsLog, step: int, measure=None) -> dict[str, float]:
        """`measure` (task.evaluate by default) in eval mode, under the training autocast, logged."""
        for stage in self.stages.values():
            stage.model.eval()
        with torch.no_grad(), accelerator.autocast():
            metrics = (measure or self.task.evaluate)(model, accelerator, step)
        for stage in self.stages.values():
            stage.model.train()
        if not metrics:
            return metrics
        log.log(step, metrics)
        if accelerator.is_main_process:
            tqdm.write(format_line(step, metrics))
        return metrics

    def _resume_point(self, accelerator) -> Path | None:
        """Refuse to mix a new run into an old one; clear the old one only when asked to."""
        config, out = self.config, self.output_dir
        resume = resolve_resume(out, config.resume_from_checkpoint)
        has_run = (out / "config.yaml").is_file() or bool(complete_checkpoints(out))
        if has_run and config.resume_from_checkpoint is None and not config.overwrite_output_dir:
            raise ConfigError(
                f"output_dir {out} already holds a run; continue it with --resume_from_checkpoint latest "
                "or start over with --overwrite_output_dir true"
            )
        if resume is None and config.resume_from_checkpoint == "latest":
            logger.warning("no checkpoint in %s yet: starting from step 0", out)
        if resume is not None:  # the config of the run that wrote the checkpoint (checkpoints/step_N/..)
            _refuse_unknown_saved_keys(resume.parent.parent / "config.yaml", config)
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            if resume is None and has_run:
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
                (out / "metrics.jsonl").unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        return resume

    def _load(self, accelerator, checkpoint: Path, state: LoopState) -> None:
        expected, processes = state.global_micro_batch, state.processes
        try:
            accelerator.load_state(str(checkpoint))
        except RuntimeError as error:
            if "Error(s) in loading state_dict" not in str(error):
                raise
            first = next(line.strip() for line in str(error).splitlines()[1:] if line.strip()).rstrip(".")
            first = first if len(first) <= 200 else first[:200] + "..."  # missing keys come as one long list
            raise ConfigError(
                f"{checkpoint}: its weights do not fit this model ({first}); resume with the architecture and "
                "settings that saved it"
            ) from None
        if state.global_micro_batch != expected:
            raise ConfigError(
                f"{checkpoint}: saved with {state.global_micro_batch} samples per global micro-batch, now {expected} "
                "(per_device_batch_size x processes); the data position would not carry over"
            )
        # Checkpoints from before the count was kept leave `processes` as constructed: the batch check stands.
        if self.task.state_dict():
            if state.processes != processes:
                raise ConfigError(
                    f"{checkpoint}: saved by {state.processes} processes, now {processes}; task {self.task.name} "
                    "keeps state per process, so resume it with the same number of processes"
                )
            self.task.load_state_dict(load_task_state(checkpoint, accelerator.process_index, self.task.name))
        state.global_micro_batch, state.processes = expected, processes
        logger.info("resumed from %s at step %d", checkpoint, state.step)

    def _configure_deepspeed(self, accelerator) -> None:
        """DeepSpeed needs batch sizes up front; we pass our own loaders, so state them explicitly."""
        if accelerator.distributed_type != DistributedType.DEEPSPEED:
            return
        config = self.config
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = config.per_device_batch_size
        ds["gradient_accumulation_steps"] = config.gradient_accumulation_steps
        ds["train_batch_size"] = (
            config.per_device_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        )
        ds["gradient_clipping"] = config.max_grad_norm
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True

    def _export(self, model, accelerator, state: LoopState, metrics: dict[str, float]) -> None:
        """Final model at the root of output_dir (written beside, then moved in), model card, Hub upload."""
        config, out = self.config, self.output_dir
        state_dict = accelerator.get_state_dict(model)  # collective under FSDP / ZeRO-3; None on other ranks
        if accelerator.is_main_process:
            # Under --torch_compile the keys carry the compiled wrapper's prefix; tasks export the plain module.
            state_dict = {key.removeprefix("_orig_mod."): value for key, value in state_dict.items()}
            staging = out / ".export-tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            self.task.export(accelerator.unwrap_model(model, keep_torch_compile=False), state_dict, staging)
            for item in staging.iterdir():
                os.replace(item, out / item.name)
            staging.rmdir()
            training = {
                "steps": state.step,
                "samples seen": state.samples_seen,
                "global batch": state.global_micro_batch * config.gradient_accumulation_steps,
                "learning rate": config.learning_rate,
                "processes": accelerator.num_processes,
            }
            if state.tokens_seen:
                training["tokens seen"] = state.tokens_seen
            write_curves(out)
            write_model_card(out, self._model_card(training, metrics))
            if config.push_to_hub:
                url = push_to_hub(out, config.hub_model_id, private=config.hub_private)
                logger.info("uploaded %s to %s", out, url)
        accelerator.wait_for_everyone()


    def _model_card(self, training: dict[str, object], metrics: dict[str, float]) -> ModelCard:
        """The loop's facts (steps, batch, optimizer, processes) and metrics, plus what the task says of itself."""
        details, config = self.task.card_details(), self.config
        training = {**training, "optimizer": config.optimizer, **details.training}
        return ModelCard(
            title=details.title,
            library_name=details.library_name,
            pipeline_tag=details.pipeline_tag,
            tags=list(dict.fromkeys(["fmkit", self.task.name, *details.tags])),
            architecture=details.architecture,
            data=details.data,
            training=training,
            metrics=metrics,
            usage=details.usage,
            base_model=details.base_model,
            sections=details.sections,
        )


def refuse_unsupported(task: Task, accelerator) -> None:
    """The one check of what the distribution backend cannot run, the task's declared support (`Task.supports`)
    and the optimizer, before any work starts."""
    supports, kind = task.supports(), accelerator.distributed_type
    backend = None
    if kind == DistributedType.DEEPSPEED:
        zero3 = accelerator.state.deepspeed_plugin.zero_stage == 3
        if not supports.deepspeed:
            backend = "DeepSpeed"
        elif zero3 and not supports.deepspeed_zero3:
            backend = "DeepSpeed ZeRO-3"
    elif kind == DistributedType.FSDP and not supports.fsdp:
        backend = "FSDP"
    if backend:
        raise ConfigError(f"task {task.name} cannot run under {backend}: {supports.why}")
    optimizer = task.config.optimizer
    if kind == DistributedType.DEEPSPEED and optimizer in LAYERWISE_OPTIMIZERS:
        raise ConfigError(
            f"--optimizer {optimizer} scales each parameter tensor's update by that tensor's norm, and DeepSpeed "
            "ZeRO hands the optimizer flat partitions of many tensors: use DDP, or --optimizer adamw|sgd"
        )


def _refuse_unknown_saved_keys(saved_config: Path, config: TrainConfig) -> None:
    """A run saved by another fmkit version may use a key this one renamed or dropped: say which, in one line."""
    if not saved_config.is_file():
        return
    saved = yaml.safe_load(saved_config.read_text()) or {}
    unknown = sorted(set(saved) - set(config_to_dict(config)))
    if unknown:
        raise ConfigError(
            f"{saved_config}: the run was saved with config keys this version does not know ({', '.join(unknown)}); "
            "it was written by another fmkit version and cannot be resumed exactly"
        )


def _to_device(values: list[float], device: torch.device) -> torch.Tensor:
    """Host numbers onto the device without waiting for queued kernels (pinned memory, async copy)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class Stage:
    """A module with its own optimizer and schedule; `raw` is the task's module, `model` the prepared one."""

    name: str
    raw: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def _stage_modules(built: torch.nn.Module | dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    stages = built if isinstance(built, dict) else {MAIN_STAGE: built}
    if MAIN_STAGE not in stages:
        raise ValueError(f"a multi-stage task must return its exported model under {MAIN_STAGE!r}, got {list(stages)}")
    return stages


def _tracker_config(config: TrainConfig) -> dict:
    """TensorBoard's hparams accept scalars and strings only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config_to_dict(config).items()}
