"""Vision pretext tasks: each module registers one task on the shared loop."""

from fmkit.tasks.pretext import colorization, context, inpainting, jigsaw, mim, rotation, superres

__all__ = ["colorization", "context", "inpainting", "jigsaw", "mim", "rotation", "superres"]
