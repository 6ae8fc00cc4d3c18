"""Jigsaw puzzles (Noroozi & Favaro 2016): putting tiles back in place needs to know what objects look like.

Tiles are cut with a gap and random jitter so that edges cannot be matched, and by default each tile is
normalised on its own so that brightness cannot give its position away. The permutation set is chosen greedily for
maximal Hamming distance, deterministically from (size, seed), and kept in the model's buffers, so it is
saved in every checkpoint and a resumed run checks it still has the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmkit.config import NON_NEGATIVE, Range, ranged
from fmkit.errors import ConfigError
from fmkit.models.backbone import Backbone
from fmkit.tasks import register_task
from fmkit.tasks.pretext.classification import ClassificationPretext, TileClassifier
from fmkit.tasks.pretext.common import PretextConfig
from fmkit.vision.tiles import jigsaw, min_hamming_distance, normalize_tiles, permutation_set

GRID = 3


@dataclass
class JigsawConfig(PretextConfig):
    """Jigsaw: a 3x3 grid of tiles shuffled by one of `num_permutations` permutations; classify which."""

    num_permutations: int = ranged(100, Range(2, 10_000))
    """Size of the permutation set (the paper's best: 1000; 100 learns faster on small data)."""
    permutation_seed: int = 0
    """Seeds the choice of the permutation set (the classes); a resume must use the same one."""
    tile_gap: int = ranged(0, NON_NEGATIVE)
    """Pixels left between tiles (jitter range); 0 means image_size // 12."""
    per_tile_normalization: bool = True
    """Standardise each tile on its own (the paper's guard against brightness cues). Off, tiles are normalised
    like whole images, which is what the probes and downstream users feed the backbone (and its BatchNorm)."""


class JigsawModel(TileClassifier):
    def __init__(self, backbone: Backbone, permutations: np.ndarray):
        super().__init__(backbone, tiles=GRID * GRID, num_classes=len(permutations))
        # A copy, so that loading a checkpoint never writes into the task's array.
        self.register_buffer("permutations", torch.tensor(permutations))
        self.register_load_state_dict_pre_hook(self._refuse_other_permutations)

    def _refuse_other_permutations(self, module, state_dict: dict, prefix: str, *args) -> None:
        """Labels index the permutation set: resuming with another set would silently train on wrong labels."""
        saved = state_dict.get(prefix + "permutations")
        if saved is not None and not torch.equal(saved.cpu(), self.permutations.cpu()):
            raise ConfigError(
                f"the checkpoint's jigsaw permutation set ({len(saved)} permutations) differs from this run's "
                f"({len(self.permutations)}); resume with the num_permutations and permutation_seed it was saved with"
            )


@register_task
class Jigsaw(ClassificationPretext):
    name = "jigsaw"
    config_class = JigsawConfig
    config: JigsawConfig

    @property
    def pipeline_note(self) -> str:
        size = self.config.num_permutations
        return f"jigsaw: 3x3 tiles, {size} permutations (minimum Hamming distance {self.min_distance})"

    def build_model(self, backbone: Backbone) -> JigsawModel:
        self.permutations = permutation_set(self.config.num_permutations, GRID * GRID, self.config.permutation_seed)
        self.min_distance = min_hamming_distance(self.permutations)
        self.gap = self.config.tile_gap or self.config.image_size // 12
        return JigsawModel(backbone, self.permutations)

    def make_inputs(self, images: torch.Tensor, rngs: list[np.random.Generator]) -> dict:
        puzzles = [
            jigsaw(image, self.permutations, GRID, self.gap, rng) for image, rng in zip(images, rngs, strict=True)
        ]
        tiles = torch.stack([tiles for tiles, _ in puzzles])
        tiles = normalize_tiles(tiles) if self.config.per_tile_normalization else self.normalize(tiles)
        return {"pixel_values": tiles, "labels": torch.tensor([label for _, label in puzzles])}
