"""Every registered task, from the registry: presets, documented options, two steps, an export that reloads.

A new objective registered in fmkit.tasks.BUILTIN gets this coverage without a line of test code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, run_recipe

from fmkit.cli import preset_path
from fmkit.config import build_parser
from fmkit.tasks import BUILTIN, get_task, register_task, selector, task_names

CONFIGS = RECIPES / "configs"
FINETUNED_FROM = {"text-classification": "mlm", "image-classification": "rotation"}
"""The debug run whose export each downstream task adapts (the registry lists it earlier)."""

RELOAD = """
import json, sys
import torch
from transformers import (AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoModelForImageClassification,
                          AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer)
from PIL import Image

LOADERS = {"fill-mask": AutoModelForMaskedLM, "text-generation": AutoModelForCausalLM,
           "zero-shot-image-classification": AutoModel, "image-feature-extraction": AutoModel,
           "text-classification": AutoModelForSequenceClassification,
           "image-classification": AutoModelForImageClassification}
report = {}
for name, folder in json.loads(sys.argv[1]).items():
    tag = open(folder + "/README.md").read().split("pipeline_tag: ")[1].split()[0]
    model, info = LOADERS[tag].from_pretrained(folder, output_loading_info=True)
    image = Image.new("RGB", (40, 40), (200, 30, 90))
    with torch.no_grad():
        if tag in ("fill-mask", "text-generation", "text-classification"):
            out = model(**AutoTokenizer.from_pretrained(folder)("The quick brown fox", return_tensors="pt")).logits
        elif tag == "image-classification":
            out = model(**AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")).logits
        elif tag == "image-feature-extraction":  # CMC's L encoder comes with its own processor's code
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            out = model(**processor(image, return_tensors="pt")).last_hidden_state
        else:
            out = model.get_image_features(**AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt"))
            out = getattr(out, "pooler_output", out)
    report[name] = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                    "finite": bool(torch.isfinite(out).all()), "class": type(model).__name__}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory, text_files) -> dict[str, Path]:
    """Each task's debug preset, 2 steps, in this process; its output folder (or the error of a failed run).

    Text tasks read the session's small text files instead of the whole embedded corpus: the same code path,
    and their tokenizers are then the ones the other text tests train (cached), not two more."""
    root = tmp_path_factory.mktemp("registry")
    folders = {}
    for name in task_names():
        recipe = BUILTIN[name].recipe
        out = root / name
        args = ["--config", str(preset_path(CONFIGS, recipe, name)), "--config",
                str(preset_path(CONFIGS, recipe, name, "debug")), "--output_dir", str(out), "--max_steps", "2",
                "--eval_every", "0", "--save_every", "0"]  # fmt: skip
        if selector(recipe):
            args = [f"--{selector(recipe)}", name, *args]
        if recipe in ("mlm", "clm"):
            args += ["--train_files", str(text_files[0]), "--eval_files", str(text_files[1])]
        if name in FINETUNED_FROM:
            args += ["--model_name_or_path", str(folders[FINETUNED_FROM[name]])]
        result = run_recipe(args, recipe=f"{recipe}.py", check=False)
        folders[name] = out if result.returncode == 0 else result.stderr[-3000:]
    return folders


@pytest.mark.parametrize("name", task_names())
def test_task_has_presets_documented_options_and_trains_and_exports(name, exports):
    recipe = BUILTIN[name].recipe
    demo, debug = preset_path(CONFIGS, recipe, name), preset_path(CONFIGS, recipe, name, "debug")
    options = [a for a in build_parser(get_task(name).config_class, name)._actions if a.dest not in ("help", "config")]
    for preset in (demo, debug):
        assert preset.is_file(), preset
        unknown = set(yaml.safe_load(preset.read_text())) - {a.dest for a in options}
        assert not unknown, f"{preset}: keys {unknown} are not options of {name}"
    undocumented = [a.dest for a in options if not a.help]
    assert not undocumented, f"options of {name} without a docstring (they show no --help): {undocumented}"
    out = exports[name]
    assert isinstance(out, Path), f"{name}'s debug run failed:\n{out}"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    assert (out / "config.json").is_file() and (out / "README.md").is_file() and (out / "curves.png").is_file()


def test_every_export_reloads_in_one_fresh_process_with_plain_transformers(exports):
    folders = {name: str(out) for name, out in exports.items() if isinstance(out, Path)}
    assert set(folders) == set(task_names()), "a debug run failed: see its test above"
    result = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(folders)], capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    for name, loaded in report.items():
        # ViTs are trained and saved without their pooler (fmkit.models.backbone): only that may be missing.
        vit = loaded["class"] == "ViTModel"
        missing = [key for key in loaded["missing"] if not (vit and key.startswith("pooler."))]
        assert not missing and not loaded["unexpected"] and loaded["finite"], (name, loaded)


def test_listing_tasks_imports_none_and_a_run_imports_only_its_family():
    """Also: the trainer leaves matplotlib (curves.png) to the end of a run, and timm (LARS) to the runs using it."""
    heavy = ("fmkit.tasks.mlm", "fmkit.tasks.clip", "open_clip", "sklearn", "timm", "matplotlib")
    probe = (
        "import sys; from fmkit.tasks import get_task, task_names; names = task_names(); "
        f"heavy = lambda: sorted(m for m in {heavy} if m in sys.modules); "
        "before = heavy(); import fmkit.cli; get_task('mlm'); print(before, heavy())"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == "[] ['fmkit.tasks.mlm']"


def test_a_second_task_with_a_taken_name_is_refused():
    existing = get_task("rotation")
    impostor = type("Rotation", (existing,), {"__module__": "someone.elses.module"})
    with pytest.raises(ValueError, match="task name 'rotation' is taken by fmkit.tasks.pretext.rotation.Rotation"):
        register_task(impostor)
    assert get_task("rotation") is existing
