"""A Hugging Face CLIPProcessor equal to open_clip's tokenizer and eval transform, built without the Hub.

The tokenizer is derived from the BPE file open_clip ships, so a converted model gets its processor offline.
Two known differences from open_clip, neither of which changes what a CLIP model computes:

- Padding: open_clip pads with 0, Hugging Face with <|endoftext|> (49407). The text tower is causal and pooled
  at the first end-of-text token, so nothing after it reaches the embedding.
- Cleaning: open_clip runs ftfy and html.unescape before tokenizing; Hugging Face's CLIP tokenizer only applies
  NFC, whitespace folding and lower-casing. Texts with HTML entities, curly quotes, ligatures, full-width
  characters or mojibake tokenize differently unless passed through `open_clip.tokenizer.basic_clean` first.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer
from transformers.image_utils import PILImageResampling

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
# OpenAI's CLIP keeps the first 48894 merges of the file: 256 bytes + 256 end-of-word bytes + merges + 2
# special tokens make a vocabulary of 49408.
NUM_MERGES = 49152 - 256 - 2


def _bpe_merges() -> list[tuple[str, str]]:
    lines = gzip.decompress(Path(default_bpe()).read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a version header


def clip_tokenizer(context_length: int) -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer (the one open_clip uses) from open_clip's bundled BPE file, no download."""
    merges = _bpe_merges()
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, *(char + "</w>" for char in byte_chars), *("".join(pair) for pair in merges)]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


def clip_image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]) -> CLIPImageProcessor:
    """open_clip's eval transform (shortest edge to image_size, bicubic, centre crop, normalise).

    Not bit-exact: this processor resizes tensors with torchvision where open_clip resizes PIL images (at
    most one 8-bit level apart), and it places the crop at floor(excess / 2) where torchvision rounds half
    to even, so when the resized long side exceeds image_size by 4k + 3 pixels the crop sits one pixel over.
    """
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(value) for value in mean],
        image_std=[float(value) for value in std],
        do_convert_rgb=True,
    )


def clip_processor(image_size: int, mean: Sequence[float], std: Sequence[float], context_length: int) -> CLIPProcessor:
    """Tokenizer and image processor of an open_clip model, to save next to its converted CLIPModel."""
    return CLIPProcessor(
        image_processor=clip_image_processor(image_size, mean, std), tokenizer=clip_tokenizer(context_length)
    )
