"""Fine-tuning throughput: fmkit's full fine-tune (recipes/finetune.py) against transformers.Trainer in the run_glue
setup, side by side, and what LoRA saves against full fine-tuning.

Both sides fine-tune the same pretrained model (default: the MLM demo's output) as an
AutoModelForSequenceClassification on the same labelled docstrings (which library a docstring comes from: the
embedded task, written once to train / validation / test JSONL files), truncated at `seq_len` tokens and padded
per batch to its longest input, with the same batch, threads, AdamW, linear schedule from the peak (no warmup),
weight decay 0.01 and clipping at 1.0, for the same number of steps. Each side runs in a fresh process; the
first `warmup_steps` steps and all setup are untimed; samples/s = batch x steps / seconds of the timed steps
(tokens per batch differ between the sides' shuffles, samples do not). After the last step both sides score the
same test file; fmkit evaluates only at the end (eval_every 0), so its best checkpoint is its final model.

    python benchmarks/finetune_throughput.py --model /work/main/runs/mlm-demo --threads 1 --repeats 2
    python benchmarks/finetune_throughput.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (  # benchmarks/ is on sys.path when a script in it runs
    REPO,
    add_run_arguments,
    check_run_lengths,
    compare,
    hf_train,
    hf_training_arguments,
    read_spec,
    thread_env,
)

WEIGHT_DECAY = "0.01"
TRAINABLE = re.compile(r"adapter trains ([\d,]+) of ([\d,]+) parameters")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_help = "a pretrained model folder with its tokenizer (make the default with recipes/mlm.py)"
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "mlm-demo", help=model_help)
    lora_help = "also fine-tune once each with fmkit's full and LoRA adapters: trainable parameters, peak memory"
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help=lora_help)
    add_run_arguments(parser, seq_len=128, batch_size=32)
    args = parser.parse_args(argv)
    if args.hf_worker is None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there (make it with `python recipes/mlm.py`)")
    return args


def write_task_files(folder: Path, seed: int = 42) -> dict[str, Path]:
    """The embedded docstring-library task as train / validation / test JSONL: both sides read these files, so
    HF trains on exactly the examples fmkit trains on (fmkit's validation split is held out of both)."""
    import numpy as np

    from fmkit.tasks.finetune.common import stratified_split
    from fmkit.tasks.finetune.text import embedded_library_task

    splits, _ = embedded_library_task()
    texts, _, labels = splits["train"]
    keep, held = stratified_split(np.array(labels), 0.9, seed, "validation")
    rows = {"train": [(texts[i], labels[i]) for i in keep], "validation": [(texts[i], labels[i]) for i in held],
            "test": list(zip(splits["test"][0], splits["test"][2], strict=True))}  # fmt: skip
    files = {}
    for role, pairs in rows.items():
        files[role] = folder / f"{role}.jsonl"
        lines = (json.dumps({"text": text, "label": label}) for text, label in pairs)
        files[role].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files


def run_measured(command: list[str], threads: int, log: Path) -> float:
    """Run `command` to completion in a fresh process; its own peak resident memory in MiB (wait4's rusage)."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=thread_env(threads), stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[1]} failed:\n{log.read_text()[-4000:]}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def run_fmkit(args: argparse.Namespace, files: dict[str, Path], adapter: str) -> dict:
    """recipes/finetune.py as a user runs it; per-step seconds from metrics.jsonl (log_every 1)."""
    total = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory(prefix="fmkit-ft-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / "finetune.py"),
            "--config", str(REPO / "recipes" / "configs" / "finetune" / "text-classification.yaml"),
            "--output_dir", out, "--overwrite_output_dir", "true", "--model_name_or_path", str(args.model),
            "--train_files", str(files["train"]), "--validation_files", str(files["validation"]),
            "--test_files", str(files["test"]), "--text_column", "text", "--label_column", "label",
            "--adapter", adapter, "--compare_scratch", "false", "--max_seq_length", str(args.seq_len),
            "--per_device_batch_size", str(args.batch_size), "--max_steps", str(total),
            "--learning_rate", str(args.learning_rate), "--head_lr_multiplier", "1", "--lr_scheduler", "linear",
            "--warmup_steps", "0", "--weight_decay", WEIGHT_DECAY, "--max_grad_norm", "1.0",
            "--cpu_threads", str(args.threads),
            "--log_every", "1", "--eval_every", "0", "--save_every", "0", "--report_to", "none",
            "--mixed_precision", "no", "--num_workers", "0",
        ]  # fmt: skip
        log = Path(out) / "run.log"
        peak_rss = run_measured(command, args.threads, log)
        trainable, total_parameters = (int(n.replace(",", "")) for n in TRAINABLE.search(log.read_text()).groups())
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["samples_per_s"] for r in records if "samples_per_s" in r}
    seconds = [args.batch_size / rates[step] for step in range(args.warmup_steps + 1, total + 1)]
    test_accuracy = next(r["test_accuracy"] for r in reversed(records) if "test_accuracy" in r)
    return {**summarize(seconds, args.batch_size), "test_accuracy": test_accuracy, "peak_rss_mib": peak_rss,
            "trainable_parameters": trainable, "parameters": total_parameters}  # fmt: skip


def run_hf(args: argparse.Namespace, files: dict[str, Path]) -> dict:
    """The same run on transformers.Trainer: this script with --hf_worker in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="hf-ft-bench-") as work:
        spec, result = Path(work) / "spec.json", Path(work) / "result.json"
        spec.write_text(json.dumps({**vars(args), "model": str(args.model), "out": None, "hf_worker": None,
                                    "files": {k: str(v) for k, v in files.items()}, "result": str(result),
                                    "work": work}))  # fmt: skip
        command = [sys.executable, __file__, "--hf_worker", str(spec)]
        peak_rss = run_measured(command, args.threads, Path(work) / "run.log")
        return {**json.loads(result.read_text()), "peak_rss_mib": peak_rss}


def summarize(step_seconds: list[float], samples_per_step: int) -> dict:
    import statistics

    return {"samples_per_s": samples_per_step * len(step_seconds) / sum(step_seconds),
            "median_step_s": statistics.median(step_seconds), "step_seconds": step_seconds}  # fmt: skip


def hf_worker(spec_path: Path) -> None:
    """run_glue.py's recipe: tokenize with truncation, DataCollatorWithPadding, Trainer; then predict on test."""
    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    spec = read_spec(spec_path)
    set_seed(42)  # before the model, as run_glue.py does: the new head starts the same in every repeat
    files = spec["files"]
    raw = {role: load_dataset("json", data_files=files[role], split="train") for role in ("train", "test")}
    class_names = sorted(set(raw["train"]["label"]))
    label_ids = {name: i for i, name in enumerate(class_names)}
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])

    def preprocess(examples: dict) -> dict:
        encoded = tokenizer(examples["text"], truncation=True, max_length=spec["seq_len"])
        encoded["label"] = [label_ids[name] for name in examples["label"]]
        return encoded

    data = {role: table.map(preprocess, batched=True, remove_columns=["text"]) for role, table in raw.items()}
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=len(class_names), id2label=dict(enumerate(class_names)), label2id=label_ids
    )
    training_args = hf_training_arguments(spec, weight_decay=float(WEIGHT_DECAY), warmup_steps=0,
                                          per_device_eval_batch_size=spec["batch_size"])  # fmt: skip
    collator = DataCollatorWithPadding(tokenizer)
    trainer_kwargs = {"model": model, "args": training_args, "train_dataset": data["train"], "data_collator": collator}
    hf_train(spec, **trainer_kwargs)
    timed = json.loads(Path(spec["result"]).read_text())
    result = {**summarize(timed["step_seconds"], spec["batch_size"]), "optimizer": timed["optimizer"]}
    predicted = Trainer(**trainer_kwargs).predict(data["test"])
    result["test_accuracy"] = float(np.mean(predicted.predictions.argmax(-1) == predicted.label_ids))
    result["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    Path(spec["result"]).write_text(json.dumps(result))


COLUMNS = {
    "fmkit samples/s": lambda run: f"{run['fmkit']['samples_per_s']:.1f}",
    "HF samples/s": lambda run: f"{run['hf']['samples_per_s']:.1f}",
    "fmkit / HF": lambda run: f"{run['ratio']:.2f}x",
    "fmkit test acc": lambda run: f"{run['fmkit']['test_accuracy']:.3f}",
    "HF test acc": lambda run: f"{run['hf']['test_accuracy']:.3f}",
    "fmkit peak RSS": lambda run: f"{run['fmkit']['peak_rss_mib']:.0f} MiB",
    "HF peak RSS": lambda run: f"{run['hf']['peak_rss_mib']:.0f} MiB",
}


def lora_against_full(args: argparse.Namespace, files: dict[str, Path]) -> dict:
    """fmkit's LoRA and full fine-tunes once each: trainable parameters, peak memory, samples/s, accuracy."""
    runs = {adapter: run_fmkit(args, files, adapter) for adapter in ("full", "lora")}
    print("\n| fmkit adapter | trainable / all parameters | peak RSS | samples/s | test acc |\n|---|---|---|---|---|")
    for adapter, run in runs.items():
        share = 100 * run["trainable_parameters"] / run["parameters"]
        print(f"| {adapter} | {run['trainable_parameters']:,} / {run['parameters']:,} ({share:.2f}%) | "
              f"{run['peak_rss_mib']:.0f} MiB | {run['samples_per_s']:.1f} | {run['test_accuracy']:.3f} |")  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.hf_worker is not None:
        hf_worker(args.hf_worker)
        return
    check_run_lengths(args)
    args.model = args.model.resolve()
    label = args.label or f"{args.model.name}-T{args.seq_len}-B{args.batch_size}"
    with tempfile.TemporaryDirectory(prefix="ft-bench-data-") as folder:
        files = write_task_files(Path(folder))
        adapters = {"adapters": lora_against_full(args, files)} if args.lora else {}
        config = json.loads((args.model / "config.json").read_text())
        compare(args, label, config, lambda: run_fmkit(args, files, "full"), lambda: run_hf(args, files),
                COLUMNS, rate="samples_per_s", extra=adapters)  # fmt: skip


if __name__ == "__main__":
    main()
