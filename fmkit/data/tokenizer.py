"""Load a pretrained tokenizer, or train a WordPiece / BPE / Unigram one on the corpus with `tokenizers`.

A trained tokenizer is cached per (corpus, settings) and saved with the model, so `AutoTokenizer` loads
it with plain transformers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from fmkit.data.cache import build_once, cache_root, fingerprint
from fmkit.errors import ConfigError

TokenizerKind = Literal["wordpiece", "bpe", "unigram"]


def round_up(value: int, multiple: int = 64) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class SpecialTokens:
    """Named special tokens; which ones exist decides the post-processing template."""

    unk: str | None = None
    pad: str | None = None
    cls: str | None = None
    sep: str | None = None
    mask: str | None = None
    bos: str | None = None
    eos: str | None = None

    def as_list(self) -> list[str]:
        names = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
        return list(dict.fromkeys(t for t in (getattr(self, n) for n in names) if t))

    def as_kwargs(self) -> dict[str, str]:
        names = {"unk": "unk_token", "pad": "pad_token", "cls": "cls_token", "sep": "sep_token", "mask": "mask_token",
                 "bos": "bos_token", "eos": "eos_token"}  # fmt: skip
        return {names[n]: getattr(self, n) for n in names if getattr(self, n)}


BERT_SPECIALS = SpecialTokens(unk="[UNK]", pad="[PAD]", cls="[CLS]", sep="[SEP]", mask="[MASK]")
ROBERTA_SPECIALS = SpecialTokens(unk="<unk>", pad="<pad>", cls="<s>", sep="</s>", mask="<mask>", bos="<s>", eos="</s>")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    if name_or_path.startswith(("/", ".", "~")) and not Path(name_or_path).expanduser().exists():
        raise ConfigError(f"tokenizer {name_or_path}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"tokenizer {name_or_path}: cannot load it ({str(error).splitlines()[0]})") from None


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind,
    vocab_size: int,
    specials: SpecialTokens,
) -> PreTrainedTokenizerFast:
    """Train on `texts`; the requested size is rounded up to a multiple of 64 (tensor-core friendly)."""
    vocab_size = round_up(vocab_size)
    special_list = specials.as_list()
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=specials.unk))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_list)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_list,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special_list, unk_token=specials.unk)
    else:
        raise ConfigError(f"tokenizer_type {kind!r}: expected wordpiece, bpe or unigram")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer = _numbered_reproducibly(tokenizer, len(special_list))
    if specials.cls and specials.sep:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{specials.cls} $A {specials.sep}",
            pair=f"{specials.cls} $A {specials.sep} $B:1 {specials.sep}:1",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in (specials.cls, specials.sep)],
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials.as_kwargs())


def _numbered_reproducibly(tokenizer: Tokenizer, specials: int) -> Tokenizer:
    """`tokenizers` numbers a trained WordPiece vocabulary in hash-map order, which changes from one training to
    the next: the same corpus must give the same ids, or two runs of one recipe and seed train different models.
    The specials keep the first ids. BPE is reproducible already; Unigram is not, and cannot be made so here
    (its piece scores themselves vary in the last digits between trainings)."""
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    if state["model"]["type"] == "WordPiece":
        tokens = sorted(vocab, key=vocab.get)
        state["model"]["vocab"] = {token: i for i, token in enumerate(tokens[:specials] + sorted(tokens[specials:]))}
    return Tokenizer.from_str(json.dumps(state))


def cached_trained_tokenizer(
    texts: Callable[[], Iterable[str]],
    corpus_key: str,
    kind: TokenizerKind,
    vocab_size: int,
    specials: SpecialTokens,
    max_chars: int,
) -> PreTrainedTokenizerFast:
    """Train once per (corpus, settings) on at most `max_chars` characters, then reuse from the cache."""
    key = fingerprint(corpus_key, kind, round_up(vocab_size), specials.as_list(), max_chars)

    def build(folder: Path) -> None:
        train_tokenizer(_first_chars(texts(), max_chars), kind, vocab_size, specials).save_pretrained(folder)

    folder = build_once(cache_root() / "tokenizers" / f"{kind}-{key}", build)
    return AutoTokenizer.from_pretrained(folder)


def _first_chars(texts: Iterable[str], max_chars: int) -> Iterable[str]:
    used = 0
    for text in texts:
        if used >= max_chars:
            return
        used += len(text)
        yield text


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identifies the vocabulary and special tokens, to refuse data tokenized by a different tokenizer."""
    return fingerprint(sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens)
