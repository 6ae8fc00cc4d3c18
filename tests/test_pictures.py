"""The pictures and baselines beside every metric: restoration baselines, sample grids, curves.png, the card."""

from __future__ import annotations

import math

import pytest
import torch

from fmkit.eval.image_quality import ab_error_auc
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
