"""Tokenization throughput: data_scripts/tokenize_corpus.py against `datasets.map` + `group_texts`, side by side.

Both sides start from the same JSONL file (the embedded corpus, repeated to `--copies` times its size) and
the same byte-level BPE tokenizer, use the same number of processes (`--workers` for fmkit, `num_proc` for
`datasets`), and end with the corpus tokenized on disk: fmkit as token shards, `datasets` as the Arrow cache
files of the grouped blocks (run_clm.py's data path). Each side runs in a fresh process with an empty cache,
and is timed from start to exit by the wall clock, start-up included. The ratio compares the times for the
same text; each side's tokens/s uses its own count (fmkit adds an end-of-text token per document, run_clm.py
does not, and group_texts drops each 1,000-document batch's remainder).

    python benchmarks/shard_writer_throughput.py --copies 2 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, hf_blocks, machine, save_report, shared_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=2, help="the corpus (10.8 MB) this many times over")
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--seq_len", type=int, default=1024, help="group_texts block size on the datasets side")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the full report here as JSON")
    parser.add_argument("--hf_worker", nargs=4, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def corpus_file(folder: Path, copies: int) -> Path:
    from fmkit.data.corpus import python_docs_corpus

    text = python_docs_corpus().train.read_text(encoding="utf-8")
    path = folder / "corpus.jsonl"
    path.write_text(text * copies, encoding="utf-8")
    return path


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - start


def run_fmkit(corpus: Path, tokenizer: Path, workers: int, work: Path) -> dict:
    out = work / f"shards-{workers}"
    command = [sys.executable, str(REPO / "data_scripts" / "tokenize_corpus.py"), str(corpus),
               "--tokenizer", str(tokenizer), "--output_dir", str(out), "--workers", str(workers)]  # fmt: skip
    seconds = timed(command, {**os.environ, "HF_HUB_OFFLINE": "1"})
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "tokens": manifest["tokens"], "tokens_per_s": manifest["tokens"] / seconds}


def run_hf(corpus: Path, tokenizer: Path, workers: int, seq_len: int, work: Path) -> dict:
    result = work / f"hf-{workers}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / f"hf-cache-{workers}")}
    command = [sys.executable, __file__, "--hf_worker", str(corpus), str(tokenizer), str(workers), str(result)]
    seconds = timed([*command, "--seq_len", str(seq_len)], env)
    tokens = json.loads(result.read_text())["tokens"]
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def hf_worker(corpus: str, tokenizer_dir: str, workers: int, result: str, seq_len: int) -> None:
    """run_clm.py's data path: tokenize with `map(batched=True, num_proc)`, then group_texts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    blocks = hf_blocks(corpus, lambda batch: tokenizer(batch["text"]), seq_len, num_proc=workers)
    Path(result).write_text(json.dumps({"tokens": len(blocks) * seq_len}))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.hf_worker:
        corpus, tokenizer, workers, result = args.hf_worker
        hf_worker(corpus, tokenizer, int(workers), result, args.seq_len)
        return
    from fmkit.tasks.clm import CLM_SPECIALS

    tokenizer = shared_tokenizer("bpe", args.vocab_size, CLM_SPECIALS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shard-bench-") as work:
        corpus = corpus_file(Path(work), args.copies)
        megabytes = corpus.stat().st_size / 1e6
        for repeat in range(args.repeats):
            for workers in args.workers:
                fmkit = run_fmkit(corpus, tokenizer, workers, Path(work) / f"r{repeat}")
                hf = run_hf(corpus, tokenizer, workers, args.seq_len, Path(work) / f"r{repeat}")
                rows.append({"workers": workers, "repeat": repeat, "fmkit": fmkit, "hf": hf,
                             "ratio": hf["seconds"] / fmkit["seconds"]})  # fmt: skip
    save_report({"machine": machine(), "megabytes": megabytes, "rows": rows}, args.out)
    print(f"{megabytes:.1f} MB of JSONL, {rows[0]['fmkit']['tokens']:,} tokens")
    print("| processes | fmkit tok/s (per process) | datasets.map + group_texts tok/s (per process) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        f, h, n = row["fmkit"]["tokens_per_s"], row["hf"]["tokens_per_s"], row["workers"]
        print(f"| {n} | {f:,.0f} ({f / n:,.0f}) | {h:,.0f} ({h / n:,.0f}) | **{row['ratio']:.2f}×** |")


if __name__ == "__main__":
    main()
