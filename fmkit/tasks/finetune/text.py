"""Text classification: any fmkit MLM / CLM output or transformers model, as `AutoModelForSequenceClassification`.

Data: a Hugging Face dataset by name, local CSV / JSONL / parquet files (both read by `datasets`, with column
mapping and GLUE-style text pairs), or by default the embedded task: which library a docstring of the embedded
corpus comes from, scored on the corpus's test split, which no pretraining recipe reads.

GPT-2 and Llama have no pad token. Padding with the end-of-text token, the usual fix, makes the classifier's
"last non-pad token" pooling skip real end-of-text tokens, so a dedicated pad token is added instead (one new
embedding row, never attended to).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from fmkit.config import POSITIVE, ranged
from fmkit.data.corpus import python_docs_corpus
from fmkit.data.tokenizer import load_tokenizer
from fmkit.errors import ConfigError, DataError
from fmkit.tasks import register_task
from fmkit.tasks.finetune.common import ClassificationTask, FinetuneConfig, LabelledData, Split, class_ids

PAD_TOKEN = "<|pad|>"
MIN_LIBRARY_DOCUMENTS = 300
"""Libraries with fewer training docstrings than this are left out of the embedded task (tqdm, yaml, ...)."""
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class TextClassificationConfig(FinetuneConfig):
    """Fine-tune a language model to classify texts (or text pairs)."""

    dataset_name: str | None = None
    """A Hugging Face dataset, e.g. glue (with dataset_config sst2). Default: the embedded docstring-library task."""
    dataset_config: str | None = None
    """The dataset's configuration name."""
    train_split: str = "train"
    """The split of dataset_name to train on."""
    validation_split: str | None = None
    """The split of dataset_name that picks the best checkpoint; none: validation_fraction of the training split."""
    test_split: str = "test"
    """The split of dataset_name scored once at the end (GLUE's test labels are hidden: use validation)."""
    train_files: str | list[str] | None = None
    """Local CSV / TSV / JSONL / parquet files to train on instead of a dataset."""
    validation_files: str | list[str] | None = None
    """Local validation files; none: validation_fraction of the training files."""
    test_files: str | list[str] | None = None
    """Local test files (required with train_files)."""
    text_column: str = "text"
    """Column holding the text."""
    text_pair_column: str | None = None
    """Column holding the second text of a pair (GLUE-style sentence-pair tasks)."""
    label_column: str = "label"
    """Column holding the label: class names or integers (class-label features keep their names)."""
    max_seq_length: int = ranged(128, POSITIVE)
    """Truncate inputs to this many tokens; batches are padded to their longest input."""


@register_task
class TextClassification(ClassificationTask):
    name = "text-classification"
    config_class = TextClassificationConfig
    config: TextClassificationConfig
    auto_class = AutoModelForSequenceClassification
    pipeline_tag = "text-classification"

    def load_data(self) -> LabelledData:
        config = self.config
        self.tokenizer = load_tokenizer(config.model_name_or_path)
        self.tokenizer.model_max_length = config.max_seq_length  # the export's pipeline truncates as training did
        self.input_names = [name for name in self.tokenizer.model_input_names if name != "attention_mask"]
        if config.dataset_name or config.train_files:
            splits, description = self._dataset_splits()
        else:
            splits, description = embedded_library_task()
        class_names = _class_order(set(splits["train"][2]))  # the training split's label values
        built = {}
        for role, columns in splits.items():
            if columns is not None:
                texts, pairs, values = columns
                labels = class_ids(values, class_names, f"{role} split")
                built[role] = Split(self._encode(texts, pairs), np.arange(len(texts)), labels)
        return LabelledData(built["train"], built.get("validation"), built["test"], class_names, description)

    def _encode(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.config.max_seq_length)
        rows = np.empty(len(texts), dtype=object)
        for i in range(len(texts)):
            rows[i] = {name: encoded[name][i] for name in self.input_names}
        return rows

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.tokenizer.pad_token is None:
            self.tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
            model.resize_token_embeddings(len(self.tokenizer))
        model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def make_batch(self, split: Split, positions: np.ndarray, training: bool) -> dict:
        rows = [split.inputs[i] for i in split.index[positions]]
        batch = dict(self.tokenizer.pad(rows, return_tensors="pt"))
        batch["labels"] = torch.from_numpy(split.labels[positions])
        return batch

    def predict_inputs(self, path: str) -> tuple[list[str], Split]:
        if Path(path).suffix == ".txt":
            texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
            pairs = None
        else:
            table = _load_files({"predict": [path]})["predict"]
            texts = _column(table, self.config.text_column, path)
            pairs = _column(table, self.config.text_pair_column, path) if self.config.text_pair_column else None
        if not texts:
            raise DataError(f"do_predict {path}: no texts in it")
        split = Split(self._encode(texts, pairs), np.arange(len(texts)), np.zeros(len(texts), dtype=np.int64))
        return texts, split

    def save_processor(self, output_dir: Path) -> None:
        self.tokenizer.save_pretrained(output_dir)

    def usage(self) -> str:
        return (
            "from transformers import pipeline\n\n"
            'classify = pipeline("text-classification", model="PATH_OR_HUB_ID")\n'
            'print(classify("Return a new array of given shape and type, filled with zeros."))'
        )

    def _dataset_splits(self) -> tuple[dict, str]:
        config = self.config
        if config.dataset_name and config.train_files:
            raise ConfigError("set either dataset_name or train_files, not both")
        if config.dataset_name:
            from datasets import load_dataset

            wanted = {"train": config.train_split, "validation": config.validation_split, "test": config.test_split}
            loaded = load_dataset(config.dataset_name, config.dataset_config)
            missing = [split for split in wanted.values() if split and split not in loaded]
            if missing:
                raise DataError(f"dataset {config.dataset_name}: no split {missing[0]!r} (it has {', '.join(loaded)})")
            tables = {role: loaded[split] if split else None for role, split in wanted.items()}
            description = f"Hugging Face dataset {config.dataset_name}" + (
                f" ({config.dataset_config})" if config.dataset_config else "")  # fmt: skip
        else:
            if not config.test_files:
                raise ConfigError("train_files needs test_files: the split scored once at the end")
            given = {"train": config.train_files, "validation": config.validation_files, "test": config.test_files}
            files = {role: [paths] if isinstance(paths, str) else list(paths) for role, paths in given.items() if paths}
            loaded = _load_files(files)
            tables = {role: loaded.get(role) for role in given}
            description = f"local files: {', '.join(files['train'])}"
        splits = {role: self._columns(table, role) if table is not None else None for role, table in tables.items()}
        return splits, description

    def _columns(self, table, role: str) -> tuple[list[str], list[str] | None, list[str]]:
        config = self.config
        where = f"{role} split"
        texts = _column(table, config.text_column, where)
        pairs = _column(table, config.text_pair_column, where) if config.text_pair_column else None
        if config.label_column not in table.column_names:
            raise DataError(f"{where}: no label column {config.label_column!r}; its columns are "
                            f"{', '.join(table.column_names)} (set --label_column)")  # fmt: skip
        feature = table.features[config.label_column]
        raw = table[config.label_column]
        if hasattr(feature, "names"):  # a ClassLabel: its names are the label names
            if any(value < 0 for value in raw):
                raise DataError(f"{where}: labels are hidden (-1), as in GLUE's test splits; score another split")
            return texts, pairs, [feature.names[value] for value in raw]
        return texts, pairs, [str(value) for value in raw]


def _column(table, column: str, where: str) -> list[str]:
    if column not in table.column_names:
        raise DataError(f"{where}: no column {column!r}; its columns are {', '.join(table.column_names)}")
    return [str(value) if value is not None else "" for value in table[column]]


def _load_files(files: dict[str, list[str]]) -> dict:
    from datasets import load_dataset

    suffixes = {Path(path).suffix.lower() for paths in files.values() for path in paths}
    builders = {FILE_BUILDERS.get(suffix) for suffix in suffixes}
    if None in builders or len(builders) != 1:
        raise ConfigError(f"data files {', '.join(sorted(suffixes))}: expected one kind of {', '.join(FILE_BUILDERS)}")
    for paths in files.values():
        for path in paths:
            if not Path(path).is_file():
                raise DataError(f"{path}: no such file")
    kwargs = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
    builder = builders.pop()
    # One split at a time: files of different columns would otherwise fail as one table, in datasets' words.
    return {role: load_dataset(builder, data_files={role: paths}, **kwargs)[role] for role, paths in files.items()}


def _class_order(values: set[str]) -> list[str]:
    """Numbers in numeric order ("2" before "10"), names alphabetically."""
    return sorted(values, key=lambda v: (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v))


def library_of(source: str, stdlib: frozenset[str]) -> str | None:
    """The library a corpus document documents: its top-level package, "stdlib" for the standard library,
    None for pydoc topics (not a library)."""
    if source.startswith("pydoc topic"):
        return None
    top = source.split(".", 1)[0]
    return "stdlib" if top in stdlib else top


def embedded_library_task() -> tuple[dict, str]:
    """Which library a docstring comes from: training docs from the corpus's train split (what pretraining
    read, without the labels), test docs from its test split (what no pretraining read)."""
    import sys

    corpus = python_docs_corpus()
    stdlib = frozenset(sys.stdlib_module_names)
    read = {}
    for role, path in (("train", corpus.train), ("test", corpus.test)):
        pairs = []
        for line in path.read_text(encoding="utf-8").splitlines():
            document = json.loads(line)
            library = library_of(document["source"], stdlib)
            if library:
                pairs.append((document["text"], library))
        read[role] = pairs
    counts = Counter(library for _, library in read["train"])
    kept = {library for library, count in counts.items() if count >= MIN_LIBRARY_DOCUMENTS}
    splits = {}
    for role, pairs in read.items():
        chosen = [(text, library) for text, library in pairs if library in kept]
        splits[role] = ([text for text, _ in chosen], None, [library for _, library in chosen])
    splits["validation"] = None
    description = (
        f"Which library a docstring comes from ({len(kept)} classes: {', '.join(sorted(kept))}), from the embedded "
        f"corpus ({corpus.description}): {len(splits['train'][0]):,} training docstrings, "
        f"{len(splits['test'][0]):,} test docstrings from its test split, which no pretraining recipe reads."
    )
    return splits, description
