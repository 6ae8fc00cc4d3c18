"""Optimizer groups and the schedule: decay on matrices only; the schedule counts optimizer steps."""

from __future__ import annotations

from itertools import pairwise

import torch
from transformers import BertConfig, BertForMaskedLM

from fmkit.config import TrainConfig
from fmkit.optim import build_optimizer, build_scheduler, parameter_groups


def test_biases_and_norms_are_not_decayed():
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))  # fmt: skip
    decayed, exempt = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert "bert.embeddings.LayerNorm.weight" in exempt_names
    assert "bert.encoder.layer.0.attention.self.query.bias" in exempt_names
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in exempt["params"])
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


def test_schedule_warms_up_then_decays_to_zero_over_max_steps():
    model = torch.nn.Linear(4, 4)
    config = TrainConfig(max_steps=10, warmup_steps=2, learning_rate=1.0, lr_scheduler="cosine")
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, config)
    rates = []
    for _ in range(config.max_steps):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    assert rates[:2] == [0.5, 1.0] and rates[-1] == 0.0  # linear warmup to the peak, decay to zero at max_steps
    assert all(a > b for a, b in pairwise(rates[1:]))
