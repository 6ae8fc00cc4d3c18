"""CLIP pretraining throughput: fmkit's recipe (recipes/clip.py) against open_clip's own trainer, side by side.

Both sides train the same open_clip architecture (a small ViT and text transformer, written to one JSON
config that each side registers with `open_clip.add_model_config`) on the same image-text pairs: fmkit's
embedded pairs written as PNG files at the model's image size, listed in one CSV (`filepath,title`, absolute
paths). Each side decodes the same files, crops them with open_clip's training crop (90-100% of the area,
bicubic) and tokenizes the same captions with its own copy of CLIP's BPE. Both use the same batch size,
fp32, threads (OMP_NUM_THREADS and torch.set_num_threads), data-loader workers, AdamW settings, cosine
schedule with the same warmup, gradient clipping at 1.0 and ClipLoss(local_loss, gather_with_grad).

Each side runs in its own fresh process, as a user runs it. The CSV holds exactly (warmup_steps + steps) x
batch_size rows, so both train exactly one pass over it with no epoch boundary inside the run. Per-step
seconds come from each side's own per-step log (fmkit: metrics.jsonl with --log_every 1; open_clip_train:
the "Batch (t)" samples/s of its out.log with --log-every-n-steps 1); the first `warmup_steps` steps, setup,
evaluation and saving are not timed. After each run both saved state dicts are checked name by name and shape
by shape against open_clip.create_model(config), so a side that trained another model fails the benchmark.

    python benchmarks/clip_throughput.py                                  # ViT w256 L6 p8 64px, B64, 2 repeats
    python benchmarks/clip_throughput.py --image_size 96 --width 384 --layers 4 --batch_size 32 --repeats 1
    python benchmarks/clip_throughput.py --help
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import REPO, add_run_arguments, check_run_lengths, machine, save_report, thread_env  # on sys.path

# AdamW as open_clip_train's defaults for ViT models (get_default_params), set explicitly on both sides.
WEIGHT_DECAY = 0.1
ADAM_BETAS = (0.9, 0.98)
ADAM_EPSILON = 1e-6
MAX_GRAD_NORM = 1.0
EVAL_PAIRS = 64
"""Held-out pairs for fmkit's end-of-run evaluation (untimed); without eval_data it would hold out 1000."""
OPEN_CLIP_LINE = re.compile(r"Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+), ([\d.eE+-]+)/s,")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--width", type=int, default=256, help="width of both towers")
    parser.add_argument("--layers", type=int, default=6, help="layers of both towers")
    parser.add_argument("--head_width", type=int, default=64, help="width per attention head (both towers)")
    parser.add_argument("--embed_dim", type=int, default=256, help="joint embedding size")
    parser.add_argument("--workers", type=int, default=1, help="data-loader worker processes, both sides")
    add_run_arguments(parser, seq_len=32, batch_size=64)
    parser.set_defaults(steps=20, warmup_steps=3, threads=2, repeats=2, out=Path("clip_results.json"))
    parser._option_string_actions["--seq_len"].help = "text context length"
    parser.add_argument("--open_clip_worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.width % args.head_width:
        parser.error("--width must be a multiple of --head_width")
    return args


def model_config(args: argparse.Namespace) -> dict:
    """The open_clip config both sides train (--seq_len is the text context length)."""
    return {
        "embed_dim": args.embed_dim,
        "vision_cfg": {"image_size": args.image_size, "layers": args.layers, "width": args.width,
                       "patch_size": args.patch_size, "head_width": args.head_width},
        "text_cfg": {"context_length": args.seq_len, "vocab_size": 49408, "width": args.width,
                     "heads": args.width // args.head_width, "layers": args.layers},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- shared setup


def write_pairs(folder: Path, image_size: int, rows: int) -> tuple[Path, Path]:
    """fmkit's embedded pairs as PNG files at the model's size, and a train and an eval CSV listing them.

    The train CSV has exactly `rows` rows (pairs drawn in a fixed random order, cycled if there are fewer);
    the eval CSV has EVAL_PAIRS other pairs. Paths are absolute, so open_clip_train (which opens them as
    given) and fmkit (which resolves them against the CSV's folder) read the same files.
    """
    from PIL import Image

    from fmkit.data.embedded_pairs import embedded_pairs

    train = embedded_pairs(image_size).train
    pixels, captions = train.images.pixels, train.captions
    assert pixels.shape[1:3] == (image_size, image_size), pixels.shape
    order = np.random.default_rng(0).permutation(len(captions))
    eval_index, train_index = order[:EVAL_PAIRS], order[EVAL_PAIRS:]
    train_index = np.resize(train_index, rows)  # cycles when rows > the pairs available
    images = folder / "images"
    images.mkdir()
    for index in np.union1d(train_index, eval_index):
        Image.fromarray(pixels[index]).save(images / f"{index:05d}.png")
    tables = []
    for name, picked in (("train.csv", train_index), ("eval.csv", eval_index)):
        with (folder / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filepath", "title"])
            writer.writerows([str(images / f"{index:05d}.png"), captions[index]] for index in picked)
        tables.append(folder / name)
    return tables[0], tables[1]


def run_process(command: list[str], args: argparse.Namespace, what: str) -> None:
    result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-4000:]}")


def summarize(step_seconds: list[float], batch_size: int) -> dict:
    return {
        "samples_per_s": batch_size * len(step_seconds) / sum(step_seconds),
        "median_step_s": statistics.median(step_seconds),
        "step_seconds": step_seconds,
    }


def state_shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in state.items()}


# ---------------------------------------------------------------------------------------------- fmkit side


def run_fmkit(args: argparse.Namespace, config_path: Path, train_csv: Path, eval_csv: Path) -> dict:
    """recipes/clip.py as a user runs it; per-step seconds and data wait from metrics.jsonl (log_every 1)."""
    from safetensors.torch import load_file

    total = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory(prefix="fmkit-clip-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / "clip.py"), "--model", f"open_clip:{config_path}",
            "--train_data", str(train_csv), "--eval_data", str(eval_csv), "--eval_batches", "1",
            "--image_column", "filepath", "--caption_column", "title",
            "--output_dir", out, "--overwrite_output_dir", "true",
            "--per_device_batch_size", str(args.batch_size), "--max_steps", str(total),
            "--learning_rate", str(args.learning_rate), "--lr_scheduler", "cosine",
            "--warmup_steps", str(args.warmup_steps), "--weight_decay", str(WEIGHT_DECAY),
            "--adam_beta1", str(ADAM_BETAS[0]), "--adam_beta2", str(ADAM_BETAS[1]),
            "--adam_epsilon", str(ADAM_EPSILON), "--max_grad_norm", str(MAX_GRAD_NORM),
            "--log_every", "1", "--eval_every", "0", "--save_every", "0", "--report_to", "none",
            "--mixed_precision", "no", "--num_workers", str(args.workers), "--cpu_threads", str(args.threads),
        ]  # fmt: skip
        run_process(command, args, "fmkit run")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        shapes = state_shapes(load_file(str(Path(out) / "open_clip_model.safetensors")))
    steps = {r["step"]: r for r in records if "samples_per_s" in r}
    timed = [steps[step] for step in range(args.warmup_steps + 1, total + 1)]
    seconds = [args.batch_size / r["samples_per_s"] for r in timed]
    waited = sum(r["data_wait_fraction"] * s for r, s in zip(timed, seconds, strict=True))
    return {**summarize(seconds, args.batch_size), "data_wait_fraction": waited / sum(seconds),
            "final_loss": timed[-1]["loss"], "state_shapes": shapes}  # fmt: skip


# ---------------------------------------------------------------------------------------------- open_clip side


def run_open_clip(args: argparse.Namespace, config_path: Path, train_csv: Path) -> dict:
    """`python -m open_clip_train.main` through open_clip_worker, in a fresh process; steps from its out.log."""
    total = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory(prefix="open-clip-bench-") as logs:
        argv = [
            "--dataset-type", "csv", "--train-data", str(train_csv), "--csv-img-key", "filepath",
            "--csv-caption-key", "title", "--csv-separator", ",", "--model", config_path.stem,
            "--device", "cpu", "--precision", "fp32", "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--epochs", "1", "--lr", str(args.learning_rate),
            "--lr-scheduler", "cosine", "--warmup", str(args.warmup_steps), "--wd", str(WEIGHT_DECAY),
            "--beta1", str(ADAM_BETAS[0]), "--beta2", str(ADAM_BETAS[1]), "--eps", str(ADAM_EPSILON),
            "--grad-clip-norm", str(MAX_GRAD_NORM), "--local-loss", "--gather-with-grad",
            "--log-every-n-steps", "1", "--logs", logs, "--name", "bench", "--save-frequency", "0",
            "--zeroshot-frequency", "0", "--report-to", "",
        ]  # fmt: skip
        spec = Path(logs) / "spec.json"
        spec.write_text(json.dumps({"threads": args.threads, "config": str(config_path), "argv": argv}))
        run_process([sys.executable, __file__, "--open_clip_worker", str(spec)], args, "open_clip_train run")
        log = (Path(logs) / "bench" / "out.log").read_text()
        # The last epoch's checkpoint is written whatever --save-frequency says (after training: untimed).
        checkpoint = torch.load(Path(logs) / "bench" / "checkpoints" / "epoch_1.pt", map_location="cpu")
        shapes = state_shapes(checkpoint["state_dict"])
    lines = OPEN_CLIP_LINE.findall(log)
    if len(lines) != total:
        raise RuntimeError(f"open_clip_train logged {len(lines)} steps, expected {total}:\n{log[-3000:]}")
    timed = [(float(data), args.batch_size / float(rate)) for data, _, rate in lines[args.warmup_steps :]]
    seconds = [s for _, s in timed]
    loss = re.findall(r"Contrastive_loss: ([\d.]+)", log)[-1]
    return {**summarize(seconds, args.batch_size), "data_wait_fraction": sum(d for d, _ in timed) / sum(seconds),
            "final_loss": float(loss), "state_shapes": shapes}  # fmt: skip


def open_clip_worker(spec_path: Path) -> None:
    """open_clip_train.main.main(argv) once the benchmark's config is registered (it knows built-in names only)."""
    import open_clip
    from open_clip_train.main import main as open_clip_main

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    open_clip.add_model_config(spec["config"])
    open_clip_main(spec["argv"])


# ---------------------------------------------------------------------------------------------- report


def check_same_model(reference: dict[str, list[int]], fmkit: dict, baseline: dict) -> None:
    """Both sides saved exactly the tensors, by name and shape, of open_clip.create_model on the config."""
    for side, run in (("fmkit", fmkit), ("open_clip_train", baseline)):
        shapes = run.pop("state_shapes")
        if shapes != reference:
            differ = sorted(k for k in shapes.keys() | reference.keys() if shapes.get(k) != reference.get(k))
            raise RuntimeError(f"{side} trained a different model than the config describes: {differ[:10]}")


TABLE_HEADER = (
    "| run | fmkit samples/s | open_clip samples/s | fmkit / open_clip | median step fmkit / open_clip (ms) "
    "| data wait fmkit / open_clip | load after fmkit / open_clip |\n|---|---|---|---|---|---|---|"
)


def table_row(run: dict) -> str:
    fmkit, baseline = run["fmkit"], run["open_clip"]
    cells = [
        run["repeat"] + 1, f"{fmkit['samples_per_s']:.1f}", f"{baseline['samples_per_s']:.1f}",
        f"**{run['ratio']:.2f}x**",
        f"{fmkit['median_step_s'] * 1000:.0f} / {baseline['median_step_s'] * 1000:.0f}",
        f"{fmkit['data_wait_fraction']:.1%} / {baseline['data_wait_fraction']:.1%}",
        f"{fmkit['load_1min']:.2f} / {baseline['load_1min']:.2f}",
    ]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.open_clip_worker is not None:
        open_clip_worker(args.open_clip_worker)
        return
    check_run_lengths(args)
    import open_clip

    config = model_config(args)
    name = (f"bench-vit-w{args.width}-L{args.layers}-p{args.patch_size}-i{args.image_size}-T{args.seq_len}"
            f"-e{args.embed_dim}")  # fmt: skip
    label = args.label or f"{name}-B{args.batch_size}"
    runs = []
    with tempfile.TemporaryDirectory(prefix="clip-bench-data-") as work:
        config_path = Path(work) / f"{name}.json"
        config_path.write_text(json.dumps(config, indent=2))
        open_clip.add_model_config(config_path)
        reference = open_clip.create_model(name)
        parameters = sum(p.numel() for p in reference.parameters())
        shapes = state_shapes(reference.state_dict())
        del reference
        rows = (args.warmup_steps + args.steps) * args.batch_size
        train_csv, eval_csv = write_pairs(Path(work), args.image_size, rows)
        print(f"{label}: {json.dumps(config)}\n{parameters:,} parameters\nload before: {os.getloadavg()[0]:.2f}\n\n"
              f"{TABLE_HEADER}", flush=True)  # fmt: skip
        for repeat in range(args.repeats):
            fmkit = {**run_fmkit(args, config_path, train_csv, eval_csv), "load_1min": os.getloadavg()[0]}
            baseline = {**run_open_clip(args, config_path, train_csv), "load_1min": os.getloadavg()[0]}
            check_same_model(shapes, fmkit, baseline)
            runs.append({"repeat": repeat, "fmkit": fmkit, "open_clip": baseline,
                         "ratio": fmkit["samples_per_s"] / baseline["samples_per_s"]})  # fmt: skip
            print(table_row(runs[-1]), flush=True)
    medians = {side: statistics.median(run[side]["samples_per_s"] for run in runs) for side in ("fmkit", "open_clip")}
    ratio = medians["fmkit"] / medians["open_clip"]
    print(f"\nmedian over {len(runs)} repeats: fmkit {medians['fmkit']:.1f} samples/s, open_clip "
          f"{medians['open_clip']:.1f} samples/s, ratio {ratio:.2f}x (per-repeat ratios: "
          f"{', '.join(format(run['ratio'], '.2f') for run in runs)})")  # fmt: skip
    print(f"both sides trained the config's {parameters:,} parameters (saved state dicts checked name by name, "
          "shape by shape)")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "hf_worker", "open_clip_worker")}
    report = {"label": label, "settings": settings, "model_config": config, "parameters": parameters,
              "machine": {**machine(), "open_clip": open_clip.__version__}, "median_samples_per_s": medians,
              "median_ratio": ratio, "runs": runs}  # fmt: skip
    save_report(report, args.out)


if __name__ == "__main__":
    main()
