"""Dynamic masking for masked language modeling: BERT's 80/10/10 rule, optionally by whole words."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from fmkit.errors import ConfigError

IGNORE_INDEX = -100


class Masker:
    """Chooses positions to predict; special tokens ([CLS], [SEP], [PAD], ...) are never chosen."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, probability: float = 0.15, whole_words: bool = False):
        if not 0.0 < probability < 1.0:
            raise ConfigError(f"mlm_probability {probability}: expected a value between 0 and 1")
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no mask token; masked LM needs one")
        size = len(tokenizer)
        self.probability = probability
        self.mask_id = tokenizer.mask_token_id
        self.is_special = torch.zeros(size, dtype=torch.bool)
        self.is_special[tokenizer.all_special_ids] = True
        self.replacement_ids = torch.nonzero(~self.is_special).squeeze(1)
        self.continues_word = continuation_table(tokenizer) if whole_words else None

    def __call__(self, ids: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (inputs, labels): labels hold the original id where a prediction is due, else -100.

        Row i is masked with its own generator seeded by `seeds[i]`, so a sample's mask does not depend on
        which other samples share its batch.
        """
        length = ids.shape[1]
        draw, action, pick = [], [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            draw.append(torch.rand(length, generator=generator))
            action.append(torch.rand(length, generator=generator))
            pick.append(torch.randint(len(self.replacement_ids), (length,), generator=generator))
        draw, action = torch.stack(draw), torch.stack(action)
        special = self.is_special[ids]
        if self.continues_word is not None:
            draw = _spread_over_words(draw, ~self.continues_word[ids] | special)
        chosen = (draw < self.probability) & ~special
        labels = torch.where(chosen, ids, IGNORE_INDEX)
        random_ids = self.replacement_ids[torch.stack(pick)]
        inputs = torch.where(chosen & (action < 0.8), self.mask_id, ids)
        inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
        return inputs, labels


def _spread_over_words(draw: torch.Tensor, starts_word: torch.Tensor) -> torch.Tensor:
    """Give every token the random draw of its word's first token, so a word is masked whole or not at all."""
    positions = torch.arange(draw.shape[1]).expand_as(draw)
    word_start = torch.where(starts_word, positions, 0).cummax(dim=1).values
    return draw.gather(1, word_start)


def continuation_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """True for vocabulary entries that continue a word (WordPiece '##x', or no 'Ġ'/'▁' word-start marker)."""
    vocab = tokenizer.get_vocab()
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        continues = lambda t: t.startswith("##")  # noqa: E731
    elif any(t.startswith("Ġ") for t in tokens):
        continues = lambda t: not t.startswith("Ġ")  # noqa: E731
    elif any(t.startswith("▁") for t in tokens):
        continues = lambda t: not t.startswith("▁")  # noqa: E731
    else:
        raise ConfigError(
            f"whole_word_masking: cannot tell word boundaries in tokenizer {tokenizer.name_or_path!r} "
            "(expected WordPiece '##', byte-level BPE 'Ġ' or SentencePiece '▁' markers)"
        )
    table = torch.zeros(len(tokenizer), dtype=torch.bool)
    for token, index in vocab.items():
        table[index] = continues(token)
    table[tokenizer.all_special_ids] = False
    return table
