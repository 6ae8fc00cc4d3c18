"""The pictures and baselines beside every metric: restoration baselines, sample grids, curves.png, the card."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, read_metrics
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_pretext_recipe import BACKBONES, IMAGE_SIZE, TINY, data_args
from test_pretext_recipe import images as pretext_images  # noqa: F401 (the `images` fixture)

from fmkit.cli import run_recipe
from fmkit.eval.image_quality import ab_error_auc
from fmkit.eval.retrieval import recall_at_k_chance, zero_shot_chance
from fmkit.plots import GRID_GAP, curves_figure, image_grid, write_curves
from fmkit.tasks.pretext.common import SAMPLE_IMAGES
from fmkit.tasks.pretext.mim import MaskedImageModeling, MIMConfig

# -- restoration baselines ------------------------------------------------------------------------------------


def test_ab_error_auc_is_zhangs_area_under_the_threshold_curve():
    # Four pixels with ab errors 0, 75, 150 and 300 (3-4-5 triangles): each within a threshold t in [0, 150]
    # for 150, 75, 0 and 0 of the 150 units of the sweep.
    target = torch.tensor([[0.0, 45.0, 90.0, 180.0], [0.0, 60.0, 120.0, 240.0]]).view(1, 2, 2, 2)
    auc = ab_error_auc(torch.zeros_like(target), target)
    assert auc.shape == (1,) and auc.item() == pytest.approx((1.0 + 0.5 + 0.0 + 0.0) / 4)
    assert ab_error_auc(target, target).item() == 1.0


def test_ab_error_auc_rejects_non_ab_tensors():
    with pytest.raises(ValueError, match=r"ab_error_auc: expected .* \[B, 2, H, W\], got \(1, 3, 2, 2\)"):
        ab_error_auc(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))


def mim_task_on_raw_pixels() -> MaskedImageModeling:
    """A MIM task whose input normalisation is the identity, so patches are pixels in [0, 1]."""
    task = MaskedImageModeling(MIMConfig())
    task.patch, task.mean, task.std = 2, torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    return task


def test_mim_scores_hidden_patches_beside_the_visible_mean_colour():
    # A 2x4 image of two 2x2 patches: the left one visible in colour (0.2, 0.4, 0.6), the right one hidden, grey 0.5.
    image = torch.empty(1, 3, 2, 4)
    image[:, :, :, :2] = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    image[:, :, :, 2:] = 0.5
    batch = {"pixel_values": image, "visible": torch.tensor([[0]]), "mask": torch.tensor([[False, True]])}
    predicts_nothing = lambda pixels, visible: torch.zeros(1, 2, 12)  # noqa: E731

    sums = mim_task_on_raw_pixels().heldout_sums(predicts_nothing, batch)

    # The baseline fills the hidden patch with (0.2, 0.4, 0.6): squared errors 0.09, 0.01, 0.01.
    assert sums["psnr_mean_patch"].item() == pytest.approx(10 * math.log10(3 / 0.11))
    # A zero prediction becomes the visible pixels' mean, 0.4, everywhere: squared error 0.01.
    assert sums["psnr"].item() == pytest.approx(20.0)
    # The hidden patch is flat, so its normalised target is 0: predicting 0 is exact. The baseline's
    # normalised patch is (-0.2, 0, 0.2) over the visible patch's spread, sqrt(4 * 0.08 / 11).
    assert sums["loss"].item() == pytest.approx(0.0, abs=1e-9)
    assert sums["loss_mean_patch"].item() == pytest.approx(2 * 0.04 / (0.32 / 11) / 3, rel=1e-4)


def test_mim_samples_show_the_masked_the_filled_and_the_whole_image():
    image = torch.rand(1, 3, 2, 4)
    batch = {"pixel_values": image, "visible": torch.tensor([[0]]), "mask": torch.tensor([[False, True]])}
    masked, filled, whole = mim_task_on_raw_pixels().sample_columns(lambda p, v: torch.zeros(1, 2, 12), batch)
    assert torch.allclose(whole, image)
    assert torch.equal(masked[..., 2:], torch.full((1, 3, 2, 2), 0.5)) and torch.allclose(
        masked[..., :2], image[..., :2]
    )
    # The visible patch is kept; the hidden one is the prediction (0 here) in pixels: the visible patch's mean.
    assert torch.allclose(filled[..., :2], image[..., :2])
    assert torch.allclose(filled[..., 2:], image[..., :2].mean().expand(1, 3, 2, 2))


def test_retrieval_chance_is_a_random_ranking():
    # Four rows, two sharing a caption: at k=1 those two queries hit with 2/4, the others with 1/4; at k=2 they
    # miss with (2/4)(1/3) and (3/4)(2/3).
    chance = recall_at_k_chance(["a", "a", "b", "c"], (1, 2, 10))
    assert chance["image_to_text_recall@1_chance"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)
    assert chance["text_to_image_recall@2_chance"] == pytest.approx((2 * (1 - 1 / 6) + 2 * 0.5) / 4)
    assert chance["image_to_text_recall@10_chance"] == 1.0


def test_zero_shot_chance():
    assert zero_shot_chance(10, (1, 5)) == {"zero_shot_top1_chance": 0.1, "zero_shot_top5_chance": 0.5}
    assert zero_shot_chance(3, (1, 5)) == {"zero_shot_top1_chance": 1 / 3, "zero_shot_top5_chance": 1.0}


# -- sample grids ---------------------------------------------------------------------------------------------


def test_image_grid_puts_one_image_per_row_and_one_tensor_per_column():
    columns = [torch.full((4, 3, 8, 8), value) for value in (0.0, 0.5, 1.0)]
    columns[1] = columns[1][:, :1]  # a one-channel column is shown grey
    grid = image_grid(columns)
    assert grid.shape == (4 * 8 + 3 * GRID_GAP, 3 * 8 + 2 * GRID_GAP, 3) and grid.dtype == np.uint8
    left, middle = 8 + GRID_GAP, 2 * (8 + GRID_GAP)
    assert (grid[:8, :8] == 0).all() and (grid[:8, left : left + 8] == 128).all()
    assert (grid[:8, middle:] == 255).all() and (grid[:, 8:left] == 255).all()


def test_image_grid_refuses_columns_of_different_images():
    expected = r"image_grid: expected \[B, C, H, W\] tensors .*, got \[\(4, 3, 8, 8\), \(2, 3, 8, 8\)\]"
    with pytest.raises(ValueError, match=expected):
        image_grid([torch.zeros(4, 3, 8, 8), torch.zeros(2, 3, 8, 8)])


# -- curves.png -----------------------------------------------------------------------------------------------

RECORDS = [
    {"step": 0, "eval_loss": 2.5, "eval_loss_unigram": 3.0, "eval_perplexity": 12.0, "eval_psnr": 20.0,
     "eval_psnr_bicubic": 22.0, "knn_accuracy": 0.3, "knn_accuracy_random_backbone": 0.2, "skipped_pairs": 0.0,
     "probe_set": "a -> b", "confusion": [[1, 0], [0, 1]]},
    {"step": 1, "loss": 2.0, "discriminator_loss": 0.7, "lr": 1e-3, "samples_per_s": 10.0},
    {"step": 2, "loss": 1.5, "discriminator_loss": 0.6, "lr": 1e-3, "samples_per_s": 11.0},
    {"step": 2, "eval_loss": None, "eval_loss_unigram": 3.0, "eval_perplexity": 8.0, "eval_psnr": 23.0,
     "eval_psnr_bicubic": 22.0, "knn_accuracy": 0.4, "knn_accuracy_random_backbone": 0.2, "skipped_pairs": 1.0,
     "probe_set": "a -> b", "confusion": [[1, 0], [0, 1]]},
]  # fmt: skip


def lines_of(axes) -> dict[str, tuple[str, str, int]]:
    return {line.get_label(): (line.get_color(), line.get_linestyle(), len(line.get_xdata())) for line in axes.lines}


def test_curves_group_metrics_and_draw_baselines_dashed_in_their_metrics_colour(caplog):
    with caplog.at_level(logging.WARNING, logger="fmkit.plots"):
        figure = curves_figure(RECORDS)
    panels = {axes.get_title(): lines_of(axes) for axes in figure.axes}
    assert list(panels) == ["training loss", "eval loss", "perplexity", "accuracy-like, in [0, 1]", "PSNR (dB)",
                            "skipped_pairs"]  # fmt: skip
    assert figure.axes[2].get_yscale() == "linear", "perplexity 12 to 8 needs no log scale"
    assert panels["training loss"] == {"discriminator_loss": ("C0", "-", 2), "loss": ("C1", "-", 2)}
    # eval_loss was not finite at step 2: that point is left out, its baseline is drawn whole.
    assert panels["eval loss"] == {"eval_loss": ("C0", "-", 1), "eval_loss_unigram": ("C0", "--", 2)}
    assert panels["PSNR (dB)"] == {"eval_psnr": ("C0", "-", 2), "eval_psnr_bicubic": ("C0", "--", 2)}
    assert panels["accuracy-like, in [0, 1]"] == {"knn_accuracy": ("C0", "-", 2),
                                                  "knn_accuracy_random_backbone": ("C0", "--", 2)}  # fmt: skip
    # A list is no curve: skipped with a warning naming it; the string label is left out quietly.
    assert [r.getMessage() for r in caplog.records] == [
        "curves.png: skipping metric confusion, its value [[1, 0], [0, 1]] at step 0 is not a number"
    ]


def test_no_curves_without_metrics(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "probe_set": "a -> b"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="fmkit.plots"):
        assert write_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists() and "no metric to plot" in caplog.text


# -- a run writes them all ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def superres_run(tmp_path_factory, pretext_images) -> Path:  # noqa: F811 (the fixture)
    """Two steps of super-resolution in this process, evaluating at 0 and 2, with TensorBoard on."""
    out = tmp_path_factory.mktemp("superres") / "run"
    argv = ["--output_dir", str(out), *BACKBONES["resnet"], *data_args(pretext_images), *TINY, "--max_steps", "2",
            "--eval_every", "2", "--log_every", "1", "--save_every", "0", "--report_to", "tensorboard"]  # fmt: skip
    run_recipe("pretext", RECIPES / "configs", ["--task", "superres", *argv])
    return out


def test_a_run_writes_sample_grids_for_every_evaluation(superres_run):
    grids = sorted((superres_run / "samples").iterdir())
    assert [path.name for path in grids] == ["step_0.png", "step_2.png"]
    rows, columns = SAMPLE_IMAGES, 3  # held-out input | prediction | target
    for path in grids:
        with Image.open(path) as grid:
            expected = (columns * (IMAGE_SIZE + GRID_GAP) - GRID_GAP, rows * (IMAGE_SIZE + GRID_GAP) - GRID_GAP)
            assert grid.size == expected and grid.mode == "RGB"
    with Image.open(grids[0]) as first, Image.open(grids[-1]) as last:
        inputs = (0, 0, IMAGE_SIZE, expected[1])
        # The same held-out images every time; the prediction changes as the model trains.
        assert first.crop(inputs).tobytes() == last.crop(inputs).tobytes()
        assert first.tobytes() != last.tobytes()
    accumulator = EventAccumulator(str(superres_run / "tensorboard"))
    accumulator.Reload()
    assert [image.step for image in accumulator.Images("samples")] == [0, 2]


def test_a_run_writes_curves_and_a_card_with_baselines(superres_run):
    with Image.open(superres_run / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size[0] > 400
    records = read_metrics(superres_run)
    titles = [axes.get_title() for axes in curves_figure(records).axes]
    assert titles == ["training loss", "eval loss", "accuracy-like, in [0, 1]", "PSNR (dB)"]
    final = [r for r in records if "eval_psnr" in r][-1]
    card = (superres_run / "README.md").read_text()
    row = f"| eval_psnr | {final['eval_psnr']:.4g} | {final['eval_psnr_bicubic']:.4g} (bicubic) |"
    assert row in card and "| eval_psnr_bicubic |" not in card


def test_perplexity_falling_by_more_than_ten_times_is_drawn_on_a_log_scale():
    records = [{"step": 0, "eval_perplexity": 1000.0}, {"step": 5, "eval_perplexity": 20.0}]
    (axes,) = curves_figure(records).axes
    assert axes.get_title() == "perplexity" and axes.get_yscale() == "log"
