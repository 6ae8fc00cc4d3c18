"""The contrastive recipe as a user runs it: exact resume of seeded views, one-line errors, and learning on
Fashion-MNIST against the random backbone. (Two processes against one: tests/test_distributed.py; presets,
2 steps and a fresh-process reload of the export: tests/test_registry.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST_CI_PROBE, RECIPES, assert_one_line_error, read_metrics, run_recipe, train_losses

from fmkit.data.fashion_mnist import INSTALL_HINT, fashion_mnist_installed
from fmkit.losses.infonce import nt_xent_loss

DEBUG = ["--config", str(RECIPES / "configs" / "contrastive" / "simclr.yaml"),
         "--config", str(RECIPES / "configs" / "contrastive" / "debug.yaml")]  # fmt: skip


def contrastive(out: Path, *args: str, check: bool = True):
    return run_recipe([*args, "--output_dir", str(out)], recipe="contrastive.py", check=check)


def test_simclr_resumes_exactly(tmp_path):
    """Views are seeded per (sample, view, step): a resumed run sees the views, and logs the losses, of a
    straight one."""
    args = [*DEBUG, "--max_steps", "6", "--log_every", "1", "--eval_every", "6", "--save_every", "3",
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
    from fmkit.tasks import get_task

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
    contrastive(whole, *DEBUG, *convnext, "--per_device_batch_size", "8")
    contrastive(accumulated, *DEBUG, *convnext, "--per_device_batch_size", "4", "--gradient_accumulation_steps", "2")
    one, two = train_losses(whole), train_losses(accumulated)
    assert two[1] == pytest.approx(one[1], rel=1e-5)
    assert two[3] == pytest.approx(one[3], rel=1e-4)  # the updates were the big batch's too


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "nope"], "--method 'nope': expected one of simclr"),
        (["--views", "cifar"], "views 'cifar': expected one of simclr-fashion-mnist"),
        (["--temperature", "0"], "temperature"),
        (["--image_size", "64"], "stored_size 36 is smaller than image_size 64"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args, expected):
    result = contrastive(tmp_path / "run", *DEBUG, *args, check=False)
    assert_one_line_error(result, expected)


CI_SIZED = [*FASHION_MNIST_CI_PROBE, "--heldout_images", "128", "--eval_batches", "2", "--eval_every", "0",
            "--save_every", "0", "--report_to", "none"]  # fmt: skip
"""The demo preset, shortened and evaluated once at the end, on the pretext learning tests' probe."""


@pytest.mark.skipif(not fashion_mnist_installed(), reason=f"Fashion-MNIST is not installed ({INSTALL_HINT})")
def test_simclr_beats_its_random_backbone_on_fashion_mnist(tmp_path):
    out = tmp_path / "simclr"
    contrastive(out, *CI_SIZED, "--max_steps", "150")
    final = read_metrics(out)[-1]
    print("\nsimclr: " + ", ".join(f"{key} {value}" for key, value in sorted(final.items())))
    # Measured: kNN +7.3, linear +6.0 points (1 thread); on 1,000 test images a point is 10 of them.
    assert final["knn_accuracy"] >= final["knn_accuracy_random_backbone"] + 0.04, final
    assert final["linear_probe_accuracy"] >= final["linear_probe_accuracy_random_backbone"] + 0.03, final
