"""What the fmkit-vs-transformers.Trainer throughput benchmarks share: one method, written once.

Each benchmark runs an fmkit recipe as a user runs it and the matching transformers example recipe, each in
a fresh process, on the same corpus, tokenizer, model config, batch and threads, and times the same steps
on both sides. The rules that make the two sides comparable live here, so every benchmark applies them alike.
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
from collections.abc import Callable, Iterable
from itertools import chain, pairwise
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def add_run_arguments(parser: argparse.ArgumentParser, seq_len: int, batch_size: int) -> None:
    """Options every comparison has: the step's shape, how many steps to time, threads, repeats, output."""
    parser.add_argument("--seq_len", type=int, default=seq_len)
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup_steps", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1, help="run both sides this many times (alternating)")
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--label", default=None, help="name of this configuration in the table")
    parser.add_argument("--out", type=Path, default=None, help="also write the full report here as JSON")
    parser.add_argument("--hf_worker", type=Path, default=None, help=argparse.SUPPRESS)


def check_run_lengths(args: argparse.Namespace) -> None:
    if args.warmup_steps < 1 or args.steps < 1:
        raise SystemExit("--warmup_steps and --steps must be at least 1")


# ---------------------------------------------------------------------------------------------- shared setup


def shared_tokenizer(kind: str, vocab_size: int, specials) -> Path:
    """A tokenizer trained once on the corpus with fmkit's trainer, saved where both sides load it from."""
    from fmkit.data.cache import build_once, cache_root, fingerprint
    from fmkit.data.corpus import python_docs_corpus
    from fmkit.data.documents import ReadStats, TextSource, iter_documents
    from fmkit.data.tokenizer import train_tokenizer

    corpus = python_docs_corpus()

    def build(folder: Path) -> None:
        texts = iter_documents(TextSource(files=(str(corpus.train),)), ReadStats())
        train_tokenizer(texts, kind, vocab_size, specials).save_pretrained(folder)

    key = fingerprint(str(corpus.train), vocab_size, specials.as_list())
    return build_once(cache_root() / "benchmarks" / f"{kind}-{vocab_size}-{key}", build)


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


def run_fmkit(
    recipe: str, args: argparse.Namespace, tokenizer_dir: Path, config: dict, options: Iterable[str] = ()
) -> dict:
    """recipes/<recipe>.py as a user runs it; per-step seconds from metrics.jsonl (log_every 1).

    `options` are the recipe flags that differ between benchmarks (weight decay, betas, compile, ...).
    """
    total = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory(prefix="fmkit-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / f"{recipe}.py"),
            "--output_dir", out, "--overwrite_output_dir", "true",
            "--tokenizer_name_or_path", str(tokenizer_dir), "--model_config", json.dumps(config),
            "--block_size", str(args.seq_len), "--per_device_batch_size", str(args.batch_size),
            "--max_steps", str(total), "--learning_rate", str(args.learning_rate),
            "--lr_scheduler", "linear", "--warmup_steps", "0", "--max_grad_norm", "1.0",
            "--log_every", "1", "--eval_every", "0", "--eval_batches", "1", "--save_every", "0",
            "--report_to", "none", "--mixed_precision", "no", "--num_workers", "0", *options,
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


def run_hf(script: str, args: argparse.Namespace, tokenizer_dir: Path, config: dict) -> dict:
    """The same measurement on transformers.Trainer: `script --hf_worker spec.json` in a fresh process.

    The worker gets the corpus file as run_*.py gets --train_file: it never calls fmkit's corpus builder,
    whose package lookup (find_spec("pip")) makes setuptools' distutils shim fail torch.compile on CPU.
    """
    from fmkit.data.corpus import python_docs_corpus

    with tempfile.TemporaryDirectory(prefix="hf-bench-") as work:
        spec, result_path = Path(work) / "spec.json", Path(work) / "result.json"
        spec.write_text(json.dumps({**vars(args), "out": None, "hf_worker": None, "tokenizer_dir": str(tokenizer_dir),
                                    "train_file": str(python_docs_corpus().train), "model_config": config,
                                    "result": str(result_path), "work": work}))  # fmt: skip
        command = [sys.executable, script, "--hf_worker", str(spec)]
        result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"HF run failed:\n{result.stderr[-4000:]}")
        return json.loads(result_path.read_text())


def read_spec(spec_path: Path) -> dict:
    """The worker's settings; sets the thread count first, as a user of the HF recipe would."""
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    return spec


def hf_blocks(train_file: str, tokenize: Callable[[dict], dict], seq_len: int, num_proc: int | None = None):
    """The run_*.py data path: `datasets` map tokenization of the corpus, then group_texts into full blocks."""
    from datasets import load_dataset

    raw = load_dataset("json", data_files=train_file, split="train")

    def group_texts(examples: dict) -> dict:
        concatenated = {k: list(chain.from_iterable(examples[k])) for k in examples}
        length = len(concatenated["input_ids"]) // seq_len * seq_len
        return {k: [t[i : i + seq_len] for i in range(0, length, seq_len)] for k, t in concatenated.items()}

    tokenized = raw.map(tokenize, batched=True, remove_columns=raw.column_names, num_proc=num_proc)
    return tokenized.map(group_texts, batched=True, num_proc=num_proc)


def hf_training_arguments(spec: dict, **overrides):
    """TrainingArguments both benchmarks fix: linear schedule, clipping at 1.0, CPU, no workers, no logging."""
    from transformers import TrainingArguments

    total = spec["warmup_steps"] + spec["steps"]
    settings = {
        "output_dir": spec["work"],
        "per_device_train_batch_size": spec["batch_size"],
        "max_steps": total,
        "learning_rate": spec["learning_rate"],
        "lr_scheduler_type": "linear",
        "max_grad_norm": 1.0,
        "logging_steps": total,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 42,
    }
    return TrainingArguments(**{**settings, **overrides})


def hf_train(spec: dict, **trainer_kwargs) -> None:
    """Trainer.train with a wall clock at every step end; writes the timed steps' summary to spec['result']."""
    from transformers import Trainer, TrainerCallback

    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer = Trainer(**trainer_kwargs, callbacks=[StepClock()])
    trainer.train()
    timed = step_ends[spec["warmup_steps"] - 1 :]  # from the end of the last warmup step
    seconds = [b - a for a, b in pairwise(timed)]
    result = summarize(seconds, spec["batch_size"] * spec["seq_len"])
    result["optimizer"] = type(trainer.optimizer).__name__ + f"(fused={trainer.optimizer.defaults.get('fused')})"
    Path(spec["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- report


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    import transformers

    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "transformers": transformers.__version__}


Column = Callable[[dict], str]
RATE_COLUMNS: dict[str, Column] = {
    "fmkit tok/s": lambda run: f"{run['fmkit']['tokens_per_s']:.0f}",
    "HF tok/s": lambda run: f"{run['hf']['tokens_per_s']:.0f}",
    "fmkit / HF": lambda run: f"{run['ratio']:.2f}x",
}
MEDIAN_STEP_COLUMNS: dict[str, Column] = {
    "fmkit median step": lambda run: f"{run['fmkit']['median_step_s'] * 1000:.0f} ms",
    "HF median step": lambda run: f"{run['hf']['median_step_s'] * 1000:.0f} ms",
}


def compare(
    args: argparse.Namespace,
    label: str,
    config: dict,
    fmkit: Callable[[], dict],
    hf: Callable[[], dict],
    columns: dict[str, Column] = RATE_COLUMNS,
    rate: str = "tokens_per_s",
    extra: dict | None = None,
) -> None:
    """Alternate the two sides `repeats` times, print a line per run and a table, write the JSON report.

    `rate` is the key of each side's result that the ratio compares (samples_per_s where padding varies);
    `extra` goes into the report as it is (measurements beside the comparison).
    """
    runs = []
    for repeat in range(args.repeats):
        fmkit_run, hf_run = fmkit(), hf()
        runs.append({"repeat": repeat, "fmkit": fmkit_run, "hf": hf_run, "ratio": fmkit_run[rate] / hf_run[rate]})
        print(f"{label} #{repeat}: fmkit {fmkit_run[rate]:.1f} | HF {hf_run[rate]:.1f} {rate} "
              f"| ratio {runs[-1]['ratio']:.2f}x", flush=True)  # fmt: skip

    print(f"\n| config | run | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}")
    for run in runs:
        print(f"| {label} | {run['repeat']} | {' | '.join(cell(run) for cell in columns.values())} |")
    report = {"label": label, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "hf_worker")},
              "model_config": config, "machine": machine(), "runs": runs, **(extra or {})}  # fmt: skip
    save_report(report, args.out)


def compare_with_trainer(
    script: str,
    recipe: str,
    args: argparse.Namespace,
    tokenizer: tuple,
    model_config: Callable[[argparse.Namespace, Path], dict],
    label: str,
    fmkit_options: Iterable[str] = (),
    columns: dict[str, Column] = RATE_COLUMNS,
) -> None:
    """recipes/<recipe>.py against transformers.Trainer (`script --hf_worker`) on one tokenizer and model config.

    `tokenizer` is shared_tokenizer's (kind, vocab_size, specials).
    """
    check_run_lengths(args)
    tokenizer_dir = shared_tokenizer(*tokenizer)
    config = model_config(args, tokenizer_dir)
    compare(
        args,
        label,
        config,
        lambda: run_fmkit(recipe, args, tokenizer_dir, config, fmkit_options),
        lambda: run_hf(script, args, tokenizer_dir, config),
        columns,
    )


def save_report(report: dict, out: Path | None) -> None:
    """Only where asked: a benchmark run from a checkout must not leave files in it."""
    if out is None:
        print("\n(pass --out FILE to keep the full report as JSON)")
        return
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")
