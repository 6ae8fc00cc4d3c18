"""recipes/evaluate.py: a saved model's numbers without training it, equal to what its training run logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import RECIPES, read_metrics, reset_accelerate, run_recipe
from transformers import PretrainedConfig, ResNetConfig

from fmkit.cli import preset_path
from fmkit.errors import ConfigError
from fmkit.evaluate import head_to_data_classes, main
from fmkit.tasks import selector

CONFIGS = RECIPES / "configs"
DIGITS = ["--probe_train_images", "embedded:digits:train", "--probe_test_images", "embedded:digits:test"]
PROBES = ["linear_probe_accuracy", "knn_accuracy", "few_shot_accuracy"]
PROBES_AND_BASELINES = PROBES + [f"{name}_random_backbone" for name in PROBES]


def debug_run(recipe: str, out: Path, *args: str, task: str | None = None) -> Path:
    """Two steps of a task's debug preset, evaluated once at the end."""
    name = task or recipe
    presets = [str(preset_path(CONFIGS, recipe, name, kind)) for kind in ("demo", "debug")]
    flags = ["--output_dir", str(out), "--max_steps", "2", "--eval_every", "0", "--save_every", "0", *map(str, args)]
    selected = [f"--{selector(recipe) or 'task'}", task] if task else []
    run_recipe([*selected, "--config", presets[0], "--config", presets[1], *flags], recipe=f"{recipe}.py")
    return out


def evaluate(*args: str, capsys) -> tuple[int, dict, str, str]:
    """main() in this process: (exit status, the metrics it printed, stdout, stderr)."""
    try:
        status = main([str(arg) for arg in args])
    finally:
        reset_accelerate()
    out, err = capsys.readouterr()
    printed = dict(line.rsplit(" ", 1) for line in out.splitlines())
    return status, {name: float(value) for name, value in printed.items()}, out, err


def final_eval(output_dir: Path) -> dict:
    return read_metrics(output_dir)[-1]


@pytest.mark.parametrize(("recipe", "task"), [("pretext", "rotation"), ("contrastive", "cmc")])
def test_backbone_reports_the_probes_and_random_backbone_its_run_logged(tmp_path, capsys, recipe, task):
    """CMC's export is a 1-channel L encoder: evaluated with the lightness its processor makes, as it trained."""
    backbone_run = debug_run(recipe, tmp_path / task, task=task)
    status, printed, _, _ = evaluate(backbone_run, *DIGITS, "--batch_size", 8, capsys=capsys)
    assert status == 0
    assert list(printed) == PROBES_AND_BASELINES
    logged = final_eval(backbone_run)
    saved = json.loads((backbone_run / "evaluation.json").read_text())
    assert saved["kind"] == "vision backbone" and "embedded:digits:test" in saved["data"]
    for name in PROBES_AND_BASELINES:
        assert 0.0 <= saved["metrics"][name] <= 1.0
        # The same probe set, pixels, seed and random-init copy as the run's own evaluation: the same numbers.
        assert saved["metrics"][name] == pytest.approx(logged[name], abs=1e-9), name


def test_clip_reports_zero_shot_beside_chance_and_its_image_towers_probes(tmp_path, capsys):
    run = debug_run("clip", tmp_path / "clip")
    out_json = tmp_path / "clip.json"
    status, printed, _, _ = evaluate(run, *DIGITS, "--output_json", out_json, capsys=capsys)
    assert status == 0
    logged = final_eval(run)
    assert set(printed) == {"zero_shot_top1", "zero_shot_top5", "zero_shot_top1_chance", "zero_shot_top5_chance",
                            *PROBES_AND_BASELINES}  # fmt: skip
    assert printed["zero_shot_top1_chance"] == 0.1
    # The CLIP task scored the same 500 held-out digits with the same prompts (pixels normalised in another order).
    assert abs(printed["zero_shot_top1"] - logged["zero_shot_top1"]) <= 2 / 500
    assert json.loads(out_json.read_text())["metrics"]["zero_shot_top5"] == pytest.approx(printed["zero_shot_top5"],
                                                                                          abs=1e-4)  # fmt: skip
    assert all(0.0 <= printed[name] <= 1.0 for name in PROBES_AND_BASELINES)


@pytest.mark.parametrize(
    ("recipe", "baselines"),
    [("mlm", ["eval_accuracy", "eval_accuracy_unigram"]), ("clm", ["eval_loss_unigram", "eval_perplexity_unigram"])],
)
def test_language_model_reports_held_out_perplexity_and_the_unigram_baseline_its_run_logged(
    recipe, baselines, tmp_path, text_files, capsys
):
    train, held_out = text_files
    run = debug_run(recipe, tmp_path / recipe, "--train_files", train, "--eval_files", held_out, "--eval_batches", "0")
    status, printed, _, _ = evaluate(run, "--batch_size", 8, capsys=capsys)
    assert status == 0
    assert list(printed) == ["eval_loss", "eval_perplexity", *baselines]
    logged = final_eval(run)
    assert printed["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-4)
    assert printed["eval_perplexity"] == pytest.approx(math.exp(logged["eval_loss"]), rel=1e-3)
    unigram = baselines[1] if recipe == "mlm" else baselines[0]
    assert logged[unigram] > 0.0
    assert printed[unigram] == pytest.approx(logged[unigram], abs=1e-4)  # printed with 4 decimals


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{tmp}/missing", "no such folder"),
        ("{tmp}/empty", "no config.json in this folder"),
        ("{tmp}/speech", "model_type 'wav2vec2'"),
        ("{tmp}/resnet", "cannot load its image processor"),
    ],
)
def test_bad_model_is_one_line_and_exit_status_2(model, expected, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "speech").mkdir()
    (tmp_path / "speech" / "config.json").write_text(
        json.dumps({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]})
    )
    ResNetConfig().save_pretrained(tmp_path / "resnet")  # a backbone's config without its image processor
    status, printed, out, err = evaluate(model.format(tmp=tmp_path), capsys=capsys)
    assert status == 2 and not out
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and expected in lines[0], err
    if "speech" in model:
        assert "vision backbone" in lines[0] and "ForMaskedLM" in lines[0] and "CLIPModel" in lines[0]


def test_a_classifiers_outputs_map_to_the_datas_classes_by_their_saved_names():
    """A classifier trained with its labels in another order is scored by name, not by position."""
    named = PretrainedConfig(id2label={0: "numpy", 1: "stdlib", 2: "pandas"})
    assert head_to_data_classes("m", named, ["pandas", "numpy", "stdlib"]).tolist() == [1, 2, 0]
    unnamed = PretrainedConfig(num_labels=3)
    assert head_to_data_classes("m", unnamed, ["pandas", "numpy", "stdlib"]).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"m: its labels \['numpy', 'stdlib', 'pandas'\] are not the data's"):
        head_to_data_classes("m", named, ["numpy", "stdlib", "pip"])
