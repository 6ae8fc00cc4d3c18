"""Build a clean, deduplicated pretraining corpus from WARC files, saved HTML pages or JSONL text.

python data_scripts/web_text.py crawl/*.warc.gz --output_dir corpus/ --tokenizer gpt2
python data_scripts/web_text.py pages/ extracted.jsonl --output_dir corpus/ --languages '[en, de]'

Writes corpus/documents/*.parquet, corpus/stats.json, corpus/report.md, the rejected documents under
corpus/rejected/ and, with --tokenizer, token shards in corpus/tokens/ for recipes/clm.py and recipes/mlm.py.
Rerun the same command to resume an interrupted run; finished tasks are skipped.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fmkit.config import parse_config
from fmkit.errors import FmkitError
from fmkit.webtext.config import WebTextConfig
from fmkit.webtext.pipeline import WebTextPipeline


def split_inputs(argv: list[str]) -> tuple[list[str], list[str]]:
    """Inputs are the arguments before the first flag; the rest are WebTextConfig flags."""
    first_flag = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    return argv[:first_flag], argv[first_flag:]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
    try:
        inputs, flags = split_inputs(argv)
        config = parse_config(WebTextConfig, flags, prog=prog)
        stats = WebTextPipeline(config, inputs).run()
    except FmkitError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    output = stats["output"]
    print(f"{output['documents']} documents ({output['bytes'] / 1e6:.1f} MB) in {config.output_dir}/documents; "
          f"see {config.output_dir}/report.md")  # fmt: skip


if __name__ == "__main__":
    main()
