"""The shared loop's mathematics on a toy task, in this process, in seconds.

The toy is weighted least squares: each sample carries between 0 and 3 loss terms, so a loop that averaged
per micro-batch instead of over the global number of terms would give other weights. A hand-written SGD
over the same global batches is the reference; the loop must match it under accumulation, with parameter
groups, over several stages, and across a resume, with the task's own state restored exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reset_accelerate
from torch import nn

from fmkit.config import TrainConfig
from fmkit.data.loader import Sharding, epoch_permutation
from fmkit.errors import ConfigError
from fmkit.optim import build_optimizer, parameter_groups
from fmkit.tasks.base import MAIN_STAGE, BatchCount, CardDetails, Task
from fmkit.trainer import Trainer

DIM, SAMPLES = 4, 64
CRITIC = "critic"


@dataclass
class ToyConfig(TrainConfig):
    critic_stage: bool = False
    """Train a second module in a stage before the main one."""
    bias_lr_multiplier: float = 1.0


def toy_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, DIM, generator=generator)
    y = x @ torch.arange(1.0, DIM + 1) + 0.5
    terms = torch.randint(0, 4, (SAMPLES,), generator=generator).float()  # loss terms per sample, 0..3
    return x, y, terms


class ToyTask(Task):
    name = "toy"
    config_class = ToyConfig
    config: ToyConfig

    def setup(self, accelerator) -> nn.Module | dict[str, nn.Module]:
        self.x, self.y, self.terms = toy_data()
        self.model = nn.Linear(DIM, 1)
        self.ema = torch.zeros(DIM)
        self.hook_calls: list[tuple[int, str]] = []
        self.seen_steps: list[int] = []
        self.eval_autocast: list[bool] = []
        if not self.config.critic_stage:
            return self.model
        self.critic = nn.Linear(DIM, 1)
        return {CRITIC: self.critic, MAIN_STAGE: self.model}

    def make_batch(self, indices: np.ndarray, positions: np.ndarray) -> dict:
        index = torch.as_tensor(indices)
        return {"x": self.x[index], "y": self.y[index], "terms": self.terms[index]}

    def train_batches(self, start: int, sharding: Sharding):
        return self.indexed_batches(SAMPLES, self.make_batch, start, sharding)

    def count(self, batch: dict) -> BatchCount:
        return BatchCount(items=int(batch["terms"].sum()), samples=len(batch["x"]))

    def loss(self, model: nn.Module, batch: dict, stage: str = MAIN_STAGE) -> torch.Tensor:
        self.seen_steps.append(self.step)
        if stage == CRITIC:  # the critic fits the main model's residual; the main model is frozen meanwhile
            target = batch["y"] - self.model(batch["x"]).squeeze(-1)
            return (batch["terms"] * (model(batch["x"]).squeeze(-1) - target) ** 2).sum()
        return (batch["terms"] * (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()

    def after_step(self, model: nn.Module, stage: str = MAIN_STAGE) -> None:
        self.hook_calls.append((self.step, stage))
        if stage == MAIN_STAGE:
            self.ema.mul_(0.9).add_(self.model.weight.detach()[0], alpha=0.1)

    def state_dict(self) -> dict:
        return {"ema": self.ema.clone(), "hook_calls": list(self.hook_calls)}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.hook_calls = state["ema"], state["hook_calls"]

    def lr_multiplier(self, parameter_name: str, stage: str = MAIN_STAGE) -> float:
        return self.config.bias_lr_multiplier if parameter_name.endswith("bias") else 1.0

    def evaluate(self, model: nn.Module, accelerator, step: int) -> dict[str, float]:
        self.eval_autocast.append(torch.is_autocast_enabled("cpu"))
        error = model(self.x).squeeze(-1).float() - self.y
        return {"eval_loss": float((self.terms * error**2).sum() / self.terms.sum())}

    def export(self, model: nn.Module, state_dict: dict, output_dir: Path) -> None:
        torch.save(state_dict, output_dir / "weights.pt")

    def card_details(self) -> CardDetails:
        return CardDetails(title="toy", pipeline_tag=None, tags=["toy"], architecture="linear", data="synthetic",
                           usage="torch.load('weights.pt')", training={"terms per sample": "0-3"})  # fmt: skip


def train(tmp_path: Path, name: str = "run", **overrides) -> ToyTask:
    settings = dict(output_dir=str(tmp_path / name), max_steps=6, per_device_batch_size=8, learning_rate=0.05,
                    warmup_steps=0, lr_scheduler="constant", optimizer="sgd", momentum=0.0, weight_decay=0.0,
                    max_grad_norm=0.0, log_every=1, eval_every=0, save_every=0, report_to="none", seed=3)  # fmt: skip
    task = ToyTask(ToyConfig(**{**settings, **overrides}))
    try:
        Trainer(task).fit()
    finally:
        reset_accelerate()
    return task


def reference_sgd(steps: int, global_batch: int, lr: float, bias_lr: float, seed: int = 3) -> torch.Tensor:
    """Plain SGD on (sum of the global batch's loss terms) / (their number), the data order the loop uses."""
    x, y, terms = toy_data()
    torch.manual_seed(seed)
    model = nn.Linear(DIM, 1)
    epochs = steps * global_batch // SAMPLES + 1
    order = np.concatenate([epoch_permutation(SAMPLES, seed, epoch) for epoch in range(epochs)])
    for step in range(steps):
        index = torch.as_tensor(order[step * global_batch : (step + 1) * global_batch])
        loss = (terms[index] * (model(x[index]).squeeze(-1) - y[index]) ** 2).sum() / terms[index].sum()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            model.weight -= lr * model.weight.grad
            model.bias -= bias_lr * model.bias.grad
    return torch.cat([model.weight.detach()[0], model.bias.detach()])


def weights(task: ToyTask) -> torch.Tensor:
    return torch.cat([task.model.weight.detach()[0], task.model.bias.detach()])


def logged(task: ToyTask) -> list[dict]:
    return [json.loads(line) for line in (Path(task.config.output_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("batch", "accumulation"), [(8, 1), (4, 2), (2, 4)])
def test_any_split_of_the_global_batch_gives_the_reference_sgd(tmp_path, batch, accumulation):
    task = train(tmp_path, per_device_batch_size=batch, gradient_accumulation_steps=accumulation,
                 bias_lr_multiplier=3.0)  # fmt: skip
    expected = reference_sgd(steps=6, global_batch=8, lr=0.05, bias_lr=0.15)
    torch.testing.assert_close(weights(task), expected, rtol=1e-5, atol=1e-6)


def test_hook_runs_after_every_step_of_every_stage_and_reads_the_step(tmp_path):
    task = train(tmp_path, critic_stage=True, max_steps=3, gradient_accumulation_steps=2, per_device_batch_size=4)
    assert task.hook_calls == [(s, stage) for s in range(3) for stage in (CRITIC, MAIN_STAGE)]
    assert task.seen_steps == [s for s in range(3) for _stage in (CRITIC, MAIN_STAGE) for _micro in range(2)]
    losses = logged(task)
    assert all("loss" in r and "critic_loss" in r for r in losses if "lr" in r)


def test_a_stage_moves_only_its_own_module(tmp_path):
    """The critic's loss calls the main model: the loop must freeze it during the critic's stage."""
    frozen_main = train(tmp_path, "critic-only", critic_stage=True, max_steps=2, bias_lr_multiplier=0.0)
    torch.manual_seed(3)
    nn.Linear(DIM, 1)
    critic_init = nn.Linear(DIM, 1)  # built second, after the main model
    reference = reference_sgd(steps=2, global_batch=8, lr=0.05, bias_lr=0.0)
    torch.testing.assert_close(weights(frozen_main), reference, rtol=1e-5, atol=1e-6)
    assert not torch.equal(frozen_main.critic.weight.detach(), critic_init.weight.detach())


def test_lr_multiplier_zero_freezes_and_groups_keep_the_no_decay_rule():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    groups = parameter_groups(model, 0.1, lambda name: 10.0 if name.startswith("2.") else 1.0)
    described = sorted((g["lr_multiplier"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups)
    assert described == [(1.0, 0.0, 3 + 3 + 3), (1.0, 0.1, 9), (10.0, 0.0, 2), (10.0, 0.1, 6)]
    for name in ("adamw", "sgd", "lars", "lamb"):
        optimizer = build_optimizer(model, TrainConfig(optimizer=name, learning_rate=0.2), torch.device("cpu"),
                                    lambda n: 10.0 if n.startswith("2.") else 1.0)  # fmt: skip
        assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.2, 2.0]), name
        model(torch.randn(5, 3)).sum().backward()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        optimizer.zero_grad()
        assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)), name


def test_resume_restores_task_state_and_continues_bit_for_bit(tmp_path):
    common = dict(max_steps=6, optimizer="lars", momentum=0.9, bias_lr_multiplier=2.0)
    straight = train(tmp_path, "straight", save_every=3, save_total_limit=3, **common)
    middle = Path(straight.config.output_dir) / "checkpoints" / "step_3"
    assert (middle / "task_state_0.pt").is_file()
    resumed = train(tmp_path, "straight", resume_from_checkpoint=str(middle), **common)
    assert torch.equal(weights(resumed), weights(straight))
    assert torch.equal(resumed.ema, straight.ema)
    assert resumed.hook_calls == straight.hook_calls == [(s, MAIN_STAGE) for s in range(6)]
    assert [r["loss"] for r in logged(resumed) if "loss" in r] == [r["loss"] for r in logged(straight) if "loss" in r]


def test_a_checkpoint_without_the_task_state_is_refused_in_one_line(tmp_path):
    run = train(tmp_path, save_every=3, max_steps=3)
    checkpoint = Path(run.config.output_dir) / "checkpoints" / "step_3"
    (checkpoint / "task_state_0.pt").unlink()
    with pytest.raises(ConfigError, match=r"no task_state_0\.pt, the state of task toy"):
        train(tmp_path, resume_from_checkpoint=str(checkpoint), max_steps=6)


def test_a_checkpoint_whose_weights_do_not_fit_the_model_is_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    run = train(tmp_path, save_every=3, max_steps=3)
    checkpoint = Path(run.config.output_dir) / "checkpoints" / "step_3"
    save_file({"weight": torch.zeros(1, DIM + 1), "bias": torch.zeros(1)}, checkpoint / "model.safetensors")
    with pytest.raises(ConfigError, match=r"step_3: its weights do not fit this model \(size mismatch for weight"):
        train(tmp_path, resume_from_checkpoint=str(checkpoint), max_steps=6)


def test_a_run_saved_with_an_unknown_config_key_is_refused_in_one_line(tmp_path):
    run = train(tmp_path, save_every=3, max_steps=3)
    saved = Path(run.config.output_dir) / "config.yaml"
    saved.write_text(saved.read_text() + "adam_betas: [0.9, 0.99]\n")
    with pytest.raises(ConfigError, match=r"config keys this version does not know \(adam_betas\)"):
        train(tmp_path, resume_from_checkpoint="latest", max_steps=6)


def test_evaluation_runs_under_the_training_autocast(tmp_path):
    task = train(tmp_path, max_steps=1, mixed_precision="bf16", eval_every=1)
    assert task.eval_autocast == [True, True]
    plain = train(tmp_path, "fp32", max_steps=1, mixed_precision="no", eval_every=1)
    assert plain.eval_autocast == [False, False]


def test_the_model_card_joins_the_loops_facts_and_the_tasks(tmp_path):
    task = train(tmp_path, max_steps=2)
    card = (Path(task.config.output_dir) / "README.md").read_text()
    for line in ("| steps | 2 |", "| optimizer | sgd |", "| terms per sample | 0-3 |", "- fmkit", "- toy"):
        assert line in card
