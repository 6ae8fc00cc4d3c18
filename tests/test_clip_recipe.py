"""recipes/clip.py end to end: learning, export to transformers and open_clip, LiT, exact resume, accumulation."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from conftest import RECIPES, TINY_CLIP, TINY_CLIP_TEXT, TINY_CLIP_VISION, TINY_OPEN_CLIP, read_metrics, train_losses
from conftest import run_recipe as run_recipe_in_subprocess
from PIL import Image

from fmkit.cli import run_recipe
from fmkit.data.embedded_pairs import DIGIT_WORDS


def clip(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_recipe_in_subprocess(args, recipe="clip.py", **kwargs)


def in_fresh_process(check: str, *args) -> dict:
    """Run a function of tests/clip_fresh_checks.py in a new interpreter; it prints one JSON object."""
    command = [sys.executable, str(Path(__file__).with_name("clip_fresh_checks.py")), check, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def pair_shards(tmp_path_factory):
    """72 digit images with captions in three WebDataset shards (.png + .txt, and .jpg + .json)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("pairs")
    for shard in range(3):
        with webdataset.TarWriter(str(folder / f"pairs-{shard:05d}.tar")) as sink:
            for i in range(shard * 24, shard * 24 + 24):
                pixels = np.repeat(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)[..., None], 3, axis=2)
                buffer = io.BytesIO()
                Image.fromarray(pixels).resize((20, 20)).save(buffer, format="PNG" if i % 2 else "JPEG")
                caption = f"a handwritten {digits.target[i]}"
                member = {"png": buffer.getvalue(), "txt": caption} if i % 2 else {
                    "jpg": buffer.getvalue(), "json": json.dumps({"caption": caption}).encode()}  # fmt: skip
                sink.write({"__key__": f"{i:04d}", **member})
    return folder


@pytest.fixture(scope="module")
def shards_with_bad_images(tmp_path_factory, pair_shards):
    """The 72 pairs plus a shard of 8 whose every other image does not decode: 4 bad records, found only when a
    batch reads them (skipped, counted, replaced by the next good pair)."""
    folder = tmp_path_factory.mktemp("bad-pairs")
    for shard in pair_shards.iterdir():
        shutil.copy(shard, folder / shard.name)
    with webdataset.TarWriter(str(folder / "pairs-00003.tar")) as sink:
        for i in range(8):
            buffer = io.BytesIO()
            Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(buffer, format="PNG")
            image = buffer.getvalue() if i % 2 else b"not an image"
            sink.write({"__key__": f"bad{i}", "png": image, "txt": "a red square"})
    return folder


def shard_run(shards, out, steps: int, *extra: str) -> list[str]:
    return ["--train_data", str(shards), "--held_out_pairs", "16", *TINY_CLIP, "--output_dir", str(out),
            "--per_device_batch_size", "8", "--max_steps", str(steps), "--eval_every", "4", "--save_every", "3",
            *extra]  # fmt: skip


def test_mid_epoch_resume_on_shards_is_exact_with_worker_processes(tmp_path, shards_with_bad_images):
    """64 training pairs are 8 batches an epoch: the checkpoint at step 3 is mid-epoch, and the run resumed
    from it (loading in 2 worker processes) continues with the same pairs, crops and losses, bit for bit, and
    with the count of bad pairs skipped before the checkpoint (task state)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    clip(shard_run(shards_with_bad_images, straight, 9, "--save_total_limit", "3"))
    middle = straight / "checkpoints" / "step_3"
    assert sum(torch.load(middle / "task_state_0.pt")["skipped_pairs"].values()) > 0
    clip(shard_run(shards_with_bad_images, resumed, 9, "--resume_from_checkpoint", str(middle), "--num_workers", "2"))
    assert sorted(train_losses(resumed)) == list(range(4, 10))
    assert train_losses(resumed) == {step: loss for step, loss in train_losses(straight).items() if step > 3}
    evals = [m for m in read_metrics(straight) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 4, 8, 9]
    assert [m for m in read_metrics(resumed) if "eval_loss" in m] == evals[1:]
    assert {"image_to_text_recall@1", "text_to_image_recall@10"} <= set(evals[-1]) and evals[-1]["skipped_pairs"] > 0


def test_accumulation_with_feature_caching_equals_the_big_batch(tmp_path, pair_shards):
    """2 micro-batches of 8 with cached features = 1 batch of 16 through the whole recipe: the same loss at
    every step, so the negatives come from both micro-batches and the updates agree (the exact gradients are
    checked in test_clip_model.py). 64 training pairs: both runs read the same epoch for all 4 steps."""
    big, accumulated = tmp_path / "big", tmp_path / "accumulated"
    common = ["--held_out_pairs", "8", "--save_every", "0"]
    clip(shard_run(pair_shards, big, 4, "--per_device_batch_size", "16", *common))
    clip(shard_run(pair_shards, accumulated, 4, "--gradient_accumulation_steps", "2", *common))
    one, two = train_losses(big), train_losses(accumulated)
    for step in range(1, 5):
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    assert read_metrics(accumulated)[-1]["eval_loss"] == pytest.approx(read_metrics(big)[-1]["eval_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip") / "tiny-vit.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    return path


def test_open_clip_architecture_is_saved_in_both_layouts_with_equal_embeddings(tmp_path, pair_shards, tiny_open_clip):
    out = tmp_path / "open_clip"
    clip(shard_run(pair_shards, out, 3, "--model", f"open_clip:{tiny_open_clip}", "--save_every", "0"))
    assert (out / "open_clip_config.json").is_file() and (out / "config.json").is_file()
    image = tmp_path / "probe.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image)
    diff = in_fresh_process("both_layouts", out, image)
    assert diff["norm"] > 0.1
    assert diff["image"] < 1e-5 and diff["text"] < 1e-5 and diff["scale"] < 1e-6
    assert diff["preprocess"] < 0.05 * diff["norm"]  # each library's own preprocessing: within 8-bit rounding


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """A CLIPModel folder to initialise towers from (random weights: what matters is that they are kept)."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("donor")
    config = CLIPConfig(vision_config=TINY_CLIP_VISION, text_config=TINY_CLIP_TEXT, projection_dim=32)
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_lit_locks_an_image_tower_loaded_from_a_pretrained_folder(tmp_path, pair_shards, donor):
    """LiT: both towers start from the donor; the locked image tower leaves training exactly as it came."""
    out = tmp_path / "lit"
    clip(shard_run(pair_shards, out, 3, "--image_tower_from", str(donor), "--text_tower_from", str(donor),
                   "--lock_image", "true", "--save_every", "0", "--eval_every", "0"))  # fmt: skip
    from safetensors.torch import load_file

    before, after = load_file(donor / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [k for k in before if k.startswith(("vision_model.", "visual_projection."))]
    text = [k for k in before if k.startswith(("text_model.", "text_projection."))]
    assert vision and text
    assert all(torch.equal(before[k], after[k]) for k in vision)  # locked: exactly the donor's
    assert not all(torch.equal(before[k], after[k]) for k in text)  # initialised from the donor, then trained
    assert "locked, initialised from" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "open_clip:No-Such-Net"], "model open_clip:No-Such-Net: open_clip has no such model"),
        (["--train_data", "missing.csv"], "missing.csv: no such file"),
        (["--zero_shot_templates", '["a photo"]'], "each needs a {} for the class name"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, capsys, args, expected):
    """In this process (the entry point users run, minus interpreter start-up): exit status 2, one line."""
    with pytest.raises(SystemExit) as exit_info:
        run_recipe("clip", RECIPES / "configs", ["--output_dir", str(tmp_path), *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and expected in error, error


def test_demo_learns_zero_shot_and_exports_a_pipeline_ready_clip(tmp_path):
    """The demo preset as shipped (fewer steps); in a fresh process, plain transformers reproduces the logged
    zero-shot accuracy from the exported CLIPModel + CLIPProcessor, and the zero-shot pipeline runs on it."""
    out = tmp_path / "demo"
    clip(["--output_dir", str(out), "--max_steps", "100", "--eval_every", "100", "--report_to", "none"])
    evals = {m["step"]: m for m in read_metrics(out) if "zero_shot_top1" in m}
    assert sorted(evals) == [0, 100]
    assert evals[100]["zero_shot_top1"] > 0.25  # ten classes: chance is 0.1
    assert evals[100]["eval_loss"] < evals[0]["eval_loss"] - 0.3
    assert evals[100]["text_to_image_recall@10"] > evals[0]["text_to_image_recall@10"] + 0.1
    reloaded = in_fresh_process("demo_zero_shot", out)
    assert reloaded["accuracy"] == pytest.approx(evals[100]["zero_shot_top1"], abs=0.01)
    assert reloaded["labels"] == sorted(DIGIT_WORDS)
    assert reloaded["total"] == pytest.approx(1.0, abs=1e-4)
    card = (out / "README.md").read_text()
    assert "zero-shot-image-classification" in card and "zero_shot_top1" in card
