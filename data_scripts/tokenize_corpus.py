"""Tokenize a corpus once into token shards for the training recipes, on every core; rerun to resume.

python data_scripts/tokenize_corpus.py 'data/*.jsonl' other.txt --tokenizer gpt2 --output_dir shards/
python data_scripts/tokenize_corpus.py --dataset_name wikitext --dataset_config wikitext-103-raw-v1 \\
    --streaming --tokenizer gpt2 --output_dir shards/

Writes shards/00000.ds, 00001.ds, ... (datatrove's tokenized-file layout), the tokenizer and manifest.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fmkit.data.documents import TextSource
from fmkit.data.shard_writer import write_token_shards
from fmkit.errors import ConfigError, FmkitError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", help="text files, folders or globs (txt, jsonl, csv, tsv, parquet, .gz)")
    parser.add_argument("--dataset_name", help="a Hugging Face dataset instead of files, e.g. wikitext")
    parser.add_argument("--dataset_config", help="the dataset's configuration, e.g. wikitext-103-raw-v1")
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--streaming", action="store_true", help="read the dataset lazily instead of downloading it")
    parser.add_argument("--text_field", default="text", help="column / JSON key holding the text (default: text)")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer on the Hub or a local folder")
    parser.add_argument("--output_dir", required=True, type=Path, help="folder for the shards (a rerun resumes)")
    parser.add_argument("--docs_per_shard", type=int, default=100_000, help="documents per shard (default: 100000)")
    parser.add_argument("--workers", type=int, default=0, help="tokenizing processes (default 0: one per two cores)")
    return parser.parse_args(argv)


def source_of(args: argparse.Namespace) -> TextSource:
    if args.inputs and args.dataset_name:
        raise ConfigError("give input files or --dataset_name, not both")
    return TextSource(
        files=tuple(args.inputs),
        dataset_name=args.dataset_name,
        dataset_config=args.dataset_config,
        split=args.dataset_split,
        text_field=args.text_field,
        streaming=args.streaming,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        write_token_shards(source_of(args), args.tokenizer, args.output_dir, args.docs_per_shard, args.workers)
    except FmkitError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
