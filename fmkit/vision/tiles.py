"""Tiles for jigsaw puzzles (Noroozi & Favaro 2016) and relative patch positions (Doersch et al. 2015).

Both tasks cut an image into a grid of cells and take one smaller tile from each at a random offset, so
tiles never share pixels and seldom touch: lines and textures running from one tile into the next would
solve the puzzle without any understanding of the image.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from fmkit.vision.patches import normalized_patches

MAX_CELLS = 9  # cells! candidate permutations are enumerated: 362880 for a 3x3 grid, 10x more per extra cell
CONTEXT_GRID = 3
CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # context_pair's label l is grid cell NEIGHBOURS[l], row-major


def permutation_set(size: int, cells: int = 9, seed: int = 0) -> np.ndarray:
    """`size` permutations of `cells` tiles, chosen greedily to be far apart in Hamming distance.

    Puzzles whose permutations differ in few positions are hard to tell apart from the tiles alone; the
    jigsaw paper shows larger minimum distances make a better pretext task. Starting from one seeded
    random permutation, each step adds the candidate with the largest minimum distance to those chosen,
    ties broken by the largest mean distance, then by a seeded random pick. Running minimum and summed
    distances over all candidates make each step one vectorised update.
    """
    if not 2 <= cells <= MAX_CELLS:
        raise ValueError(f"permutation_set: cells {cells}: expected 2 to {MAX_CELLS}")
    candidates, matches_table = _all_permutations(cells)
    if not 1 <= size <= len(candidates):
        raise ValueError(f"permutation_set: size {size}: expected 1 to {len(candidates)} (= {cells}!)")
    rng = np.random.default_rng(seed)
    nearest = np.full(len(candidates), cells, dtype=np.int32)
    total = np.zeros(len(candidates), dtype=np.int32)
    chosen = [int(rng.integers(len(candidates)))]
    for _ in range(size - 1):
        distance = cells - sum(matches_table[i, tile] for i, tile in enumerate(candidates[chosen[-1]]))
        np.minimum(nearest, distance, out=nearest)
        total += distance
        score = nearest * (cells * size + 1) + total  # lexicographic: nearest first, then total
        best = np.flatnonzero(score == score.max())
        chosen.append(int(best[rng.integers(len(best))]))
    return candidates[chosen].astype(np.int64)


def _all_permutations(cells: int) -> tuple[np.ndarray, np.ndarray]:
    """All permutations, and table[i, v] = which of them put tile v at position i (for fast Hamming distances)."""
    candidates = np.array(list(itertools.permutations(range(cells))), dtype=np.int8)
    table = np.ascontiguousarray(candidates.T[:, None, :] == np.arange(cells, dtype=np.int8)[None, :, None])
    return candidates, table.view(np.uint8)


def min_hamming_distance(perms: np.ndarray) -> int:
    """The smallest number of positions in which two permutations of the set differ."""
    if len(perms) < 2:
        raise ValueError(f"min_hamming_distance: expected at least 2 permutations, got {len(perms)}")
    distances = (perms[:, None, :] != perms[None, :, :]).sum(axis=-1)
    np.fill_diagonal(distances, perms.shape[1] + 1)
    return int(distances.min())


def grid_tiles(image: torch.Tensor, grid: int, gap: int, rng: np.random.Generator) -> torch.Tensor:
    """One jittered tile per cell of a grid x grid split of the image's central square, row-major.

    Cells have side min(H, W) // grid; tiles have side cell - gap and sit at a random offset in [0, gap]
    on each axis inside their cell.
    """
    origins, side = _tile_origins(image, grid, gap, rng)
    return torch.stack([_crop(image, origin, side) for origin in origins])


def _tile_origins(image: torch.Tensor, grid: int, gap: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Top-left corners [grid * grid, 2] of the jittered tiles, and their side."""
    height, width = image.shape[-2:]
    cell = min(height, width) // grid
    side = cell - gap
    if grid < 1 or gap < 0 or side < 1:
        raise ValueError(
            f"grid {grid}, gap {gap}: a {height}x{width} image gives cells of side {cell}; expected cell > gap >= 0"
        )
    corner = np.array([(height - grid * cell) // 2, (width - grid * cell) // 2])
    cells = np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij"), axis=-1).reshape(-1, 2)
    return corner + cells * cell + rng.integers(0, gap + 1, size=cells.shape), side


def _crop(image: torch.Tensor, origin: np.ndarray, side: int) -> torch.Tensor:
    top, left = int(origin[0]), int(origin[1])
    return image[..., top : top + side, left : left + side]


def jigsaw(
    image: torch.Tensor, permutations: np.ndarray, grid: int, gap: int, rng: np.random.Generator
) -> tuple[torch.Tensor, int]:
    """Shuffled tiles and the index of the permutation that shuffled them.

    Convention: output position i holds original (row-major) tile `permutations[label][i]`, i.e.
    `shuffled = tiles[permutations[label]]`; `shuffled[argsort(permutations[label])]` restores the order.
    """
    if permutations.ndim != 2 or permutations.shape[1] != grid * grid:
        raise ValueError(
            f"jigsaw: permutations of shape {permutations.shape} do not fit a {grid}x{grid} grid "
            f"(expected [n, {grid * grid}])"
        )
    tiles = grid_tiles(image, grid, gap, rng)
    label = int(rng.integers(len(permutations)))
    return tiles[torch.as_tensor(permutations[label], dtype=torch.long)], label


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each tile standardised by its own per-channel mean and std over [..., C, t, t].

    Brightness and contrast shared with neighbouring tiles would otherwise give a tile's position away.
    """
    return normalized_patches(tiles.flatten(-2), eps).view_as(tiles)


def context_pair(
    image: torch.Tensor, gap: int, rng: np.random.Generator, color_drop_prob: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The centre tile of a 3x3 grid, one random neighbour, and the neighbour's position.

    Labels count the neighbours row-major, skipping the centre: 0 top-left, 1 top, 2 top-right, 3 left,
    4 right, 5 bottom-left, 6 bottom, 7 bottom-right. Lenses shift colour channels by different amounts
    towards the image border (chromatic aberration), which would reveal where a patch came from; so with
    probability `color_drop_prob` each patch independently keeps one random channel, copied into all.
    """
    origins, side = _tile_origins(image, CONTEXT_GRID, gap, rng)
    label = int(rng.integers(len(NEIGHBOURS)))
    centre = _drop_colour(_crop(image, origins[CENTRE], side), color_drop_prob, rng)
    neighbour = _drop_colour(_crop(image, origins[NEIGHBOURS[label]], side), color_drop_prob, rng)
    return centre, neighbour, label


def _drop_colour(patch: torch.Tensor, probability: float, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() >= probability:
        return patch.clone()
    channel = int(rng.integers(patch.shape[-3]))
    return patch[..., channel : channel + 1, :, :].repeat_interleave(patch.shape[-3], dim=-3)
