"""Build image-text WebDataset shards from a folder of captioned images or from a list of image URLs.

python data_scripts/image_text_shards.py --images photos/ --captions captions.csv --output_dir shards/
python data_scripts/image_text_shards.py --images photos/ --output_dir shards/    # captions in photos/NAME.txt
python data_scripts/image_text_shards.py --urls urls.parquet --output_dir shards/ --image_size 512

Writes shards/00000.tar, 00001.tar, ... (each sample: the image as jpg/png/webp, its caption as txt, metadata as
json) and shards/stats.json, which counts the images left out by reason. Folder mode keeps the original image
bytes of every image that decodes; URL mode downloads with img2dataset and also keeps its per-URL status tables
(shards/00000.parquet, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fmkit.data.image_text_shards import (
    ENCODE_FORMATS,
    FolderOptions,
    OutputOptions,
    UrlOptions,
    shards_from_folder,
    shards_from_urls,
)
from fmkit.errors import ConfigError, FmkitError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    source.add_argument("--urls", type=Path, help="URL list: csv, tsv, jsonl, parquet or txt (one URL a line)")
    parser.add_argument("--output_dir", type=Path, required=True, help="folder for the shards; must be empty")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards of an earlier run in output_dir")
    parser.add_argument("--samples_per_shard", type=int, help="(default: 1000)")
    parser.add_argument("--max_pixels", type=int, help="skip larger images as too_large (default: 89478485)")
    parser.add_argument("--caption_column", help="caption column of --captions or --urls (default: caption)")
    folder = parser.add_argument_group("with --images")
    folder.add_argument("--captions", type=Path, help="csv, tsv, jsonl or parquet of image paths and captions "
                        "(default: each image's caption is in NAME.txt next to it)")  # fmt: skip
    folder.add_argument("--image_column", help="column of image paths relative to --images (default: file)")
    urls = parser.add_argument_group("with --urls (img2dataset)")
    urls.add_argument("--url_column", help="(default: url)")
    urls.add_argument("--image_size", type=int, help="shrink images to this shorter side (default: keep pixels)")
    urls.add_argument("--encode_format", choices=ENCODE_FORMATS, help="stored format; images already in it keep "
                      "their downloaded bytes unless resized (default: jpg)")  # fmt: skip
    urls.add_argument("--processes", type=int, help="download processes (default: 1)")
    urls.add_argument("--threads", type=int, help="download threads per process (default: 8)")
    urls.add_argument("--timeout", type=int, help="seconds to wait for a server (default: 10)")
    return parser.parse_args(argv)


def options(kind: type, args: argparse.Namespace):
    """The dataclass from the flags given; a flag left out takes the dataclass's default."""
    given = {name: value for name, value in vars(args).items() if value is not None}
    names = {field.name for field in dataclasses.fields(kind)}
    return kind(**{name: value for name, value in given.items() if name in names})


def refuse_other_mode_flags(args: argparse.Namespace, mode: type, other: type) -> None:
    shared = {field.name for field in dataclasses.fields(mode)}
    for field in dataclasses.fields(other):
        if field.name not in shared and getattr(args, field.name, None) is not None:
            other_flag = "--urls" if other is UrlOptions else "--images"
            raise ConfigError(f"--{field.name} applies only with {other_flag}")


def run(args: argparse.Namespace) -> str:
    output = options(OutputOptions, args)
    if args.images is not None:
        refuse_other_mode_flags(args, FolderOptions, UrlOptions)
        stats = shards_from_folder(options(FolderOptions, args), output)
    else:
        refuse_other_mode_flags(args, UrlOptions, FolderOptions)
        stats = shards_from_urls(options(UrlOptions, args), output)
    return stats.summary(output.output_dir)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        print(run(args))
    except FmkitError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
