"""From a text-recipe config to a tokenizer and token shards for training and evaluation.

Shared by the text objectives. Text (files, a HF dataset, the embedded corpus) is read once per split and
tokenized by the Rust tokenizer on every core straight into a token shard on disk (never the whole corpus
in memory). Shards are cached by (source, tokenizer), and processes on a machine wait on a file lock, not
a collective, while one of them tokenizes. Corpora tokenized ahead of time (data_scripts/tokenize_corpus.py,
or datatrove) are memory-mapped as they are.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from fmkit.config import TrainConfig
from fmkit.data.cache import build_once, cache_root, fingerprint
from fmkit.data.corpus import python_docs_corpus
from fmkit.data.documents import ReadStats, TextSource, file_identity, iter_documents, report_read_stats
from fmkit.data.packing import EveryKthBlock, PackedBlocks
from fmkit.data.token_shards import TokenShard, encode_documents, write_token_shard
from fmkit.data.tokenizer import SpecialTokens, cached_trained_tokenizer, load_tokenizer, tokenizer_fingerprint
from fmkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Documents = Callable[[ReadStats], Iterator[str]]


@dataclass
class TextDataConfig(TrainConfig):
    """Data and tokenizer options shared by the text recipes."""

    train_files: str | list[str] | None = None
    """Text files, folders or globs (txt, jsonl, csv, tsv, parquet, optionally .gz). Default: the embedded corpus."""
    eval_files: str | list[str] | None = None
    """Held-out files; without them every k-th training document is held out (see eval_fraction)."""
    dataset_name: str | None = None
    """A Hugging Face dataset to train on instead of files, e.g. wikitext."""
    dataset_config: str | None = None
    """The Hub dataset's configuration name (e.g. wikitext-103-raw-v1)."""
    dataset_split: str = "train"
    """The split of dataset_name to train on."""
    eval_split: str | None = None
    """The split of dataset_name to evaluate on; none: eval_fraction of the training split."""
    text_field: str = "text"
    """Column / JSON key holding the text."""
    streaming: bool = False
    """Read a Hub dataset lazily instead of downloading it first; tokens still go to the on-disk cache."""
    train_shards: str | list[str] | None = None
    """Pre-tokenized token shards (folders or globs of .ds files from data_scripts/tokenize_corpus.py or datatrove)
    to train on instead of text; memory-mapped, so the corpus may exceed memory."""
    eval_shards: str | list[str] | None = None
    """Held-out token shards; without them every k-th block of train_shards is held out (see eval_fraction)."""
    eval_fraction: float = 0.01
    """Share of documents (of blocks, for token shards) held out when no held-out files or shards are given."""
    tokenizer_name_or_path: str | None = None
    """A pretrained tokenizer; without it a new one is trained on the training text and saved with the model."""
    tokenizer_type: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    """The tokenizer trained when tokenizer_name_or_path is not given."""
    vocab_size: int = 8192
    """Size of a newly trained tokenizer, rounded up to a multiple of 64."""
    tokenizer_train_chars: int = 200_000_000
    """Train a new tokenizer on at most this many characters of the training text."""
    block_size: int = 128
    """Tokens per training sequence; documents are packed into blocks without padding."""
    model_type: str = "bert"
    """A transformers model type to build from scratch (bert, roberta, modernbert, distilbert, gpt2, llama, ...)."""
    model_name_or_path: str | None = None
    """Continue from this model instead of building one from scratch."""
    model_config: dict = field(default_factory=dict)
    """Overrides for the new model's config, e.g. {hidden_size: 256, num_hidden_layers: 4}."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa (flash / memory-efficient kernels on GPU), flash_attention_2, flex_attention, eager."""


Blocks = PackedBlocks | EveryKthBlock


@dataclass
class TextData:
    tokenizer: PreTrainedTokenizerBase
    train: list[TokenShard]
    eval: list[TokenShard]
    hold_out_every: int
    """Without held-out shards, every k-th block of the training shards is held out."""
    description: str

    def blocks(self, block_size: int, overlap: int = 0) -> tuple[Blocks, Blocks]:
        """(training blocks, held-out blocks); see PackedBlocks for `overlap`."""
        train = PackedBlocks([shard.tokens for shard in self.train], block_size, overlap)
        if self.hold_out_every:
            k = self.hold_out_every
            held_out: Blocks = EveryKthBlock(train, k, held_out=True)
            train = EveryKthBlock(train, k, held_out=False)
        else:
            held_out = PackedBlocks([shard.tokens for shard in self.eval], block_size, overlap)
        if len(held_out) == 0:
            raise DataError(f"{self.description}: the held-out split is shorter than one block of {block_size} tokens")
        return train, held_out


def prepare_text_data(config: TextDataConfig, specials: SpecialTokens) -> TextData:
    if config.train_shards:
        return _pretokenized(config)
    train_docs, eval_docs, key, description = _sources(config)
    if config.tokenizer_name_or_path:
        tokenizer = load_tokenizer(config.tokenizer_name_or_path)
    else:
        tokenizer = cached_trained_tokenizer(
            lambda: train_docs(ReadStats()),
            key,
            config.tokenizer_type,
            config.vocab_size,
            specials,
            config.tokenizer_train_chars,
        )
    train = _token_shard("train", train_docs, key, tokenizer)
    held_out = _token_shard("eval", eval_docs, key, tokenizer)
    for role, shard in (("training", train), ("held-out", held_out)):
        if shard.info.documents == 0:
            raise DataError(f"{description}: the {role} split has no text")
    return TextData(tokenizer, [train], [held_out], 0, description)


def _pretokenized(config: TextDataConfig) -> TextData:
    if config.train_files or config.dataset_name:
        raise ConfigError("set either train_shards or train_files/dataset_name, not both")
    train_files = shard_files(_as_tuple(config.train_shards))
    eval_files = shard_files(_as_tuple(config.eval_shards)) if config.eval_shards else []
    tokenizer = load_tokenizer(config.tokenizer_name_or_path or _tokenizer_beside(train_files[0]))
    train, held_out = [TokenShard(f) for f in train_files], [TokenShard(f) for f in eval_files]
    for shard in train + held_out:
        shard.check_tokenizer(tokenizer)
    tokens = sum(len(shard) for shard in train)
    description = f"token shards {', '.join(_as_tuple(config.train_shards))} ({len(train)} files, {tokens:,} tokens)"
    if tokens == 0:
        raise DataError(f"{description}: no tokens")
    return TextData(tokenizer, train, held_out, 0 if held_out else _hold_out_stride(config), description)


def shard_files(patterns: tuple[str, ...]) -> list[Path]:
    """`.ds` token files from files, folders (recursively) and globs, in sorted order."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(path.rglob("*.ds"))
        elif path.is_file():
            found.append(path)
        elif any(ch in pattern for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(str(path), recursive=True) if p.endswith(".ds"))
        else:
            raise DataError(f"{pattern}: no such token shard file or folder")
    if not found:
        raise DataError(f"{', '.join(patterns)}: no .ds token shards found")
    return found


def _tokenizer_beside(shard: Path) -> str:
    """tokenize_corpus.py saves the tokenizer next to its shards: use it unless told otherwise."""
    if (shard.parent / "tokenizer_config.json").is_file():
        return str(shard.parent)
    raise ConfigError(
        f"{shard.parent}: no tokenizer saved beside the token shards; "
        "set tokenizer_name_or_path to the tokenizer they were written with"
    )


def _hold_out_stride(config: TextDataConfig) -> int:
    if not 0.0 < config.eval_fraction < 0.5:
        raise ConfigError(f"eval_fraction {config.eval_fraction}: expected a value between 0 and 0.5")
    return round(1 / config.eval_fraction)


def _sources(config: TextDataConfig) -> tuple[Documents, Documents, str, str]:
    """(train documents, eval documents, cache key of the text, description for the model card)."""
    if config.dataset_name and config.train_files:
        raise ConfigError("set either train_files or dataset_name, not both")
    if config.dataset_name:
        train = TextSource(
            dataset_name=config.dataset_name,
            dataset_config=config.dataset_config,
            split=config.dataset_split,
            text_field=config.text_field,
            streaming=config.streaming,
        )
        key = fingerprint(train)
        evaluation = TextSource(**{**train.__dict__, "split": config.eval_split}) if config.eval_split else None
    elif config.train_files:
        train = TextSource(files=_as_tuple(config.train_files), text_field=config.text_field)
        evaluation = (
            TextSource(files=_as_tuple(config.eval_files), text_field=config.text_field) if config.eval_files else None
        )
        key = fingerprint(file_identity(train), evaluation and file_identity(evaluation))
    else:
        corpus = python_docs_corpus()
        train, evaluation = TextSource(files=(str(corpus.train),)), TextSource(files=(str(corpus.eval),))
        return _reader(train), _reader(evaluation), fingerprint(str(corpus.train)), corpus.description
    if evaluation is not None:
        return _reader(train), _reader(evaluation), key, train.describe()
    stride = _hold_out_stride(config)
    description = f"{train.describe()} (every {stride}th document held out)"
    return _reader(train, stride, keep_held_out=False), _reader(train, stride, keep_held_out=True), key, description


def _reader(source: TextSource, stride: int = 0, keep_held_out: bool = False) -> Documents:
    def documents(stats: ReadStats) -> Iterator[str]:
        for index, text in enumerate(iter_documents(source, stats)):
            if not stride or (index % stride == stride - 1) == keep_held_out:
                yield text

    return documents


def _as_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def _token_shard(role: str, documents: Documents, key: str, tokenizer: PreTrainedTokenizerBase) -> TokenShard:
    def build(folder: Path) -> None:
        stats = ReadStats()
        write_token_shard(folder / "tokens.ds", encode_documents(documents(stats), tokenizer), tokenizer, stats)

    shard_key = fingerprint(key, role, tokenizer_fingerprint(tokenizer))
    folder = build_once(cache_root() / "tokens" / f"{role}-{shard_key}", build)
    shard = TokenShard(folder / "tokens.ds")
    report_read_stats(f"{role} text", shard.info.read_stats)
    return shard
