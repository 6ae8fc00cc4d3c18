"""MLM training throughput: fmkit's loop (recipes/mlm.py) against transformers.Trainer, side by side.

Both sides train the same BertConfig on the same text (the embedded corpus), tokenized by the same
WordPiece tokenizer into packed blocks of `seq_len` tokens (no padding), with the same batch size, thread
count, AdamW (fused) and gradient clipping. Each side runs in its own process; the first `warmup_steps`
steps and all setup (tokenization, model build) are excluded, and tokens/s = batch x seq_len x steps /
seconds of the timed steps.

    python benchmarks/mlm_throughput.py --hidden_size 256 --num_layers 4 --heads 4 --intermediate 1024
    python benchmarks/mlm_throughput.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import chain, pairwise
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab_size", type=int, default=30522, help="tokenizer target (fmkit rounds up to 64)")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup_steps", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1, help="run both sides this many times (alternating)")
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--label", default=None, help="name of this configuration in the table")
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument("--hf_worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- shared setup


def shared_tokenizer(vocab_size: int) -> Path:
    """A WordPiece tokenizer trained once on the corpus, saved where both sides load it from."""
    from fmkit.data.cache import build_once, cache_root, fingerprint
    from fmkit.data.corpus import python_docs_corpus
    from fmkit.data.documents import ReadStats, TextSource, iter_documents
    from fmkit.data.tokenizer import BERT_SPECIALS, train_tokenizer

    corpus = python_docs_corpus()

    def build(folder: Path) -> None:
        texts = iter_documents(TextSource(files=(str(corpus.train),)), ReadStats())
        train_tokenizer(texts, "wordpiece", vocab_size, BERT_SPECIALS).save_pretrained(folder)

    key = fingerprint(str(corpus.train), vocab_size)
    return build_once(cache_root() / "benchmarks" / f"wordpiece-{vocab_size}-{key}", build)


def model_config(args: argparse.Namespace, tokenizer_dir: Path) -> dict[str, int]:
    """The BertConfig fields both sides use (the rest are BERT's defaults on both)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.heads,
        "intermediate_size": args.intermediate,
        "max_position_embeddings": max(512, args.seq_len),
        "pad_token_id": tokenizer.pad_token_id,
    }


def thread_env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def summarize(step_seconds: list[float], tokens_per_step: int) -> dict:
    return {
        "tokens_per_s": tokens_per_step * len(step_seconds) / sum(step_seconds),
        "median_step_s": statistics.median(step_seconds),
        "step_seconds": step_seconds,
    }


# ---------------------------------------------------------------------------------------------- fmkit side


def run_fmkit(args: argparse.Namespace, tokenizer_dir: Path, config: dict[str, int]) -> dict:
    """recipes/mlm.py as a user runs it; per-step seconds from metrics.jsonl (log_every 1)."""
    total = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory(prefix="fmkit-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / "mlm.py"),
            "--output_dir", out, "--overwrite_output_dir", "true",
            "--tokenizer_name_or_path", str(tokenizer_dir), "--model_config", json.dumps(config),
            "--block_size", str(args.seq_len), "--per_device_batch_size", str(args.batch_size),
            "--max_steps", str(total), "--learning_rate", str(args.learning_rate), "--weight_decay", "0.01",
            "--lr_scheduler", "linear", "--warmup_steps", "0", "--max_grad_norm", "1.0",
            "--log_every", "1", "--eval_every", "0", "--eval_batches", "1", "--save_every", "0",
            "--report_to", "none", "--mixed_precision", "no", "--num_workers", "0",
        ]  # fmt: skip
        result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"fmkit run failed:\n{result.stderr[-4000:]}")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        exported = json.loads((Path(out) / "config.json").read_text())
    if mismatched := {k: (v, exported.get(k)) for k, v in config.items() if exported.get(k) != v}:
        raise RuntimeError(f"fmkit built a different model than asked for: {mismatched}")
    tokens_per_step = args.batch_size * args.seq_len
    rates = {r["step"]: r["tokens_per_s"] for r in records if "tokens_per_s" in r}
    seconds = [tokens_per_step / rates[step] for step in range(args.warmup_steps + 1, total + 1)]
    return summarize(seconds, tokens_per_step)


# ---------------------------------------------------------------------------------------------- HF side


def run_hf(args: argparse.Namespace, tokenizer_dir: Path, config: dict[str, int]) -> dict:
    """The same measurement on transformers.Trainer, in a fresh process (see hf_worker)."""
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as work:
        spec, result_path = Path(work) / "spec.json", Path(work) / "result.json"
        spec.write_text(json.dumps({**vars(args), "out": None, "hf_worker": None, "tokenizer_dir": str(tokenizer_dir),
                                    "model_config": config, "result": str(result_path), "work": work}))  # fmt: skip
        command = [sys.executable, __file__, "--hf_worker", str(spec)]
        result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"HF run failed:\n{result.stderr[-4000:]}")
        return json.loads(result_path.read_text())


def hf_worker(spec_path: Path) -> None:
    """run_mlm.py's recipe: tokenize, group_texts, DataCollatorForLanguageModeling, Trainer."""
    from datasets import load_dataset
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        BertConfig,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from fmkit.data.corpus import python_docs_corpus

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    seq_len, total = spec["seq_len"], spec["warmup_steps"] + spec["steps"]
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    raw = load_dataset("json", data_files=str(python_docs_corpus().train), split="train")

    def tokenize(examples: dict) -> dict:
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples: dict) -> dict:
        concatenated = {k: list(chain.from_iterable(examples[k])) for k in examples}
        length = len(concatenated["input_ids"]) // seq_len * seq_len
        return {k: [t[i : i + seq_len] for i in range(0, length, seq_len)] for k, t in concatenated.items()}

    tokenized = raw.map(tokenize, batched=True, remove_columns=raw.column_names)
    blocks = tokenized.map(group_texts, batched=True)

    model = AutoModelForMaskedLM.from_config(BertConfig(**spec["model_config"]), attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    training_args = TrainingArguments(
        output_dir=spec["work"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=total,
        learning_rate=spec["learning_rate"],
        weight_decay=0.01,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        logging_steps=total,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=42,
    )
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer = Trainer(model=model, args=training_args, train_dataset=blocks, data_collator=collator,
                      callbacks=[StepClock()])  # fmt: skip
    trainer.train()
    timed = step_ends[spec["warmup_steps"] - 1 :]  # from the end of the last warmup step
    seconds = [b - a for a, b in pairwise(timed)]
    result = summarize(seconds, spec["batch_size"] * seq_len)
    result["optimizer"] = type(trainer.optimizer).__name__ + f"(fused={trainer.optimizer.defaults.get('fused')})"
    Path(spec["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- report


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    import transformers

    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "transformers": transformers.__version__}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.hf_worker is not None:
        hf_worker(args.hf_worker)
        return
    if args.warmup_steps < 1 or args.steps < 1:
        raise SystemExit("--warmup_steps and --steps must be at least 1")
    tokenizer_dir = shared_tokenizer(args.vocab_size)
    config = model_config(args, tokenizer_dir)
    label = args.label or f"h{args.hidden_size}-L{args.num_layers}-T{args.seq_len}-B{args.batch_size}"
    runs = []
    for repeat in range(args.repeats):
        fmkit, hf = run_fmkit(args, tokenizer_dir, config), run_hf(args, tokenizer_dir, config)
        runs.append({"repeat": repeat, "fmkit": fmkit, "hf": hf, "ratio": fmkit["tokens_per_s"] / hf["tokens_per_s"]})
        print(f"{label} #{repeat}: fmkit {fmkit['tokens_per_s']:.0f} tok/s | HF {hf['tokens_per_s']:.0f} tok/s "
              f"| ratio {runs[-1]['ratio']:.2f}x", flush=True)  # fmt: skip

    print("\n| config | run | fmkit tok/s | HF tok/s | fmkit / HF |\n|---|---|---|---|---|")
    for run in runs:
        print(f"| {label} | {run['repeat']} | {run['fmkit']['tokens_per_s']:.0f} | {run['hf']['tokens_per_s']:.0f} "
              f"| {run['ratio']:.2f}x |")  # fmt: skip
    report = {"label": label, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "hf_worker")},
              "model_config": config, "machine": machine(), "runs": runs}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
