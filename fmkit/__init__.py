"""fmkit: self-supervised pretraining of text, vision and text-vision models on one Accelerate loop."""

__version__ = "0.1.0"
