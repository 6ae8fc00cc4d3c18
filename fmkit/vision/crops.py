"""Square crops of a batch of stored images: seeded random crops (and flips) for training, centre crops for
evaluation, which is what fmkit's saved image processors reproduce (resize to the stored size, centre-crop)."""

from __future__ import annotations

import numpy as np
import torch


def square_crops(
    images: np.ndarray, size: int, rngs: list[np.random.Generator] | None, flip: bool = False
) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float [B, 3, size, size] in [0, 1]; random crops (flips if `flip`) drawn from each
    image's own generator, or centre crops when `rngs` is None."""
    stored = images.shape[1]
    out = []
    for i, image in enumerate(images):
        if rngs is None:
            top = left = (stored - size) // 2
            flipped = False
        else:
            top, left = (int(v) for v in rngs[i].integers(0, stored - size + 1, size=2))
            flipped = flip and bool(rngs[i].integers(2))
        crop = image[top : top + size, left : left + size]
        out.append(crop[:, ::-1] if flipped else crop)
    return torch.from_numpy(np.ascontiguousarray(np.stack(out))).permute(0, 3, 1, 2).float().div_(255)
