"""The contrastive recipe as a user runs it. SimCLR: exact resume of seeded views, the loss, accumulation. MoCo and
BYOL: the momentum encoder and queue against literal references, exact resume (also after SIGKILL), the exported
encoder. NPID: its NCE, InfoNCE and memory bank update against literal references, exact resume of the bank and
its normaliser (also after SIGKILL). CMC: its Lab views against scikit-image, its two-way loss against a literal
reference, its 1-channel export reloaded in a fresh process. Every method: one-line errors and learning on
Fashion-MNIST against the random backbone. (Two processes against one: tests/test_distributed.py; presets, 2 steps
and a fresh-process reload of the export: tests/test_registry.py.)"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from conftest import (
    FASHION_MNIST_CI_PROBE,
    RECIPES,
    assert_one_line_error,
    read_metrics,
    run_recipe,
    task_of_run,
    train_losses,
)
from safetensors.torch import load_file
from torch import nn

from fmkit.checkpoint import task_state_file
from fmkit.cli import preset_path
from fmkit.data.fashion_mnist import INSTALL_HINT, fashion_mnist_installed
from fmkit.data.loader import TRAIN_STREAM, Sharding
from fmkit.errors import ConfigError
from fmkit.losses.infonce import nt_xent_loss
from fmkit.models.batch_norm import ghost_batch_norm
from fmkit.optim import build_optimizer
from fmkit.tasks import get_task
from fmkit.tasks.contrastive.common import OnlineNetwork
from fmkit.tasks.contrastive.deepcluster import balanced_draw, cluster_features, reinitialise_head
from fmkit.tasks.contrastive.moco import key_permutation, shuffled_batch_forward
from fmkit.tasks.contrastive.momentum import cosine_momentum, ema_update, momentum_copy
from fmkit.tasks.contrastive.npid import negative_rows
from fmkit.trainer import refuse_unsupported

CONFIGS = RECIPES / "configs" / "contrastive"


def debug(method: str) -> list[str]:
    overlay = preset_path(RECIPES / "configs", "contrastive", method, "debug")
    return ["--method", method, "--config", str(CONFIGS / f"{method}.yaml"), "--config", str(overlay)]


def contrastive(out: Path, *args: str, check: bool = True):
    return run_recipe([*args, "--output_dir", str(out)], recipe="contrastive.py", check=check)


# -- SimCLR ---------------------------------------------------------------------------------------------------


def test_simclr_resumes_exactly(tmp_path):
    """Views are seeded per (sample, view, step): a resumed run sees the views, and logs the losses, of a
    straight one."""
    args = [*debug("simclr"), "--max_steps", "6", "--log_every", "1", "--eval_every", "6", "--save_every", "3",
            "--lr_scheduler", "constant", "--warmup_steps", "2"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    contrastive(straight, *args)
    contrastive(resumed, *args, "--max_steps", "3")
    contrastive(resumed, *args, "--resume_from_checkpoint", "latest")
    assert sorted(train_losses(straight)) == [1, 2, 3, 4, 5, 6]
    assert train_losses(resumed) == train_losses(straight)
    final = {m["step"]: m for m in read_metrics(straight) if "knn_accuracy" in m}[6]
    assert {m["step"]: m for m in read_metrics(resumed) if "knn_accuracy" in m}[6] == final


def test_the_loss_sees_both_views_of_every_image_in_one_batch():
    """The task's loss is NT-Xent over the projections of the batch's two views, view 1 rows first."""
    task = get_task("simclr")(get_task("simclr").config_class(temperature=0.5))
    model = torch.nn.Linear(12, 4)
    views = torch.randn(5, 2, 12)
    projected = model(views.transpose(0, 1).flatten(0, 1))
    expected = nt_xent_loss(projected[:5], projected[5:], 0.5, reduction="sum")
    assert torch.allclose(task.loss(model, {"views": views}), expected)
    swapped = views.clone()
    swapped[:, 1] = views[torch.arange(5).roll(1), 1]  # pair each image's first view with another's second
    assert task.loss(model, {"views": swapped}).item() != pytest.approx(expected.item())


def test_accumulated_micro_batches_are_each_others_negatives(tmp_path):
    """4 images x 2 micro-batches per step train as 8 images in one: every view meets the 14 other views of the
    step (cached projections), not only the 6 of its micro-batch. A LayerNorm backbone (ConvNeXt): BatchNorm
    statistics would differ between micro-batches of 4 and a batch of 8."""
    convnext = ["--backbone_type", "convnext", "--backbone_config",
                '{"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2}',
                "--max_steps", "3", "--log_every", "1", "--eval_every", "0", "--save_every", "0"]  # fmt: skip
    whole, accumulated = tmp_path / "whole", tmp_path / "accumulated"
    contrastive(whole, *debug("simclr"), *convnext, "--per_device_batch_size", "8")
    contrastive(
        accumulated, *debug("simclr"), *convnext, "--per_device_batch_size", "4", "--gradient_accumulation_steps", "2"
    )
    one, two = train_losses(whole), train_losses(accumulated)
    assert two[1] == pytest.approx(one[1], rel=1e-5)
    assert two[3] == pytest.approx(one[3], rel=1e-4)  # the updates were the big batch's too


def test_feature_caching_leaves_batch_norm_statistics_to_the_gradient_forward():
    """With accumulation, SimCLR runs each micro-batch twice in train mode (cached without gradients, then with):
    BatchNorm's running mean, variance and batch count afterwards are those of one plain forward per micro-batch."""
    task = get_task("simclr")(get_task("simclr").config_class())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    plain = copy.deepcopy(model)
    micro_batches = [{"views": torch.randn(4, 2, 12)} for _ in range(2)]
    with torch.no_grad():
        task.begin_step(model, micro_batches)
    for batch in micro_batches:
        task.loss(model, batch).backward()
        plain(batch["views"].transpose(0, 1).flatten(0, 1))  # both views in one forward, as the task runs them
    statistics = dict(model[1].named_buffers())
    for name, expected in plain[1].named_buffers():
        assert torch.equal(statistics[name], expected), name
    assert statistics["num_batches_tracked"] == 2


# -- MoCo and BYOL -------------------------------------------------------------------------------------------


def tiny_online(predictor: bool) -> OnlineNetwork:
    torch.manual_seed(0)
    head = nn.Linear(6, 6) if predictor else None
    return OnlineNetwork(nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8)), nn.Linear(8, 6), head)


def test_momentum_schedule_rises_along_a_half_cosine_from_start_to_one():
    assert cosine_momentum(0, 400, 0.99) == 0.99
    assert cosine_momentum(400, 400, 0.99) == 1.0
    assert cosine_momentum(200, 400, 0.99) == pytest.approx(0.995)
    values = [cosine_momentum(step, 400, 0.99) for step in range(401)]
    assert values == sorted(values)


@pytest.mark.parametrize("method", ["byol", "moco"])
def test_predictor_learning_rate_multiplier_scales_the_predictor_only(method):
    task = get_task(method)(get_task(method).config_class(learning_rate=1e-3, predictor_lr_multiplier=10))
    online = tiny_online(predictor=True)
    optimizer = build_optimizer(online, task.config, torch.device("cpu"), task.lr_multiplier)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in online.named_parameters():
        assert rate[id(parameter)] == pytest.approx(1e-2 if name.startswith("predictor.") else 1e-3), name


def test_ema_update_is_the_literal_average_of_each_parameter():
    online = tiny_online(predictor=True)
    target = momentum_copy(online)
    assert isinstance(target.predictor, nn.Identity) and not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for parameter in online.parameters():
            parameter.add_(torch.randn_like(parameter))
    before = {name: p.clone() for name, p in target.named_parameters()}
    buffers = {name: b.clone() for name, b in target.named_buffers()}
    ema_update(target, online, 0.9)
    online_parameters = dict(online.named_parameters())
    for name, parameter in target.named_parameters():
        expected = 0.9 * before[name] + (1 - 0.9) * online_parameters[name]
        torch.testing.assert_close(parameter, expected, rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(parameter, before[name]), name
    for name, buffer in target.named_buffers():  # batch statistics are the copy's own, not averaged
        assert torch.equal(buffer, buffers[name]), name


def moco_task(version: int, **options):
    task = get_task("moco")(get_task("moco").config_class(moco_version=version, projection_dim=6, **options))
    task.device, task.online = torch.device("cpu"), tiny_online(predictor=version == 3)
    task.momentum_encoder = momentum_copy(task.online)
    task.online.eval()  # batch statistics would couple the rows of the literal loops
    task.momentum_encoder.eval()
    return task


def test_moco_v2_loss_is_the_literal_infonce_against_the_queue_and_the_queue_takes_each_steps_keys():
    task = moco_task(2, queue_size=8, temperature=0.2, max_steps=10)
    task.start_queue()
    model, queue = task.online, task.queue.clone()
    views = torch.randn(4, 2, 12)
    expected = 0.0
    for image in views:
        query = F.normalize(model(image[:1])[0], dim=0)
        key = F.normalize(task.momentum_encoder.project(image[1:])[0], dim=0)
        logits = torch.cat([(query @ key).view(1), queue @ query]) / 0.2
        expected -= logits[0] - torch.logsumexp(logits, dim=0)
    assert task.count({"views": views}).items == 4  # one query per image
    assert torch.allclose(task.loss(model, {"views": views}), expected, atol=1e-5)
    keys = F.normalize(task.momentum_encoder.project(views[:, 1]), dim=1)
    task.after_step(model)
    assert torch.equal(task.queue[:4], keys) and torch.equal(task.queue[4:], queue[4:]) and task.queue_position == 4
    task.step = 1
    later = torch.randn(4, 2, 12)
    task.loss(model, {"views": later})
    keys_later = F.normalize(task.momentum_encoder.project(later[:, 1]), dim=1)
    task.after_step(model)
    assert torch.equal(task.queue[4:], keys_later) and task.queue_position == 0  # full: the next keys wrap
    task.step = 2
    task.loss(model, {"views": views})
    task.after_step(model)
    assert torch.equal(task.queue[4:], keys_later) and task.queue_position == 4


def test_shuffle_bn_encodes_the_dealt_rows_and_returns_each_rows_own_key():
    """Shuffle-BN's dealing and gathering back, in one process with an explicit permutation (not its own inverse,
    so a wrong way back shows): the encoder sees the rows permuted, and row i's output is row i's encoding. (Two
    processes: tests/test_distributed.py.)"""
    rows = torch.arange(12.0).view(6, 2)
    permutation = torch.tensor([2, 0, 5, 1, 3, 4])
    seen = []

    def encode(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch)
        return batch * 10 + 1

    assert torch.equal(shuffled_batch_forward(encode, rows, permutation), rows * 10 + 1)
    assert len(seen) == 1 and torch.equal(seen[0], rows[permutation])
    assert torch.equal(key_permutation(0, 3, 16), key_permutation(0, 3, 16))  # every process deals alike
    assert sorted(key_permutation(0, 3, 16).tolist()) == list(range(16))
    assert not torch.equal(key_permutation(0, 3, 16), key_permutation(0, 4, 16))  # a new deal every step


def test_moco_ghost_batches_normalise_queries_in_slices_and_deal_keys_into_other_slices_on_one_process():
    """bn_batch_size 2 for 4 images on one process is shuffle-BN as on two processes: queries are normalised by
    the batch statistics of their half of the batch, keys by those of the half the step's permutation deals them
    into (the reference the two-process test in tests/test_distributed.py checks the same way), and the loss is
    InfoNCE on those."""
    task = moco_task(2, queue_size=8, temperature=0.2, max_steps=10, bn_batch_size=2)
    task.start_queue()
    model, queue = task.online.train(), task.queue.clone()
    views = torch.randn(4, 2, 12)
    permutation = key_permutation(task.config.seed, 0, 4)
    with torch.no_grad():
        queries = F.normalize(torch.cat([model(views[:2, 0]), model(views[2:, 0])]), dim=1)
        dealt, keys = views[permutation, 1], torch.empty(4, 6)
        keys[permutation] = torch.cat([task.momentum_encoder.train().project(half) for half in dealt.split(2)])
        keys = F.normalize(keys, dim=1)
        one_batch = F.normalize(task.momentum_encoder.project(views[:, 1]), dim=1)
    logits = torch.cat([(queries * keys).sum(1, keepdim=True), queries @ queue.T], dim=1) / 0.2
    expected = -(logits[:, 0] - torch.logsumexp(logits, dim=1)).sum()
    torch.testing.assert_close(task.loss(model, {"views": views}), expected, rtol=1e-5, atol=1e-5)
    task.after_step(model)
    torch.testing.assert_close(task.queue[:4], keys, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(keys, one_batch, atol=1e-3)  # the slices' statistics are not the batch's


@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_batch_norm_is_one_plain_forward_per_slice_with_the_whole_batch_elsewhere(momentum):
    """Outputs, gradients and running statistics (momentum, and None's running average) of a conv-BN-pool-BN stack
    under ghost_batch_norm equal those of a copy run slice by slice; afterwards the layers are plain again."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.BatchNorm1d(4, momentum=momentum))  # fmt: skip
    sliced = copy.deepcopy(net)
    rows = torch.randn(12, 3, 6, 6)
    for _ in range(2):  # the second step starts from the first's running statistics
        with ghost_batch_norm(net, 4):
            out = net(rows)
        expected = torch.cat([sliced(part) for part in rows.split(4)])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        expected.square().sum().backward()
    for (name, got), (_, want) in zip(net.state_dict().items(), sliced.state_dict().items(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    for got, want in zip(net.parameters(), sliced.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net(rows), expected, atol=1e-3)  # outside the context: one batch of 12


def test_moco_v3_loss_is_symmetric_with_the_batchs_other_keys_as_negatives():
    task = moco_task(3, temperature=0.2)
    model, views = task.online, torch.randn(4, 2, 12)
    expected = 0.0
    for query_view, key_view in ((0, 1), (1, 0)):
        queries = F.normalize(model(views[:, query_view]), dim=1)
        keys = F.normalize(task.momentum_encoder.project(views[:, key_view]), dim=1)
        for i in range(4):
            logits = keys @ queries[i] / 0.2
            expected -= logits[i] - torch.logsumexp(logits, dim=0)
    assert task.count({"views": views}).items == 8
    assert torch.allclose(task.loss(model, {"views": views}), expected, atol=1e-5)


def test_byol_loss_is_two_minus_twice_the_cosine_with_the_targets_other_view():
    task = get_task("byol")(get_task("byol").config_class(projection_dim=6))
    online = tiny_online(predictor=True)
    task.momentum_encoder = momentum_copy(online)
    online.eval(), task.momentum_encoder.eval()
    views = torch.randn(4, 2, 12)
    predictions = [online(views[:, view]) for view in (0, 1)]
    targets = [task.momentum_encoder.project(views[:, view]) for view in (0, 1)]
    expected = sum(
        2 - 2 * torch.dot(predictions[view][i], targets[1 - view][i]) / (
            predictions[view][i].norm() * targets[1 - view][i].norm())
        for view in (0, 1) for i in range(4)
    )  # fmt: skip
    loss = task.loss(online, {"views": views})
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in task.momentum_encoder.parameters())
    assert online.predictor.weight.grad is not None


RESUME = ["--max_steps", "6", "--log_every", "1", "--eval_every", "6", "--save_every", "3", "--lr_scheduler",
          "constant", "--warmup_steps", "2", "--queue_size", "32"]  # fmt: skip
"""Debug runs of 6 steps, saved every 3; a queue of 32 keys (4 steps of 8) wraps before step 6."""


def task_state(out: Path, step: int) -> dict:
    return torch.load(task_state_file(out / "checkpoints" / f"step_{step}", 0), weights_only=True)


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_resumes_exactly_with_the_momentum_encoder_and_queue(tmp_path, method):
    """Steps 4-6 resumed from a straight run's step-3 checkpoint: its losses, momentum encoder probes and saved task
    state (momentum encoder weights, queue and its position), bit for bit. (Stopping a first run at max_steps 3
    would change the momentum schedule, which spans max_steps.)"""
    args = [*debug(method), *(RESUME if method == "moco" else RESUME[:-2]), "--save_total_limit", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    contrastive(straight, *args, *(["--export_encoder", "momentum"] if method == "moco" else []))
    contrastive(resumed, *args, "--resume_from_checkpoint", str(straight / "checkpoints" / "step_3"))
    assert sorted(train_losses(straight)) == [1, 2, 3, 4, 5, 6]
    assert train_losses(resumed) == {step: train_losses(straight)[step] for step in (4, 5, 6)}
    final = {m["step"]: m for m in read_metrics(straight) if "knn_accuracy" in m}[6]
    assert {m["step"]: m for m in read_metrics(resumed) if "knn_accuracy" in m}[6] == final
    suffix = "_momentum" if method == "moco" else "_target"
    assert f"knn_accuracy{suffix}" in final and f"linear_probe_accuracy{suffix}" in final
    one, other = task_state(straight, 6), task_state(resumed, 6)
    assert one.keys() == other.keys() == ({"momentum_encoder", "queue", "queue_position"} if method == "moco"
                                          else {"momentum_encoder"})  # fmt: skip
    for name, tensor in one["momentum_encoder"].items():
        assert torch.equal(tensor, other["momentum_encoder"][name]), name
    if method == "moco":
        assert torch.equal(one["queue"], other["queue"]) and one["queue_position"] == other["queue_position"] == 16
        # --export_encoder momentum: the export is the momentum encoder's backbone, not the online one.
        exported = load_file(straight / "model.safetensors")
        prefix = "backbone.model."
        momentum = {k[len(prefix) :]: v for k, v in one["momentum_encoder"].items() if k.startswith(prefix)}
        assert exported.keys() == momentum.keys()
        assert all(torch.equal(exported[k], momentum[k]) for k in exported)
        online = load_file(resumed / "model.safetensors")
        assert any(not torch.equal(online[k], momentum[k]) for k in online)


def test_moco_enqueues_every_micro_batchs_keys_once_per_step_under_accumulation(tmp_path):
    """2 micro-batches of 4 per step, a queue of 16 that wraps at step 2: after each step the queue's next 8 rows
    are that step's keys, micro-batch by micro-batch, recomputed here with the momentum encoder the step used (the
    initial one, then each checkpoint's); nothing from the held-out loss of the evaluation before step 0."""
    out = tmp_path / "run"
    contrastive(out, *debug("moco"), "--per_device_batch_size", "4", "--gradient_accumulation_steps", "2",
                "--queue_size", "16", "--max_steps", "3", "--save_every", "1", "--save_total_limit", "3",
                "--eval_every", "3")  # fmt: skip
    task = task_of_run(out, get_task("moco"))
    batches = task.train_batches(0, Sharding(0, 1))
    encoder = task.momentum_encoder.train()  # train mode, as in training: each micro-batch is one BatchNorm batch
    for step in range(3):
        if step:
            encoder.load_state_dict(task_state(out, step)["momentum_encoder"])
        with torch.no_grad():
            keys = torch.cat([F.normalize(encoder.project(next(batches)["views"][:, 1]), dim=1) for _ in range(2)])
        state = task_state(out, step + 1)
        start = step * 8 % 16
        assert state["queue_position"] == (start + 8) % 16
        torch.testing.assert_close(state["queue"][start : start + 8], keys, rtol=1e-4, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("method", ["moco", "npid", "deepcluster"])
def test_resumes_exactly_after_sigkill(tmp_path, method):
    """kill -9 past a checkpoint, then resume: the losses and final task state of a straight run (MoCo's queue and
    key encoder, NPID's bank and normaliser, DeepCluster's clustering are saved with every checkpoint, written
    atomically; DeepCluster re-clusters every 5 steps, so the kill lands mid-period)."""
    resume = RESUME if method == "moco" else RESUME[:-2]
    args = [*debug(method), *resume, "--max_steps", "12", "--save_every", "6", "--eval_every", "0"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    contrastive(straight, *args)
    command = [sys.executable, str(RECIPES / "contrastive.py"), *args, "--output_dir", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step_6").is_dir():
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (killed / "checkpoints" / "step_6").is_dir(), "run ended before reaching the kill point"
    contrastive(killed, *args, "--resume_from_checkpoint", "latest")
    assert train_losses(killed) == train_losses(straight)
    assert sorted(train_losses(killed)) == list(range(1, 13))
    expected, state = task_state(straight, 12), task_state(killed, 12)
    for name, value in expected.items():
        if isinstance(value, dict):
            assert all(torch.equal(tensor, state[name][key]) for key, tensor in value.items()), name
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, state[name]), name
        else:
            assert value == state[name], name


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_momentum_methods_refuse_fsdp_in_one_line(method):
    """FSDP needs GPUs, so no accelerator on CPU is in FSDP mode; `refuse_unsupported` reads only the backend's kind
    of one, given here, and raises the line a GPU run prints. SimCLR, with no momentum copy, is let through.
    (ZeRO-3, refused in two real processes: tests/test_distributed.py.)"""
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(ConfigError) as refused:
        refuse_unsupported(get_task(method)(get_task(method).config_class()), fsdp)
    assert str(refused.value).startswith(f"task {method} cannot run under FSDP: its momentum encoder averages whole")
    assert "\n" not in str(refused.value)
    refuse_unsupported(get_task("simclr")(get_task("simclr").config_class()), fsdp)


# -- NPID --------------------------------------------------------------------------------------------------------


def npid_task(loss: str):
    config = get_task("npid").config_class(projection_dim=6, bank_images=10, num_negatives=5, temperature=0.07,
                                           bank_momentum=0.5, npid_loss=loss)  # fmt: skip
    task = get_task("npid")(config)
    task.device = torch.device("cpu")
    # What setup leaves, with a random bank in place of the network's projections of real images.
    task.bank = F.normalize(torch.randn(10, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    task.normalizer, task.step_features, task.step_features_step = None, [], -1
    model = tiny_online(predictor=False).eval()  # batch statistics would couple the rows of the literal loops
    return task, model


@pytest.mark.parametrize("loss", ["nce", "infonce"])
def test_npid_loss_is_the_literal_nce_or_infonce_against_the_bank(loss):
    """Each image's projection against its own bank entry and the step's 5 noise rows. NCE: P(i|v) = exp(s/T) / Z,
    Z = N mean exp(s/T) over the first step's scores, then fixed; h = P / (P + K/N)."""
    task, model = npid_task(loss)
    views, rows = torch.randn(4, 1, 12), torch.tensor([3, 7, 0, 9])
    bank, temperature, size = task.bank.double(), 0.07, 10

    def scores(step: int, views: torch.Tensor) -> list[list[float]]:
        noise = negative_rows(task.config.seed, TRAIN_STREAM, step, size, 5)
        out = []
        for image, row in zip(views, rows, strict=True):
            feature = F.normalize(model(image[:1])[0], dim=0).double().detach()
            out.append([float(feature @ bank[row])] + [float(feature @ bank[n]) for n in noise])
        return out

    first = scores(0, views)
    normalizer = size * sum(math.exp(s / temperature) for image in first for s in image) / 24  # 4 x (1 + 5)

    def expected(image_scores: list[list[float]]) -> float:
        total = 0.0
        for positive, *noise in image_scores:
            if loss == "infonce":
                total -= positive / temperature - math.log(sum(math.exp(s / temperature) for s in [positive, *noise]))
                continue
            data = [math.exp(s / temperature) / normalizer for s in [positive, *noise]]
            posterior = [p / (p + 5 / size) for p in data]
            total -= math.log(posterior[0]) + sum(math.log(1 - h) for h in posterior[1:])
        return total

    batch = {"views": views, "bank_rows": rows}
    assert task.count(batch).items == 4
    assert task.loss(model, batch).item() == pytest.approx(expected(first), rel=1e-4)
    assert (task.normalizer is None) == (loss == "infonce")
    task.step, task.step_features, later = 1, [], torch.randn(4, 1, 12)  # Z stays; the noise rows are new
    assert task.loss(model, {"views": later, "bank_rows": rows}).item() == pytest.approx(expected(scores(1, later)),
                                                                                       rel=1e-4)  # fmt: skip
    assert not torch.equal(*(negative_rows(task.config.seed, TRAIN_STREAM, step, size, 5) for step in (0, 1)))


def test_npid_bank_update_moves_each_step_entry_towards_its_projection_and_leaves_the_rest():
    """v_i <- normalize(0.5 v_i + 0.5 f_i) for the rows of every micro-batch of the step, in order (row 3 twice:
    two micro-batches across an epoch's end), after the step; the other rows as they were."""
    task, model = npid_task("nce")
    micro_batches = [{"views": torch.randn(3, 1, 12), "bank_rows": torch.tensor([3, 7, 0])},
                     {"views": torch.randn(2, 1, 12), "bank_rows": torch.tensor([3, 5])}]  # fmt: skip
    before = task.bank.clone()
    for batch in micro_batches:
        task.loss(model, batch)
    assert torch.equal(task.bank, before)  # the loss reads the bank, the step's end writes it
    task.after_step(model)
    expected = before.clone()
    for batch in micro_batches:
        for image, row in zip(batch["views"], batch["bank_rows"].tolist(), strict=True):
            mixed = 0.5 * expected[row] + 0.5 * F.normalize(model(image[:1])[0], dim=0)
            expected[row] = mixed / mixed.norm()
    torch.testing.assert_close(task.bank, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(task.bank[[1, 2, 4, 6, 8, 9]], before[[1, 2, 4, 6, 8, 9]])
    assert task.step_features == []


def test_npid_starts_its_bank_from_the_network_and_resumes_it_exactly_and_trains_on_the_bank_images_only(tmp_path):
    """Steps 4-6 resumed from a straight run's step-3 checkpoint: its losses, probes and task state (bank, NCE's Z),
    bit for bit. The bank started as the initial network's projections of centre crops of its images: the entries
    no step touched still are. The batches' bank rows cover the bank once per epoch (256 entries, 32 batches of 8)."""
    args = [*debug("npid"), *RESUME[:-2], "--save_total_limit", "2", "--npid_loss", "nce"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    contrastive(straight, *args)
    contrastive(resumed, *args, "--resume_from_checkpoint", str(straight / "checkpoints" / "step_3"))
    assert train_losses(resumed) == {step: train_losses(straight)[step] for step in (4, 5, 6)}
    final = {m["step"]: m for m in read_metrics(straight) if "knn_accuracy" in m}[6]
    assert {m["step"]: m for m in read_metrics(resumed) if "knn_accuracy" in m}[6] == final
    one, other, start = task_state(straight, 6), task_state(resumed, 6), task_state(straight, 3)
    assert one.keys() == other.keys() == {"bank", "normalizer"}
    assert torch.equal(one["bank"], other["bank"]) and one["normalizer"] == other["normalizer"] == start["normalizer"]
    assert not torch.equal(one["bank"], start["bank"])
    task = task_of_run(straight, get_task("npid"))
    batches = task.train_batches(0, Sharding(0, 1))
    rows = torch.cat([next(batches)["bank_rows"] for _ in range(32)])
    assert sorted(rows.tolist()) == list(range(256)) and len(task.bank_index) == 256
    assert set(task.bank_index) <= set(task.train_index)
    untouched = sorted(set(range(256)) - set(rows[:24].tolist()))  # steps 1-3: 3 batches of 8
    start = task.memory(task.model)  # the run's initial weights, as the loop seeds them
    torch.testing.assert_close(task_state(straight, 3)["bank"][untouched], start[untouched], rtol=0, atol=1e-6)
    torch.testing.assert_close(start.norm(dim=1), torch.ones(256))
    assert not torch.allclose(task_state(straight, 3)["bank"][rows[:24]], start[rows[:24]], atol=1e-3)


# -- DeepCluster ---------------------------------------------------------------------------------------------------


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """30 points in 6-d around 3 far-apart centres (10 each), and their centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 6, generator=generator) * 10
    truth = torch.arange(30) % 3
    return centres[truth] + torch.randn(30, 6, generator=generator) * 0.1, truth


def test_deepcluster_whitens_normalises_and_clusters_each_blob_together():
    """PCA whitening to 4 dims: the projected points have identity covariance; k-means then gives each blob one label
    (a permutation of the truth), and every point's nearest centroid is its own assignment."""
    points, truth = blobs()
    clustering = cluster_features(points, 3, 4, seed=0)
    projected = ((points - clustering.mean) @ clustering.whitening).double()
    torch.testing.assert_close(torch.cov(projected.T), torch.eye(4, dtype=torch.float64), atol=1e-4, rtol=0)
    labels = clustering.assignments
    assert sorted({(int(t), int(label)) for t, label in zip(truth, labels, strict=True)}) == sorted(
        {(t, int(labels[t])) for t in range(3)}) and len(set(labels[:3].tolist())) == 3  # fmt: skip
    assert torch.equal(clustering.labels(points), labels) and clustering.empty == 0
    again = cluster_features(points, 3, 4, seed=0)
    assert torch.equal(again.assignments, labels) and torch.equal(again.centroids, clustering.centroids)


def test_deepcluster_counts_empty_clusters_and_draws_uniformly_over_the_others():
    """Two distinct points cannot fill 4 clusters: 2 are empty. The draw takes ceil(12 / 3) = 4 of each non-empty
    pseudo-class (with replacement from the class of one), none of the empty one, a new draw each period."""
    duplicates = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 3)
    with pytest.warns(UserWarning, match="distinct clusters"):  # scikit-learn's ConvergenceWarning
        assert cluster_features(duplicates, 4, 0, seed=0).empty == 2
    assignments = np.array([0, 0, 0, 0, 0, 1, 3, 3, 3])  # class 2 is empty
    drawn = balanced_draw(assignments, 12, seed=0, period=0)
    assert len(drawn) == 12 and np.bincount(assignments[drawn], minlength=4).tolist() == [4, 4, 0, 4]
    assert len(set(drawn[assignments[drawn] == 0].tolist())) == 4  # a class of 5 is drawn without replacement
    assert np.array_equal(drawn, balanced_draw(assignments, 12, seed=0, period=0))
    assert not np.array_equal(drawn, balanced_draw(assignments, 12, seed=0, period=1))


def test_deepcluster_reinitialises_the_head_from_the_seed_and_period():
    heads = [nn.Linear(6, 4) for _ in range(3)]
    for head, period in zip(heads, (1, 1, 2), strict=True):
        reinitialise_head(head, seed=42, period=period)
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)
    assert not torch.equal(heads[0].weight, heads[2].weight)
    assert heads[0].weight.abs().max() <= 1 / math.sqrt(6)


def test_deepcluster_resumes_its_clustering_exactly(tmp_path):
    """Re-clustering every 2 steps, resumed mid-period from step 3: the losses of steps 4-6 (period 2 is clustered
    again from the same weights) and the final centroids, assignments and whitening, bit for bit; each clustering
    logged with its empty clusters."""
    args = [*debug("deepcluster"), *RESUME[:-2], "--recluster_every", "2", "--save_total_limit", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = contrastive(straight, *args)
    assert result.stderr.count("deepcluster: step ") == 3 and "256 images in 16 clusters" in result.stderr
    contrastive(resumed, *args, "--resume_from_checkpoint", str(straight / "checkpoints" / "step_3"))
    assert train_losses(resumed) == {step: train_losses(straight)[step] for step in (4, 5, 6)}
    final = {m["step"]: m for m in read_metrics(straight) if "knn_accuracy" in m}[6]
    assert {m["step"]: m for m in read_metrics(resumed) if "knn_accuracy" in m}[6] == final
    assert "empty_clusters" in final
    one, other = task_state(straight, 6), task_state(resumed, 6)
    assert one.keys() == other.keys() == {"period", "mean", "whitening", "centroids", "assignments"}
    assert one["period"] == other["period"] == 2
    assert all(torch.equal(one[key], other[key]) for key in ("mean", "whitening", "centroids", "assignments"))
    assert not torch.equal(one["assignments"], task_state(straight, 3)["assignments"])  # re-clustered at step 4


@pytest.mark.parametrize("kind", [DistributedType.DEEPSPEED, DistributedType.FSDP])
def test_deepcluster_refuses_deepspeed_and_fsdp_in_one_line(kind):
    """They keep their own copies of the parameters, which would undo the head's re-initialisation; DDP is let
    through. (The backend's kind alone decides, as in the momentum methods' test above.)"""
    task = get_task("deepcluster")(get_task("deepcluster").config_class())
    with pytest.raises(ConfigError) as refused:
        zero2 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2))  # not only ZeRO-3
        refuse_unsupported(task, SimpleNamespace(distributed_type=kind, state=zero2))
    assert "cannot run under" in str(refused.value) and "re-initialises its classifier head" in str(refused.value)
    assert "\n" not in str(refused.value)
    refuse_unsupported(task, SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))


# -- CMC ---------------------------------------------------------------------------------------------------------


def test_cmc_views_are_the_lab_split_of_one_crop_and_the_exported_processor_computes_the_same_lightness():
    """L and ab of the preset's one crop, against scikit-image's rgb2lab; the export's processor (standalone, no
    fmkit) gives the L the encoder trained on and the probes feed it."""
    from skimage.color import rgb2lab

    from fmkit.models.luminance_processor import cie_lightness
    from fmkit.vision.views import VIEW_PRESETS, make_views

    task = get_task("cmc")(get_task("cmc").config_class(image_size=16))
    images = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    batch = task.make_batch(images, [np.random.default_rng(seed) for seed in range(4)], training=True)
    (crop,) = make_views(images, [np.random.default_rng(seed) for seed in range(4)], VIEW_PRESETS["cmc-photos"], 16)
    lab = torch.from_numpy(rgb2lab(crop.permute(0, 2, 3, 1).double().numpy())).permute(0, 3, 1, 2).float()
    assert batch["luminance"].shape == (4, 1, 16, 16) and batch["ab"].shape == (4, 2, 16, 16)
    torch.testing.assert_close(batch["luminance"], (lab[:, :1] / 100 - 0.5) / 0.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["ab"], lab[:, 1:] / 110, atol=1e-4, rtol=0)
    torch.testing.assert_close(cie_lightness(crop), lab[:, :1], atol=1e-3, rtol=0)


def test_cmc_loss_is_the_literal_infonce_from_l_to_ab_and_from_ab_to_l():
    task = get_task("cmc")(get_task("cmc").config_class(temperature=0.2))
    torch.manual_seed(0)
    luminance, ab = torch.randn(5, 6), torch.randn(5, 6)
    expected = 0.0
    for queries, keys in ((luminance, ab), (ab, luminance)):
        for i in range(5):
            scores = [F.cosine_similarity(queries[i], keys[j], dim=0).item() / 0.2 for j in range(5)]
            expected -= scores[i] - math.log(sum(math.exp(score) for score in scores))
    assert task.global_loss(luminance, ab).item() == pytest.approx(expected, rel=1e-5)
    # ab matched with another image's L is not the loss.
    assert task.global_loss(luminance, ab.roll(1, 0)).item() != pytest.approx(expected, rel=1e-3)


EXPORTED_FEATURES = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

folder, images = sys.argv[1], np.load(sys.argv[2])
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder).eval()
with torch.no_grad():
    pixels = processor([Image.fromarray(image) for image in images], return_tensors="pt").pixel_values
    features = model(pixel_values=pixels).pooler_output.flatten(1)
print(json.dumps({"channels": model.config.num_channels, "pixels": list(pixels.shape), "features": features.tolist()}))
"""


def test_cmc_exports_the_l_encoder_as_a_one_channel_backbone_whose_processor_feeds_it_rgb_images(tmp_path):
    """A fresh process with plain transformers (no fmkit): AutoImageProcessor turns colour photographs into L, and
    the 1-channel AutoModel gives the trained L encoder's features, as the probes computed them from the checkpoint;
    the ab encoder is not exported."""
    from fmkit.eval.representation import ProbePixels
    from fmkit.models.backbone import build_backbone
    from fmkit.models.luminance_processor import LuminanceImageProcessor

    out = tmp_path / "cmc"
    contrastive(out, *debug("cmc"), "--max_steps", "4", "--eval_every", "4", "--save_every", "4")
    task = task_of_run(out, get_task("cmc"))
    images = task.train_images.images[task.train_index[:6]]
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([sys.executable, "-c", EXPORTED_FEATURES, str(out), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    exported = json.loads(result.stdout.splitlines()[-1])
    assert exported["channels"] == 1 and exported["pixels"] == [6, 1, 32, 32]
    assert ProbePixels.of(LuminanceImageProcessor.from_pretrained(out)).lightness
    trained = load_file(out / "checkpoints" / "step_4" / "model.safetensors")
    encoder = build_backbone("resnet", {**task.config.backbone_config, "num_channels": 1}, None, 32).model
    encoder.load_state_dict({k.removeprefix("backbone.model."): v for k, v in trained.items()
                             if k.startswith("backbone.model.")})  # fmt: skip
    with torch.no_grad():
        expected = encoder.eval()(pixel_values=task.probe.pixels(images)).pooler_output.flatten(1)
    torch.testing.assert_close(torch.tensor(exported["features"]), expected, atol=1e-4, rtol=1e-4)
    assert any(k.startswith("ab_backbone.") for k in trained)
    assert not any(k.startswith("ab_") or "projector" in k for k in load_file(out / "model.safetensors"))
    assert 'from_pretrained("PATH_OR_HUB_ID", trust_remote_code=True)' in (out / "README.md").read_text()
    assert_fine_tuned_l_encoder_classifies_rgb_images_in_a_fresh_process(out, tmp_path / "finetune")


CLASSIFIED = """
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline

folder, images, labels = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
classify = pipeline("image-classification", model=folder, trust_remote_code=True)
answers = [a[0]["label"] for a in classify([Image.fromarray(image) for image in images], batch_size=32)]
print(json.dumps({"processor": type(classify.image_processor).__name__, "channels": classify.model.config.num_channels,
                  "accuracy": float(np.mean([a == t for a, t in zip(answers, labels, strict=True)]))}))
"""


def assert_fine_tuned_l_encoder_classifies_rgb_images_in_a_fresh_process(cmc_run: Path, out: Path) -> None:
    """A linear probe fine-tuned on the 1-channel L encoder is saved with the luminance processor (and its code):
    plain transformers' pipeline turns the RGB test digits into L and scores them as the run logged."""
    from fmkit.data.image_array import load_image_array
    from fmkit.models.backbone import processor_geometry
    from fmkit.models.luminance_processor import LuminanceImageProcessor

    configs = [str(preset_path(RECIPES / "configs", "finetune", "image-classification", kind))
               for kind in ("demo", "debug")]  # fmt: skip
    run_recipe(["--task", "image-classification", "--config", configs[0], "--config", configs[1],
                "--model_name_or_path", str(cmc_run), "--output_dir", str(out), "--adapter", "linear",
                "--label_fraction", "1", "--eval_batches", "0", "--max_steps", "30", "--learning_rate", "3e-2"],
               recipe="finetune.py")  # fmt: skip
    logged = {k: v for m in read_metrics(out) for k, v in m.items() if k.startswith("test_")}
    _, stored = processor_geometry(LuminanceImageProcessor.from_pretrained(out))
    test = load_image_array(["embedded:digits:test"], stored, labelled=True)
    np.save(out.parent / "test.npy", test.images)
    labels = json.dumps([test.class_names[i] for i in test.labels])
    result = subprocess.run([sys.executable, "-c", CLASSIFIED, str(out), str(out.parent / "test.npy"), labels],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.splitlines()[-1])
    assert reloaded["processor"] == "LuminanceImageProcessor" and reloaded["channels"] == 1
    assert reloaded["accuracy"] == pytest.approx(logged["test_accuracy"], abs=1e-9)
    assert logged["test_accuracy"] > 2 * logged["test_accuracy_majority"], logged
    assert "trust_remote_code=True" in (out / "README.md").read_text()


# -- every method -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "expected"),
    [
        ("simclr", ["--method", "nope"], "--method 'nope': expected one of simclr"),
        ("simclr", ["--views", "cifar"], "views 'cifar': expected one of simclr-fashion-mnist"),
        ("simclr", ["--temperature", "0"], "temperature"),
        ("simclr", ["--views", "cmc-photos"], "views 'cmc-photos' makes 1 view of each image; this method needs 2"),
        ("simclr", ["--image_size", "64"], "stored_size 36 is smaller than image_size 64"),
        ("moco", ["--queue_size", "100"],
         "queue_size 100 is not a multiple of the 8 keys enqueued per step (per_device_batch"),
        ("moco", ["--queue_size", "48", "--gradient_accumulation_steps", "4"],
         "queue_size 48 is not a multiple of the 32"),
        ("moco", ["--moco_version", "4"], "moco_version"),
        ("moco", ["--momentum_start", "1"], "momentum_start"),
        ("moco", ["--export_encoder", "key"], "export_encoder"),
        ("moco", ["--bn_batch_size", "3"], "bn_batch_size 3 does not divide per_device_batch_size 8"),
        ("moco", ["--predictor_lr_multiplier", "10"], "predictor_lr_multiplier 10.0: MoCo v2 has no predictor"),
        ("npid", ["--bank_images", "2000"],
         "bank_images 2000: 1,023 crops of 18 photographs bundled with scikit-image and scikit-learn at 36x36 leave "
         "only 1007 training images after heldout_images 16"),
        ("npid", ["--num_negatives", "256"], "bank_images 256 is smaller than num_negatives 256 + 1"),
        ("npid", ["--npid_loss", "softmax"], "npid_loss"),
        ("deepcluster", ["--num_clusters", "300"],
         "num_clusters 300 is more than cluster_images 256: k-means needs at least one image per cluster"),
        ("deepcluster", ["--cluster_images", "2000", "--num_clusters", "16"], "cluster_images 2000: 1,023 crops of"),
        ("deepcluster", ["--pca_dim", "200"], "pca_dim 200 is more than projection_dim 128 or cluster_images 256"),
        ("cmc", ["--train_images", "embedded:digits:train"],
         "0 usable images (1297 left out: grey: their ab view is blank), not more than heldout_images 16"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_error(tmp_path, method, args, expected):
    result = contrastive(tmp_path / "run", *debug(method), *args, check=False)
    assert_one_line_error(result, expected)


CI_SIZED = [*FASHION_MNIST_CI_PROBE, "--heldout_images", "128", "--eval_batches", "2", "--eval_every", "0",
            "--save_every", "0", "--report_to", "none"]  # fmt: skip
"""The demo preset, shortened and evaluated once at the end, on the pretext learning tests' probe."""
CI_OPTIONS = {"simclr": ["--max_steps", "300"],
              "npid": ["--bank_images", "2000", "--num_negatives", "1024", "--max_steps", "300"],
              "deepcluster": ["--recluster_every", "50"]}  # fmt: skip
"""NPID's demo bank (20,000) would see each entry twice in 300 steps of 128: a bank of 2,000 sees each about 19
times. NPID trains 300 steps, not 150: at 150 its linear margin was +0.5 to +2.1 points for seed 42 depending on
the thread count, within the probe's noise. DeepCluster's demo re-clusters every 300 steps: every 50, 150 steps
see 3 clusterings. SimCLR's demo batch is 64: 300 steps see the images of the others' 150."""


@pytest.mark.skipif(not fashion_mnist_installed(), reason=f"Fashion-MNIST is not installed ({INSTALL_HINT})")
@pytest.mark.parametrize(
    ("method", "knn_margin", "linear_margin"),
    [
        # Measured at 300 steps of 64, 1 thread: kNN +9.9 / +7.8, linear +7.1 / +5.4 points for seeds 42 / 0 (at
        # 150 steps, seed 0's linear margin was +1.6); on 1,000 test images a point is 10.
        ("simclr", 0.04, 0.03),
        # Measured at 150 steps, 1 thread: kNN +5.8, linear +5.5 points; with the demo's ghost batches of 16 views
        # (2026-12-03): kNN +6.8, linear +4.7; and its temperature 0.1: kNN +9.6, linear +5.4.
        ("moco", 0.04, 0.03),
        # Measured: linear +3.1 but kNN -0.8 at 150 steps (BYOL's kNN rises late: +5.65 over seeds 0-2 after the
        # demo's 2,600 steps, out of CI's reach), so only the linear probe is held to a margin here. With the
        # predictor at 10x the learning rate (the demo since 2026-12-03), seed 42 on 2 threads: kNN +2.6, linear +5.9;
        # with the target momentum from 0.97 too (since 2026-12-04): kNN +1.7, linear +4.0.
        ("byol", None, 0.02),
        # Measured at 300 steps, 1 thread, bank 2,000, K 1,024 (InfoNCE, as the demo): kNN +7.4, +6.3, +11.5 and
        # linear +5.4, +2.6, +5.1 points for seeds 42, 0, 1 (at 150 steps: kNN +5.1 and +1.1 for seeds 42 and 0).
        ("npid", 0.04, 0.02),
        # Measured at 150 steps, 1 thread, re-clustering every 50: kNN +8.0, +7.4, +6.9 and linear +5.2, +4.3, +3.6
        # points for seeds 42, 0, 1.
        ("deepcluster", 0.05, 0.02),
        # Measured at 150 steps, 1 thread, trained on the colour photographs: kNN +8.0, +8.8, +3.9 and linear -0.2,
        # +2.7, +2.9 points for seeds 42, 0, 1: only the kNN is held to a margin.
        ("cmc", 0.03, None),
    ],
)
def test_beats_its_random_backbone_on_fashion_mnist(tmp_path, method, knn_margin, linear_margin):
    out = tmp_path / method
    demo = ["--method", method, "--config", str(CONFIGS / f"{method}.yaml")]
    contrastive(out, *demo, *CI_SIZED, "--max_steps", "150", *CI_OPTIONS.get(method, []))
    final = read_metrics(out)[-1]
    print(f"\n{method}: " + ", ".join(f"{key} {value}" for key, value in sorted(final.items())))
    if knn_margin is not None:
        assert final["knn_accuracy"] >= final["knn_accuracy_random_backbone"] + knn_margin, final
    if linear_margin is not None:
        assert final["linear_probe_accuracy"] >= final["linear_probe_accuracy_random_backbone"] + linear_margin, final
    assert math.isfinite(final["eval_loss"])
