"""AdamW with decoupled decay on matrices only, and the warmup + decay schedule."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler

from fmkit.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices and embeddings; never biases or normalisation scales (all 1-D)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # The fused kernel exists for CUDA and CPU tensors; on CPU it is ~5x faster than the for-each path.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        fused=fused,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Counts optimizer steps, never micro-batches or processes, so the schedule is the same at any scale."""
    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=min(config.warmup_steps, config.max_steps),
        num_training_steps=config.max_steps,
    )
