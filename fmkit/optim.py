"""The optimizer a run asks for, with its parameter groups, and the warmup + decay schedule.

Parameters are grouped by (learning-rate multiplier, decayed or not): the task gives each parameter its
multiplier (`Task.lr_multiplier`), and weight decay applies to matrices and embeddings only, never to
biases or normalisation scales, whichever optimizer runs. A group's `lr` is the peak learning rate times
its multiplier, so the schedule (a LambdaLR) scales every group alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import get_scheduler

from fmkit.config import TrainConfig

Multiplier = Callable[[str], float]

LAYERWISE_OPTIMIZERS = ("lars", "lamb")
"""Optimizers whose update of a tensor depends on that whole tensor's norm (a trust ratio)."""


def parameter_groups(model: nn.Module, weight_decay: float, multiplier: Multiplier = lambda name: 1.0) -> list[dict]:
    """One group per (multiplier, decay) pair that occurs, in first-seen order; frozen parameters are left out."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        factor = float(multiplier(name))
        if factor < 0:
            raise ValueError(f"lr_multiplier for {name} is {factor}; expected >= 0")
        decays = param.ndim >= 2
        group = groups.setdefault((factor, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0, "lr_multiplier": factor,
        })  # fmt: skip
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, multiplier: Multiplier = lambda name: 1.0
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay, multiplier)
    for group in groups:
        group["lr"] = config.learning_rate * group["lr_multiplier"]
    lr, betas, eps = config.learning_rate, (config.adam_beta1, config.adam_beta2), config.adam_epsilon
    if config.optimizer == "adamw":
        # The fused kernel exists for CUDA and CPU tensors; on CPU it is ~5x faster than the for-each path.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type in ("cuda", "cpu"))
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)
    from timm.optim import Lamb, Lars  # imported here: only LARS / LAMB runs pay for timm

    if config.optimizer == "lars":
        # timm adapts only groups with weight decay unless always_adapt: biases and norms get plain SGD.
        return Lars(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)
    # The loop clips gradients (max_grad_norm); LAMB's own clipping would clip twice.
    return Lamb(groups, lr=lr, betas=betas, eps=eps, max_grad_norm=None)


def scheduled_learning_rate(scheduler: torch.optim.lr_scheduler.LRScheduler, peak: float) -> float:
    """The schedule's current learning rate at multiplier 1, whatever the groups' multipliers, for logging."""
    for current, base in zip(scheduler.get_last_lr(), scheduler.base_lrs, strict=True):
        if base > 0:
            return peak * current / base
    return 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Counts optimizer steps, never micro-batches or processes, so the schedule is the same at any scale."""
    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=min(config.warmup_steps, config.max_steps),
        num_training_steps=config.max_steps,
    )
