"""Vision pretext operations: rotations, jigsaw and context tiles, Lab colour bins, degradations, MAE patches."""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pytest
import torch
from skimage import color

from fmkit.vision.degrade import low_resolution, region_mask
from fmkit.vision.lab import (
    ab_bin_centres,
    decode_ab,
    lab_to_rgb,
    quantize_ab,
    rebalancing_weights,
    rgb_to_lab,
)
from fmkit.vision.patches import normalized_patches, patchify, random_masking, unpatchify
from fmkit.vision.rotation import rotate_all
from fmkit.vision.tiles import (
    context_pair,
    grid_tiles,
    jigsaw,
    min_hamming_distance,
    normalize_tiles,
    permutation_set,
)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def coordinate_image(size: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column: a tile tells exactly where it was cut."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols]).float()


def cell_image(grid: int, cell: int, channels: int = 1) -> torch.Tensor:
    """Cell k (row-major) is constant, valued k + 1 in channel 0 and k + 1 + c / 10 in channel c."""
    index = torch.arange(grid * grid, dtype=torch.float32).view(grid, grid) + 1
    cells = index.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([cells + c / 10 for c in range(channels)])


def tile_cells(tiles: torch.Tensor) -> list[int]:
    """The row-major cell each constant tile of a `cell_image` came from."""
    assert torch.all(tiles[:, 0] == tiles[:, 0, :1, :1]), "a tile straddles two cells"
    return [int(v) - 1 for v in tiles[:, 0, 0, 0]]


# Rotation


def test_rotation_labels_match_counter_clockwise_quarter_turns():
    images = random_images(3, 2, 5, 5)
    rotated, labels = rotate_all(images)
    assert rotated.shape == (12, 2, 5, 5)
    assert labels.dtype == torch.long
    assert labels.tolist() == [0, 1, 2, 3] * 3
    for i in range(3):
        for k in range(4):
            assert torch.equal(rotated[4 * i + k], torch.rot90(images[i], k, dims=(-2, -1)))
    corner = torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 3] = 1  # top-right; a quarter turn counter-clockwise moves it to the top-left
    rotated, _ = rotate_all(corner)
    assert [tuple(torch.nonzero(image[0])[0].tolist()) for image in rotated] == [(0, 3), (0, 0), (3, 0), (3, 3)]


def test_rotation_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        rotate_all(torch.zeros(1, 3, 4, 5))


# Jigsaw permutations


def test_permutation_set_is_deterministic_distinct_and_far_apart():
    start = time.perf_counter()
    large = permutation_set(1000)
    assert time.perf_counter() - start < 10
    assert large.shape == (1000, 9) and large.dtype == np.int64
    assert np.all(np.sort(large, axis=1) == np.arange(9))
    assert len({tuple(p) for p in large}) == 1000
    assert np.array_equal(large, permutation_set(1000, seed=0))
    assert not np.array_equal(permutation_set(100, seed=1), permutation_set(100, seed=0))
    small = permutation_set(100)
    assert min_hamming_distance(large) >= 2
    assert min_hamming_distance(small) > min_hamming_distance(large)
    random_choice = np.array([rng(0).permutation(9) for _ in range(100)])
    assert min_hamming_distance(small) > min_hamming_distance(random_choice)


def test_permutation_set_is_greedy_on_min_then_mean_distance():
    """Each new permutation is one of the best candidates, by minimum then total distance to those before it."""
    every = np.array(list(itertools.permutations(range(9))))
    chosen = permutation_set(12, seed=3)
    distances = np.zeros((len(every), 0), dtype=np.int64)
    for previous, current in zip(chosen[:-1], chosen[1:], strict=True):
        distances = np.column_stack([distances, (every != previous).sum(axis=1)])
        best_min = distances.min(axis=1).max()
        best_total = distances.sum(axis=1)[distances.min(axis=1) == best_min].max()
        row = np.flatnonzero((every == current).all(axis=1))[0]
        assert distances[row].min() == best_min and distances[row].sum() == best_total


def test_permutation_set_can_exhaust_small_grids():
    every = permutation_set(24, cells=4)
    assert len({tuple(p) for p in every}) == 24
    with pytest.raises(ValueError, match="size 25"):
        permutation_set(25, cells=4)


def test_min_hamming_distance():
    assert min_hamming_distance(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])) == 2
    assert min_hamming_distance(np.array([[0, 1, 2, 3], [1, 0, 3, 2]])) == 4


# Tiles


def test_grid_tiles_are_jittered_inside_their_cells():
    grid, cell, gap = 3, 10, 3
    image = coordinate_image(grid * cell)
    offsets = set()
    for seed in range(40):
        tiles = grid_tiles(image, grid, gap, rng(seed))
        assert tiles.shape == (9, 2, cell - gap, cell - gap)
        for index, tile in enumerate(tiles):
            row, col = divmod(index, grid)
            top, left = int(tile[0, 0, 0]), int(tile[1, 0, 0])
            assert row * cell <= top <= row * cell + gap and col * cell <= left <= col * cell + gap
            assert torch.equal(tile, image[:, top : top + cell - gap, left : left + cell - gap])
            offsets.add((top - row * cell, left - col * cell))
    assert {0, gap} <= {dy for dy, _ in offsets}
    assert torch.equal(grid_tiles(image, grid, gap, rng(7)), grid_tiles(image, grid, gap, rng(7)))


def test_grid_tiles_use_the_central_square_of_a_wide_image():
    image = torch.cat([torch.zeros(1, 30, 5), cell_image(3, 10), torch.zeros(1, 30, 5)], dim=2)
    tiles = grid_tiles(image, 3, 2, rng(0))
    assert tiles.shape == (9, 1, 8, 8)
    assert tile_cells(tiles) == list(range(9))
    with pytest.raises(ValueError, match="gap 10"):
        grid_tiles(image, 3, 10, rng(0))


def test_jigsaw_label_permutation_restores_row_major_order():
    perms = permutation_set(30)
    image = cell_image(3, 8, channels=3)
    labels = set()
    for seed in range(20):
        shuffled, label = jigsaw(image, perms, 3, 2, rng(seed))
        labels.add(label)
        assert tile_cells(shuffled) == perms[label].tolist()
        restored = shuffled[torch.from_numpy(np.argsort(perms[label]))]
        assert tile_cells(restored) == list(range(9))
    assert len(labels) > 10
    with pytest.raises(ValueError, match="2x2"):
        jigsaw(image, perms, 2, 2, rng(0))


def test_normalize_tiles_hides_brightness_and_contrast():
    tiles = random_images(9, 3, 6, 6)
    normal = normalize_tiles(tiles)
    flat = normal.flatten(-2)
    assert torch.allclose(flat.mean(-1), torch.zeros(9, 3), atol=1e-5)
    assert torch.allclose(flat.std(-1), torch.ones(9, 3), atol=1e-4)
    brighter = tiles * torch.tensor([0.5, 2.0, 1.5]).view(3, 1, 1) + 0.2
    assert torch.allclose(normalize_tiles(brighter), normal, atol=1e-4)


# Context prediction

NEIGHBOUR_CELLS = {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (1, 0), 4: (1, 2), 5: (2, 0), 6: (2, 1), 7: (2, 2)}


def test_context_pair_label_names_the_neighbour_position():
    image = cell_image(3, 12, channels=3)
    labels = set()
    for seed in range(60):
        centre, neighbour, label = context_pair(image, 3, rng(seed), color_drop_prob=0.0)
        labels.add(label)
        assert centre.shape == neighbour.shape == (3, 9, 9)
        assert tile_cells(centre[None]) == [4]
        assert divmod(tile_cells(neighbour[None])[0], 3) == NEIGHBOUR_CELLS[label]
        assert not torch.equal(centre[0], centre[1])
    assert labels == set(range(8))


def test_context_pair_colour_drop_copies_one_channel():
    image = cell_image(3, 12, channels=3)
    dropped = 0
    for seed in range(200):
        for patch in context_pair(image, 3, rng(seed), color_drop_prob=0.5)[:2]:
            if torch.equal(patch[0], patch[1]) and torch.equal(patch[1], patch[2]):
                assert round(float(patch[0, 0, 0]) % 1, 3) in (0.0, 0.1, 0.2)  # one of the original channels
                dropped += 1
    assert 160 < dropped < 240
    centre, neighbour, _ = context_pair(image, 3, rng(0), color_drop_prob=1.0)
    assert all(torch.equal(p[0], p[c]) for p in (centre, neighbour) for c in (1, 2))


# Lab colour


def skimage_per_image(function, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lab2rgb warns about out-of-gamut values, which are part of the test
        return torch.stack([torch.from_numpy(function(image.permute(1, 2, 0).double().numpy())) for image in images])


def test_rgb_to_lab_matches_skimage():
    images = random_images(4, 3, 16, 16)
    images[0, :, :4] = torch.linspace(0, 0.05, 16)  # dark values, where sRGB and Lab switch to linear segments
    images[1, :, 0, :2] = torch.tensor([[0.0, 1.0]] * 3)  # black and white
    lab = rgb_to_lab(images)
    reference = skimage_per_image(color.rgb2lab, images).permute(0, 3, 1, 2).float()
    assert torch.allclose(lab, reference, rtol=1e-3, atol=1e-3)
    assert lab[1, 0, 0, 1] == pytest.approx(100, abs=1e-3) and lab[1, 0, 0, 0] == pytest.approx(0, abs=1e-3)
    assert torch.allclose(rgb_to_lab(images[2]), lab[2])


def test_lab_to_rgb_matches_skimage_in_and_out_of_gamut():
    lab = torch.cat([rgb_to_lab(random_images(2, 3, 8, 8)), random_images(2, 3, 8, 8, seed=1)], dim=0)
    lab[2:, 0] *= 100
    lab[2:, 1:] = lab[2:, 1:] * 220 - 110
    reference = skimage_per_image(color.lab2rgb, lab).permute(0, 3, 1, 2).float()
    assert torch.allclose(lab_to_rgb(lab), reference, rtol=1e-3, atol=1e-3)


def test_rgb_lab_round_trip():
    images = random_images(8, 3, 32, 32, seed=2)
    assert (lab_to_rgb(rgb_to_lab(images)) - images).abs().max() < 1e-4


def test_ab_bins_quantize_to_the_nearest_centre():
    centres = ab_bin_centres()
    assert centres.shape == (484, 2)
    assert centres.min() == -105 and centres.max() == 105
    as_image = centres.T.reshape(1, 2, 22, 22)
    assert torch.equal(quantize_ab(as_image, centres).flatten(), torch.arange(484))
    assert torch.equal(quantize_ab(as_image + 4.9, centres), quantize_ab(as_image - 4.9, centres))
    ab = random_images(2, 2, 8, 8, seed=3) * 240 - 120
    nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), centres).argmin(dim=1)
    assert torch.equal(quantize_ab(ab, centres).flatten(), nearest)


def test_rebalancing_weights_favour_rare_colours():
    counts = torch.zeros(484)
    counts[torch.arange(0, 484, 7)] = torch.arange(1, 71).float() ** 2
    p = counts / counts.sum()
    for sigma in (5.0, 0.1):
        assert float((p * rebalancing_weights(counts, sigma=sigma)).sum()) == pytest.approx(1.0, abs=1e-5)
    unsmoothed = rebalancing_weights(counts, sigma=0.1)  # a hundredth of a bin: no mass reaches a neighbour
    rarer = counts[:, None] < counts[None, :]
    assert torch.all((unsmoothed[:, None] > unsmoothed[None, :])[rarer])
    assert torch.allclose(rebalancing_weights(counts, mix=1.0), torch.ones(484))


def test_rebalancing_smoothing_spreads_to_neighbouring_bins():
    counts = torch.zeros(484)
    counts[11 * 22 + 11] = 1000
    counts[0] = 1
    weights = rebalancing_weights(counts, sigma=10.0)
    beside, far_away = 11 * 22 + 12, 21 * 22 + 21  # both empty
    assert weights[beside] < weights[far_away]


def test_decode_ab_is_the_annealed_mean():
    centres = ab_bin_centres()
    logits = torch.full((1, 484, 2, 2), -1e4)
    logits[0, 37] = 20.0
    assert torch.allclose(decode_ab(logits, centres), centres[37].view(1, 2, 1, 1).expand(1, 2, 2, 2), atol=1e-3)
    logits[0, 200] = 19.0
    for temperature in (1.0, 0.38):
        share = torch.sigmoid(torch.tensor(1.0 / temperature))
        expected = share * centres[37] + (1 - share) * centres[200]
        assert torch.allclose(decode_ab(logits, centres, temperature)[0, :, 0, 0], expected, atol=1e-3)


# Degradations


def test_low_resolution_removes_fine_detail_and_keeps_smooth_content():
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checkerboard = ((rows + cols) % 2).float().expand(2, 3, 16, 16)
    blurred = low_resolution(checkerboard, 2)
    assert blurred.shape == checkerboard.shape
    assert torch.allclose(blurred, torch.full_like(blurred, 0.5), atol=1e-5)
    constant = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(low_resolution(constant, 4), constant, atol=1e-6)
    wave = (0.5 + 0.4 * torch.sin(2 * torch.pi * cols / 16)).float().expand(1, 1, 16, 16)
    assert (low_resolution(wave, 2) - wave)[..., 2:-2].abs().max() < 0.03  # borders lack context
    step = (cols >= 8).float().expand(1, 1, 16, 16)
    sharp = low_resolution(step, 4)
    assert sharp.min() >= 0 and sharp.max() <= 1
    with pytest.raises(ValueError, match="factor 3"):
        low_resolution(checkerboard, 3)


def test_region_mask_centre_and_random_squares():
    centre = region_mask(32, 0.5, "center", rng(0))
    assert centre.shape == (1, 32, 32) and centre.dtype == torch.bool
    assert int(centre.sum()) == 256 and bool(centre[0, 8:24, 8:24].all())
    corners = set()
    for seed in range(50):
        mask = region_mask(32, 0.25, "random", rng(seed))[0]
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert int(mask.sum()) == 64
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 30
    assert torch.equal(region_mask(32, 0.25, "random", rng(3)), region_mask(32, 0.25, "random", rng(3)))
    with pytest.raises(ValueError, match="fraction 1.0"):
        region_mask(32, 1.0, "center", rng(0))
    with pytest.raises(ValueError, match="'middle'"):
        region_mask(32, 0.5, "middle", rng(0))


# MAE patches


def test_patchify_is_row_major_and_unpatchify_inverts_it():
    images = random_images(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[1, 4], images[1, :, 4:8, 4:8].permute(1, 2, 0).flatten())
    assert torch.equal(unpatchify(patches, 4, 3, 8, 12), images)
    with pytest.raises(ValueError, match="patch size 5"):
        patchify(images, 5)


def test_random_masking_counts_order_and_determinism():
    visible, mask = random_masking(196, 0.75, rng(0))
    assert visible.dtype == torch.long and mask.dtype == torch.bool
    assert len(visible) == 49 and int(mask.sum()) == 147
    assert torch.all(visible[1:] > visible[:-1])
    assert not mask[visible].any()
    again, _ = random_masking(196, 0.75, rng(0))
    other, _ = random_masking(196, 0.75, rng(1))
    assert torch.equal(visible, again) and not torch.equal(visible, other)
    assert len(random_masking(4, 0.99, rng(0))[0]) == 1
    assert len(random_masking(4, 0.01, rng(0))[0]) == 3


def test_normalized_patches_have_zero_mean_unit_variance():
    patches = random_images(2, 6, 48) * 3 + 1
    normal = normalized_patches(patches)
    assert torch.allclose(normal.mean(-1), torch.zeros(2, 6), atol=1e-5)
    assert torch.allclose(normal.var(-1), torch.ones(2, 6), atol=1e-4)
    assert normalized_patches(torch.full((1, 4, 12), 0.7)).abs().max() < 1e-3  # eps keeps flat patches finite
