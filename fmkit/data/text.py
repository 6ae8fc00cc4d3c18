"""From a text-recipe config to a tokenizer and cached token shards for training and evaluation.

Shared by the text objectives. Documents are read once per split and tokenized by the Rust tokenizer on
every core straight into a token shard on disk (never the whole corpus in memory). Shards are cached
by (source, tokenizer), and processes on a machine wait on a file lock, not a collective, while one of
them tokenizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from fmkit.config import TrainConfig
from fmkit.data.cache import build_once, cache_root, fingerprint
from fmkit.data.corpus import python_docs_corpus
from fmkit.data.documents import ReadStats, TextSource, expand_files, iter_documents, report_read_stats
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
    dataset_split: str = "train"
    eval_split: str | None = None
    text_field: str = "text"
    """Column / JSON key holding the text."""
    streaming: bool = False
    """Read a Hub dataset lazily instead of downloading it first; tokens still go to the on-disk cache."""
    eval_fraction: float = 0.01
    tokenizer_name_or_path: str | None = None
    """A pretrained tokenizer; without it a new one is trained on the training text and saved with the model."""
    tokenizer_type: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
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


@dataclass
class TextData:
    tokenizer: PreTrainedTokenizerBase
    train: TokenShard
    eval: TokenShard
    description: str


def prepare_text_data(config: TextDataConfig, specials: SpecialTokens) -> TextData:
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
    return TextData(tokenizer, train, held_out, description)


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
        key = fingerprint(_file_identity(train), evaluation and _file_identity(evaluation))
    else:
        corpus = python_docs_corpus()
        train, evaluation = TextSource(files=(str(corpus.train),)), TextSource(files=(str(corpus.eval),))
        return _reader(train), _reader(evaluation), fingerprint(str(corpus.train)), corpus.description
    if evaluation is not None:
        return _reader(train), _reader(evaluation), key, train.describe()
    if not 0.0 < config.eval_fraction < 0.5:
        raise ConfigError(f"eval_fraction {config.eval_fraction}: expected a value between 0 and 0.5")
    stride = round(1 / config.eval_fraction)
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


def _file_identity(source: TextSource) -> list:
    """Files change → cache key changes: path, size and modification time of every file."""
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in expand_files(source.files)]


def _token_shard(role: str, documents: Documents, key: str, tokenizer: PreTrainedTokenizerBase) -> TokenShard:
    def build(folder: Path) -> None:
        stats = ReadStats()
        write_token_shard(folder / "tokens.ds", encode_documents(documents(stats), tokenizer), tokenizer, stats)

    shard_key = fingerprint(key, role, tokenizer_fingerprint(tokenizer))
    folder = build_once(cache_root() / "tokens" / f"{role}-{shard_key}", build)
    shard = TokenShard(folder / "tokens.ds")
    report_read_stats(f"{role} text", shard.info.read_stats)
    return shard
