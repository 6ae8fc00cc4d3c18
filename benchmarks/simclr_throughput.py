"""SimCLR throughput and kNN: fmkit's recipes/contrastive.py against the plain PyTorch loop a lightly user writes.

Both sides train the same module (the SimCLR task's backbone + projector from the demo preset
recipes/configs/contrastive/simclr.yaml, built with the same seed), on the same cached Fashion-MNIST array
(32 px), batch, temperature, learning rate, weight decay, warmup + cosine schedule, gradient clipping, data-loader
workers (fmkit's default, 0) and threads, for the same number of steps, each in a fresh process:

* fmkit runs as a user runs it (`python recipes/contrastive.py --method simclr`); its rates come from its own
  metrics.jsonl (samples_per_s per log window) and its kNN accuracy from the evaluation after the last step.
* the plain side is lightly's recipe: a torch Dataset of PIL images from the same array, lightly's
  `SimCLRTransform` with the `simclr-fashion-mnist` ViewRecipe's settings, a torch DataLoader, lightly's
  `NTXentLoss`, `torch.optim.AdamW(model.parameters())` and transformers' cosine schedule. Both views go
  through the model in one forward, as fmkit does, so BatchNorm sees the same 2N images. Its kNN accuracy is
  measured by the SimCLR task's own RepresentationProbe (same probe images, centre crops and k).

What differs: lightly's views come from PIL/torchvision's random transforms (torch's global RNG, uint8 PIL
jitter), fmkit's from its seeded per-sample float views; the plain AdamW decays every parameter and is
torchvision's default (for-each) implementation, fmkit's decays matrices only and is fused. Images/s counts
images (2 views each) over whole windows of `--log_every` steps, leaving out the first `--warmup_windows`;
setup, evaluation and export are not timed. Repeat r trains both sides with seed `--seed` + r, so the kNN
comparison spans as many seeds as repeats.

lightly is not a dependency of fmkit: `pip install --no-deps --target DIR lightly lightning-utilities`, then
PYTHONPATH=DIR.

    PYTHONPATH=DIR python benchmarks/simclr_throughput.py                    # 3 alternating repeats of 150 steps
    PYTHONPATH=DIR taskset -c 0 python benchmarks/simclr_throughput.py --threads 1 --out simclr.json
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

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from common import REPO, machine, save_report, thread_env

from fmkit.config import parse_config
from fmkit.tasks import get_task
from fmkit.tasks.contrastive.simclr import SimCLR, SimCLRConfig
from fmkit.vision.views import VIEW_PRESETS

PRESET = REPO / "recipes" / "configs" / "contrastive" / "simclr.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run, warm-up included")
    parser.add_argument("--log_every", type=int, default=10, help="steps per timing window (fmkit's log window)")
    parser.add_argument("--warmup_windows", type=int, default=1, help="leading windows left out, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="run both sides this many times (alternating)")
    parser.add_argument("--seed", type=int, default=42, help="repeat r trains both sides with seed + r")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--probe_train_images", default="fashion-mnist:train:2000")
    parser.add_argument("--probe_test_images", default="fashion-mnist:test:1000")
    parser.add_argument("--backbone_config", default=None,
                        help='JSON for both sides\' ResNet instead of the preset\'s, e.g. a ResNet-18 shape: '
                        '\'{"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2]}\'')
    parser.add_argument("--out", type=Path, default=None, help="also write the full report here as JSON")
    parser.add_argument("--plain_worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def shared_options(args: argparse.Namespace) -> list[str]:
    """The preset's overrides both sides train with: length, seed, fp32, threads and the probe set."""
    return [
        "--max_steps", str(args.steps), "--seed", str(args.seed), "--mixed_precision", "no",
        "--cpu_threads", str(args.threads),
        "--probe_train_images", args.probe_train_images, "--probe_test_images", args.probe_test_images,
        *(["--backbone_config", args.backbone_config] if args.backbone_config else []),
    ]  # fmt: skip


def preset_config(args: argparse.Namespace) -> SimCLRConfig:
    return parse_config(get_task("simclr").config_class, ["--config", str(PRESET), *shared_options(args)])


def summarize(window_seconds: list[float], images_per_window: int, data_seconds: float) -> dict:
    return {
        "images_per_s": images_per_window * len(window_seconds) / sum(window_seconds),
        "window_images_per_s": [images_per_window / seconds for seconds in window_seconds],
        "data_wait_fraction": data_seconds / sum(window_seconds),
    }


def run_process(command: list[str], args: argparse.Namespace, what: str) -> None:
    result = subprocess.run(command, check=False, env=thread_env(args.threads), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------- fmkit side


def run_fmkit(args: argparse.Namespace, batch_size: int) -> dict:
    """recipes/contrastive.py as a user runs it; window rates, data wait and final kNN from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="fmkit-simclr-bench-") as out:
        command = [
            sys.executable, str(REPO / "recipes" / "contrastive.py"), "--method", "simclr", *shared_options(args),
            "--output_dir", out, "--overwrite_output_dir", "true", "--log_every", str(args.log_every),
            "--eval_every", "0", "--save_every", "0", "--report_to", "none",
        ]  # fmt: skip
        run_process(command, args, "fmkit simclr run")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    windows = [record for record in records if "samples_per_s" in record][args.warmup_windows :]
    images = args.log_every * batch_size
    seconds = [images / window["samples_per_s"] for window in windows]
    waited = sum(window["data_wait_fraction"] * s for window, s in zip(windows, seconds, strict=True))
    final = next(record for record in reversed(records) if "knn_accuracy" in record)
    return {**summarize(seconds, images, waited), **probe_numbers(final)}


def probe_numbers(metrics: dict) -> dict:
    names = ("knn_accuracy", "linear_probe_accuracy", "knn_accuracy_random_backbone")
    return {name: metrics[name] for name in names if name in metrics}


# ---------------------------------------------------------------------------------------------- lightly side


def run_plain(args: argparse.Namespace) -> dict:
    """The lightly loop in a fresh process, like fmkit's (see plain_worker)."""
    with tempfile.TemporaryDirectory(prefix="lightly-simclr-bench-") as work:
        result = Path(work) / "result.json"
        command = [
            sys.executable, __file__, "--plain_worker", "--out", str(result), "--steps", str(args.steps),
            "--log_every", str(args.log_every), "--warmup_windows", str(args.warmup_windows),
            "--threads", str(args.threads), "--seed", str(args.seed), "--probe_train_images", args.probe_train_images,
            "--probe_test_images", args.probe_test_images,
            *(["--backbone_config", args.backbone_config] if args.backbone_config else []),
        ]  # fmt: skip
        run_process(command, args, "lightly simclr loop")
        return json.loads(result.read_text())


def lightly_transform(config: SimCLRConfig):
    """lightly's SimCLRTransform with the preset's (two equal) view recipes; its default normalisation is
    ImageNet's mean and std, as fmkit's."""
    from lightly.transforms import SimCLRTransform

    recipe, *others = VIEW_PRESETS[config.views]
    if any(other != recipe for other in others) or recipe.solarize_probability or recipe.crop_scale[1] != 1.0:
        raise SystemExit(f"views {config.views!r} do not map onto lightly's SimCLRTransform")
    return SimCLRTransform(
        input_size=config.image_size, cj_prob=recipe.jitter_probability, cj_strength=1.0,
        cj_bright=recipe.brightness, cj_contrast=recipe.contrast, cj_sat=recipe.saturation, cj_hue=recipe.hue,
        min_scale=recipe.crop_scale[0], random_gray_scale=recipe.grayscale_probability,
        gaussian_blur=recipe.blur_probability, sigmas=recipe.blur_sigma, hf_prob=recipe.flip_probability,
    )  # fmt: skip


class PILImages(torch.utils.data.Dataset):
    """The cached uint8 array as a lightly user's dataset yields it: one PIL image at a time, transformed."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index]))


def epochs(loader: torch.utils.data.DataLoader):
    """Batches epoch after epoch (a fresh shuffle each), as a user's `for epoch ...: for batch in loader`."""
    while True:
        yield from loader


def plain_worker(args: argparse.Namespace) -> None:
    """Model and probe from the SimCLR task (trainer's seed order), then lightly's loop and the same probe."""
    from lightly.loss import NTXentLoss
    from transformers import get_cosine_schedule_with_warmup

    torch.set_num_threads(args.threads)
    config = preset_config(args)
    set_seed(config.seed)
    accelerator = Accelerator(cpu=True)
    task = SimCLR(config)
    model = task.setup(accelerator)
    set_seed(config.seed)
    dataset = PILImages(task.train_images.images[task.train_index], lightly_transform(config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.per_device_batch_size, shuffle=True,
                                         drop_last=True, num_workers=config.num_workers)  # fmt: skip
    criterion = NTXentLoss(temperature=config.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, args.steps)
    model.train()
    step_ends, data_seconds, batches = [], [], epochs(loader)
    for _ in range(args.steps):
        waited = time.perf_counter()
        first, second = next(batches)
        data_seconds.append(time.perf_counter() - waited)
        projections = model(torch.cat([first, second]))
        loss = criterion(*projections.chunk(2))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(time.perf_counter())
    first_timed = args.warmup_windows * args.log_every
    window_ends = step_ends[first_timed - 1 :: args.log_every]
    result = summarize(np.diff(window_ends).tolist(), args.log_every * config.per_device_batch_size,
                       sum(data_seconds[first_timed:]))  # fmt: skip
    probe = task.probe.metrics(model.backbone, accelerator)
    args.out.write_text(json.dumps({**result, **probe_numbers({**probe, **task.random_backbone_metrics})}))


# ---------------------------------------------------------------------------------------------- report

TABLE_HEADER = (
    "| run (seed) | fmkit img/s | lightly img/s | fmkit / lightly | data wait fmkit / lightly | kNN fmkit / lightly "
    "(random) | load after fmkit / lightly |\n|---|---|---|---|---|---|---|"
)


def table_row(run: dict) -> str:
    fmkit, plain = run["fmkit"], run["lightly"]
    cells = [
        f"{run['repeat'] + 1} ({run['seed']})", f"{fmkit['images_per_s']:.1f}", f"{plain['images_per_s']:.1f}",
        f"{run['ratio']:.2f}x",
        f"{fmkit['data_wait_fraction']:.1%} / {plain['data_wait_fraction']:.1%}",
        f"{fmkit['knn_accuracy']:.3f} / {plain['knn_accuracy']:.3f} ({fmkit['knn_accuracy_random_backbone']:.3f})",
        f"{fmkit['load_1min']:.1f} / {plain['load_1min']:.1f}",
    ]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.warmup_windows < 1 or args.steps % args.log_every or args.steps <= args.warmup_windows * args.log_every:
        raise SystemExit("--steps must be a multiple of --log_every with at least one window after --warmup_windows")
    if args.plain_worker:
        plain_worker(args)
        return
    batch_size = preset_config(args).per_device_batch_size
    backbone = f", backbone_config {args.backbone_config}" if args.backbone_config else ""
    print(f"SimCLR demo preset{backbone}, batch {batch_size}, {args.steps} steps, {args.threads} thread(s)\n")
    print(TABLE_HEADER, flush=True)
    runs = []
    for repeat in range(args.repeats):
        seeded = argparse.Namespace(**{**vars(args), "seed": args.seed + repeat})
        fmkit = {**run_fmkit(seeded, batch_size), "load_1min": os.getloadavg()[0]}
        plain = {**run_plain(seeded), "load_1min": os.getloadavg()[0]}
        runs.append({"repeat": repeat, "seed": seeded.seed, "fmkit": fmkit, "lightly": plain,
                     "ratio": fmkit["images_per_s"] / plain["images_per_s"]})  # fmt: skip
        print(table_row(runs[-1]), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plain_worker")}
    save_report({"settings": settings, "machine": machine(), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
