"""Dynamic MLM masking: BERT's 80/10/10 rule, special tokens, per-sample seeds and whole-word masking."""

from __future__ import annotations

import json

import pytest
import torch

from fmkit.data.masking import IGNORE_INDEX, Masker
from fmkit.data.tokenizer import BERT_SPECIALS, SpecialTokens, train_tokenizer
from fmkit.errors import ConfigError

ROWS, LENGTH = 128, 256


@pytest.fixture(scope="module")
def texts(text_files) -> list[str]:
    train, _ = text_files
    return [json.loads(line)["text"] for line in train.read_text(encoding="utf-8").splitlines()[:400]]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, "wordpiece", 300, BERT_SPECIALS)


@pytest.fixture(scope="module")
def batch(tokenizer) -> torch.Tensor:
    """Random ordinary tokens with [CLS] first, [SEP] and [PAD] scattered, [PAD] at the end."""
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in set(special.tolist())])
    ids = ordinary[torch.randint(len(ordinary), (ROWS, LENGTH), generator=generator)]
    scattered = torch.rand(ROWS, LENGTH, generator=generator) < 0.05
    ids[scattered] = special[torch.randint(len(special), (int(scattered.sum()),), generator=generator)]
    ids[:, 0] = tokenizer.cls_token_id
    ids[:, -8:] = tokenizer.pad_token_id
    return ids


def is_special(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(tokenizer.all_special_ids))


def test_masking_rates_and_labels(tokenizer, batch):
    inputs, labels = Masker(tokenizer, 0.15)(batch, list(range(ROWS)))
    special = is_special(batch, tokenizer)
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.01
    assert torch.equal(labels[chosen], batch[chosen])
    assert torch.all(labels[~chosen] == IGNORE_INDEX)
    assert torch.equal(inputs[~chosen], batch[~chosen])

    masked = inputs[chosen] == tokenizer.mask_token_id
    unchanged = inputs[chosen] == batch[chosen]
    replaced = ~masked & ~unchanged
    total = int(chosen.sum())
    assert abs(masked.sum() / total - 0.8) < 0.03
    assert abs(replaced.sum() / total - 0.1) < 0.03
    assert abs(unchanged.sum() / total - 0.1) < 0.03
    assert not is_special(inputs[chosen][replaced], tokenizer).any()


def test_special_tokens_are_never_chosen_or_changed(tokenizer, batch):
    inputs, labels = Masker(tokenizer, 0.5)(batch, list(range(ROWS)))
    special = is_special(batch, tokenizer)
    assert special.sum() > ROWS * 8
    assert torch.all(labels[special] == IGNORE_INDEX)
    assert torch.equal(inputs[special], batch[special])
    assert (labels[~special] != IGNORE_INDEX).float().mean() > 0.45


def test_seeds_decide_the_mask(tokenizer, batch):
    masker = Masker(tokenizer, 0.15)
    seeds = [1000 + i for i in range(ROWS)]
    first, again = masker(batch, seeds), masker(batch, seeds)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = masker(batch, [s + ROWS for s in seeds])
    assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize("whole_words", [False, True])
def test_a_row_depends_only_on_its_seed(tokenizer, batch, whole_words):
    masker = Masker(tokenizer, 0.15, whole_words)
    seeds = [7 * i + 3 for i in range(16)]
    inputs, labels = masker(batch[:16], seeds)
    for i in (0, 5, 15):
        alone_inputs, alone_labels = masker(batch[i : i + 1], [seeds[i]])
        assert torch.equal(alone_inputs[0], inputs[i]) and torch.equal(alone_labels[0], labels[i])
    shuffled_inputs, _ = masker(batch[[15, 5, 0]], [seeds[15], seeds[5], seeds[0]])
    assert torch.equal(shuffled_inputs, inputs[[15, 5, 0]])


def words(row: list[int], tokenizer) -> list[list[int]]:
    """Positions of each word: an ordinary non-'##' token followed by its '##' continuations."""
    tokens = tokenizer.convert_ids_to_tokens(row)
    special = set(tokenizer.all_special_ids)
    found, current = [], None
    for position, (token, token_id) in enumerate(zip(tokens, row, strict=True)):
        if token_id not in special and token.startswith("##") and current is not None:
            current.append(position)
        else:
            current = [position] if token_id not in special else None
            if current is not None:
                found.append(current)
    return found


def test_whole_word_masking(tokenizer, batch):
    inputs, labels = Masker(tokenizer, 0.15, whole_words=True)(batch, list(range(ROWS)))
    chosen_words = total_words = multi_token = 0
    for row, row_labels in zip(batch.tolist(), labels, strict=True):
        for positions in words(row, tokenizer):
            chosen = (row_labels[positions] != IGNORE_INDEX).tolist()
            assert all(chosen) or not any(chosen), positions
            chosen_words += chosen[0]
            total_words += 1
            multi_token += len(positions) > 1
    assert multi_token > 1000
    assert abs(chosen_words / total_words - 0.15) < 0.02
    special = is_special(batch, tokenizer)
    assert torch.all(labels[special] == IGNORE_INDEX) and torch.equal(inputs[special], batch[special])


def test_token_masking_splits_words(tokenizer, batch):
    """Control for the test above: without whole_words, some words are only partly masked."""
    _, labels = Masker(tokenizer, 0.15)(batch, list(range(ROWS)))
    partial = 0
    for row, row_labels in zip(batch.tolist(), labels, strict=True):
        for positions in words(row, tokenizer):
            chosen = (row_labels[positions] != IGNORE_INDEX).tolist()
            partial += any(chosen) and not all(chosen)
    assert partial > 100


@pytest.mark.parametrize("probability", [0.0, 1.0, -0.1, 1.5])
def test_probability_must_be_between_0_and_1(tokenizer, probability):
    with pytest.raises(ConfigError, match="mlm_probability"):
        Masker(tokenizer, probability)


def test_tokenizer_without_mask_token(texts):
    gpt = train_tokenizer(texts[:50], "bpe", 300, SpecialTokens(eos="<|endoftext|>", pad="<|endoftext|>"))
    with pytest.raises(ConfigError, match="no mask token"):
        Masker(gpt)
