"""recipes/finetune.py: adapters, best-checkpoint selection, exports that plain transformers / peft load and that
reproduce the logged accuracy, the scratch comparison and label sweep, exact resume, and one-line errors.

The models adapted here are tiny debug runs of the MLM, CLM and rotation recipes (seconds); that pretraining
helps (the demo beats scratch) is measured over seeds in benchmarks/finetune_seeds.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, assert_one_line_error, read_metrics, reset_accelerate, run_recipe, train_losses
from safetensors.torch import load_file

from fmkit.cli import preset_path
from fmkit.data.corpus import python_docs_corpus
from fmkit.evaluate import main as evaluate_main
from fmkit.tasks.finetune.text import library_of

CONFIGS = RECIPES / "configs"


def preset(recipe: str, task: str) -> list[str]:
    return ["--config", str(preset_path(CONFIGS, recipe, task)), "--config", str(preset_path(CONFIGS, recipe, task,
            "debug"))]  # fmt: skip


def finetune(task: str, out: Path, *args: str, check: bool = True):
    return run_recipe(["--task", task, *preset("finetune", task), "--output_dir", str(out), *args],
                      recipe="finetune.py", check=check)  # fmt: skip


@pytest.fixture(scope="module")
def mlm_model(tmp_path_factory, text_files) -> Path:
    out = tmp_path_factory.mktemp("mlm") / "run"
    run_recipe([*preset("mlm", "mlm"), "--train_files", str(text_files[0]), "--eval_files", str(text_files[1]),
                "--output_dir", str(out), "--max_steps", "4", "--eval_every", "0", "--save_every", "0"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A tiny ResNet (with BatchNorm) from a rotation debug run: what the image task adapts."""
    out = tmp_path_factory.mktemp("rotation") / "run"
    run_recipe(["--task", "rotation", *preset("pretext", "rotation"), "--output_dir", str(out), "--max_steps", "4",
                "--eval_every", "0", "--save_every", "0"], recipe="pretext.py")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory) -> dict[str, Path]:
    """Docstrings of 4 libraries labelled with their library, as local JSONL: 120 each for training, 40 for test."""
    corpus = python_docs_corpus()
    stdlib = frozenset(sys.stdlib_module_names)
    folder = tmp_path_factory.mktemp("labelled")
    files = {}
    for split, path, per_class in (("train", corpus.train, 120), ("test", corpus.test, 40)):
        rows, counts = [], dict.fromkeys(("stdlib", "pandas", "numpy", "pip"), 0)
        for line in path.read_text(encoding="utf-8").splitlines():
            document = json.loads(line)
            library = library_of(document["source"], stdlib)
            if counts.get(library, per_class) < per_class:
                counts[library] += 1
                rows.append({"text": document["text"], "label": library})
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return files


def text_args(model: Path, files: dict[str, Path], *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--train_files", str(files["train"]), "--test_files",
            str(files["test"]), "--eval_batches", "0", *extra]  # fmt: skip


def final(out: Path) -> dict:
    return {k: v for m in read_metrics(out) for k, v in m.items() if k.startswith("test_")}


FRESH_PIPELINES = """
import json, sys
import numpy as np
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForSequenceClassification, pipeline

text_run, base, texts, labels, image_run, images, image_labels = json.loads(open(sys.argv[1]).read())
classify = pipeline("text-classification", model=text_run)
answers = [a["label"] for a in classify(texts, truncation=True, batch_size=16)]
report = {"text_accuracy": float(np.mean([a == t for a, t in zip(answers, labels)]))}
merged = AutoModelForSequenceClassification.from_pretrained(text_run).eval()
unmerged = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
    num_labels=merged.config.num_labels), text_run + "/adapter").eval()
batch = classify.tokenizer(texts[:8], truncation=True, padding=True, return_tensors="pt")
with torch.no_grad():
    report["merged_vs_adapter"] = float((merged(**batch).logits - unmerged(**batch).logits).abs().max())
classify_images = pipeline("image-classification", model=image_run)
pictures = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
answers = [a[0]["label"] for a in classify_images(pictures, batch_size=32)]
report["image_accuracy"] = float(np.mean([a == t for a, t in zip(answers, image_labels)]))
print(json.dumps(report))
"""


def test_exports_reproduce_the_logged_test_accuracy_in_a_fresh_process(tmp_path, mlm_model, labelled_files, backbone):
    """LoRA on text (merged at the root, adapter in adapter/, gradient checkpointing on) and a linear probe on
    images: plain `pipeline(...)` on the test split gives the accuracy the run logged, as does recipes/evaluate.py,
    and the merged model's outputs are the adapter's on its base model."""
    text_run, image_run = tmp_path / "text", tmp_path / "image"
    unlabelled = tmp_path / "unlabelled.txt"
    rows = [json.loads(line) for line in labelled_files["test"].read_text().splitlines()]
    unlabelled.write_text("".join(row["text"].replace("\n", " ") + "\n" for row in rows[:5]))
    finetune("text-classification", text_run, *text_args(mlm_model, labelled_files, "--adapter", "lora",
             "--gradient_checkpointing", "true", "--max_steps", "12", "--learning_rate", "5e-3",
             "--do_predict", str(unlabelled)))  # fmt: skip
    finetune("image-classification", image_run, "--model_name_or_path", str(backbone), "--adapter", "linear",
             "--eval_batches", "0", "--label_fraction", "1", "--max_steps", "30",
             "--learning_rate", "3e-2")  # fmt: skip
    from fmkit.data.image_array import load_image_array

    test_images = load_image_array(["embedded:digits:test"], 36, labelled=True)
    payload = [str(text_run), str(mlm_model), [r["text"] for r in rows], [r["label"] for r in rows], str(image_run),
               test_images.images.tolist(), [test_images.class_names[i] for i in test_images.labels]]  # fmt: skip
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    result = subprocess.run([sys.executable, "-c", FRESH_PIPELINES, str(tmp_path / "payload.json")],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["text_accuracy"] == pytest.approx(final(text_run)["test_accuracy"], abs=1e-9)
    assert report["image_accuracy"] == pytest.approx(final(image_run)["test_accuracy"], abs=1e-9)
    assert report["merged_vs_adapter"] < 1e-5
    assert final(image_run)["test_accuracy"] > 2 * final(image_run)["test_accuracy_majority"], final(image_run)
    for run in (text_run, image_run):
        card = (run / "README.md").read_text()
        assert "base_model: " in card and "Per-class results (test split)" in card
        assert (run / "confusion_matrix.png").stat().st_size > 1000
    assert (text_run / "adapter" / "adapter_config.json").is_file()
    predictions = [json.loads(line) for line in (text_run / "predictions.jsonl").read_text().splitlines()]
    assert [p["input"] for p in predictions] == unlabelled.read_text().splitlines()
    assert all(p["label"] in {"stdlib", "pandas", "numpy", "pip"} and 0 < p["score"] <= 1 for p in predictions)
    for run in (text_run, image_run):  # recipes/evaluate.py scores the export on the run's own test split
        try:
            assert evaluate_main([str(run), "--output_json", str(tmp_path / f"{run.name}.json")]) == 0
        finally:
            reset_accelerate()
        scored = json.loads((tmp_path / f"{run.name}.json").read_text())["metrics"]
        for name in ("test_accuracy", "test_macro_f1", "test_accuracy_majority"):
            assert scored[name] == pytest.approx(final(run)[name], abs=1e-9), (run.name, name)


def test_the_linear_probe_leaves_every_backbone_weight_and_batchnorm_statistic_as_pretrained(tmp_path, backbone):
    out = tmp_path / "linear"
    finetune("image-classification", out, "--model_name_or_path", str(backbone), "--adapter", "linear",
             "--max_steps", "6", "--learning_rate", "1e-2")  # fmt: skip
    pretrained, adapted = load_file(backbone / "model.safetensors"), load_file(out / "model.safetensors")
    backbone_keys = {k for k in adapted if not k.startswith("classifier.")}
    assert any("running_mean" in k for k in backbone_keys)
    assert {k.removeprefix("resnet.") for k in backbone_keys} == set(pretrained)
    for key in backbone_keys:
        assert torch.equal(adapted[key], pretrained[key.removeprefix("resnet.")]), key


def test_resumes_exactly_with_the_best_checkpoint(tmp_path, mlm_model, labelled_files):
    """Steps 5-8 resumed from the step-4 checkpoint: the same losses, the same best evaluation, the same test score."""
    args = text_args(mlm_model, labelled_files, "--max_steps", "8", "--save_every", "4", "--eval_every", "4",
                     "--log_every", "1")  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finetune("text-classification", straight, *args)
    finetune("text-classification", resumed, *args, "--resume_from_checkpoint", str(straight / "checkpoints" /
             "step_4"))  # fmt: skip
    assert train_losses(resumed) == {step: loss for step, loss in train_losses(straight).items() if step > 4}
    assert final(resumed) == final(straight)
    one, other = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(one[key], other[key]) for key in one)


def test_label_sweep_with_scratch_twins_writes_the_curve_and_resumes_by_skipping_finished_runs(tmp_path, backbone):
    out = tmp_path / "sweep"
    args = ["--model_name_or_path", str(backbone), "--label_fractions", "[0.2, 1.0]", "--compare_scratch", "true",
            "--max_steps", "6", "--eval_every", "3"]  # fmt: skip
    finetune("image-classification", out, *args)
    table = (out / "label_efficiency.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| 0.2 | ") and table[3].startswith("| 1 | ")
    assert "-" not in [cell.strip() for cell in table[2].split("|")[3:5]] and (out / "label_efficiency.png").is_file()
    for fraction in ("0.2", "1"):
        run = out / f"labels_{fraction}"
        assert "test_accuracy_scratch" in final(run) and (run / "scratch" / "config.json").is_file()
        assert any("eval_accuracy_scratch" in m for m in read_metrics(run))
    rows = json.loads((out / "label_efficiency.json").read_text())
    assert rows[0]["training_examples"] < rows[1]["training_examples"]
    stamp = (out / "labels_0.2" / "model.safetensors").stat().st_mtime_ns
    finetune("image-classification", out, *args, "--resume_from_checkpoint", "latest")
    assert (out / "labels_0.2" / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_model_without_a_pad_token_gets_its_own_and_pools_the_last_real_token(tmp_path, text_files,
                                                                                labelled_files):  # fmt: skip
    """GPT-2-style: padding with end-of-text would hide a real end-of-text from the last-token pooling. With the
    added pad token, a padded batch gives each text the logits it gets alone, end-of-text included."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    clm = tmp_path / "clm"
    run_recipe([*preset("clm", "clm"), "--train_files", str(text_files[0]), "--eval_files", str(text_files[1]),
                "--output_dir", str(clm), "--max_steps", "2", "--eval_every", "0", "--save_every", "0"],
               recipe="clm.py")  # fmt: skip
    assert AutoTokenizer.from_pretrained(clm).pad_token is None
    out = tmp_path / "classifier"
    finetune("text-classification", out, *text_args(clm, labelled_files, "--max_steps", "2"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert tokenizer.pad_token == "<|pad|>" and model.config.pad_token_id not in (None, tokenizer.eos_token_id)
    texts = ["Return the sum of the values.", f"Split a string.{tokenizer.eos_token}", "Read a file, line by line."]
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts])
        together = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert torch.allclose(alone, together, atol=1e-5)


def test_a_dataset_by_name_with_class_labels_and_text_pairs(tmp_path, mlm_model):
    """A GLUE-shaped dataset (sentence pairs, a ClassLabel column, named splits) read by name: the label names are
    the ClassLabel's, and the named validation split is used, not carved out of training."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "verdict": ClassLabel(names=["entailment", "contradiction"])})  # fmt: skip
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, count in (("train", 40), ("validation", 10), ("test", 10)):
        rows = {"premise": [f"The value is {i}." for i in range(count)],
                "hypothesis": [f"The value is {i + i % 2}." for i in range(count)],
                "verdict": [i % 2 for i in range(count)]}  # fmt: skip
        Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")
    out = tmp_path / "run"
    finetune("text-classification", out, "--model_name_or_path", str(mlm_model), "--dataset_name", str(folder),
             "--validation_split", "validation", "--text_column", "premise", "--text_pair_column", "hypothesis",
             "--label_column", "verdict", "--max_steps", "2")  # fmt: skip
    labels = json.loads((out / "labels.json").read_text())
    assert labels["class_names"] == ["contradiction", "entailment"] and labels["training_examples"] == 40
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["contradiction", "entailment"]


def test_a_clip_model_is_fine_tuned_as_its_vision_tower_beside_its_own_zero_shot_accuracy(tmp_path):
    from transformers import AutoModelForImageClassification

    clip = tmp_path / "clip"
    run_recipe([*preset("clip", "clip"), "--output_dir", str(clip), "--max_steps", "2", "--eval_every", "0",
                "--save_every", "0"], recipe="clip.py")  # fmt: skip
    out = tmp_path / "run"
    finetune("image-classification", out, "--model_name_or_path", str(clip), "--adapter", "linear",
             "--label_fraction", "1", "--max_steps", "30", "--learning_rate", "3e-2",
             "--eval_batches", "0")  # fmt: skip
    scores = final(out)
    assert 0 < scores["test_accuracy_zero_shot"] < 0.3  # two steps of CLIP: near chance (0.1)
    assert scores["test_accuracy"] > scores["test_accuracy_zero_shot"] + 0.1, scores
    assert any("eval_accuracy_zero_shot" in m for m in read_metrics(out))
    assert type(AutoModelForImageClassification.from_pretrained(out)).__name__ == "CLIPForImageClassification"


def test_bad_input_is_one_line(tmp_path, mlm_model, labelled_files, monkeypatch):
    no_label = tmp_path / "no_label.jsonl"
    no_label.write_text(json.dumps({"text": "a docstring", "library": "numpy"}) + "\n")
    result = finetune("text-classification", tmp_path / "a", *text_args(mlm_model, {**labelled_files,
                      "train": no_label}), check=False)  # fmt: skip
    assert_one_line_error(result, "no label column 'label'; its columns are text, library")

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text(json.dumps({"text": "a docstring", "label": "cobol"}) + "\n")
    result = finetune("text-classification", tmp_path / "b", *text_args(mlm_model, {**labelled_files,
                      "test": unseen}), check=False)  # fmt: skip
    assert_one_line_error(result, "labels not in the training split: cobol")

    result = finetune("text-classification", tmp_path / "c", *text_args(mlm_model, labelled_files, "--adapter", "lora",
                      "--lora_target_modules", "[q_proj]"), check=False)  # fmt: skip
    assert_one_line_error(result, "--lora_target_modules q_proj: no such linear, convolution or embedding module")
    assert "Wqkv" in result.stderr

    classifier = tmp_path / "four-classes"
    finetune("text-classification", classifier, *text_args(mlm_model, labelled_files, "--max_steps", "1"))
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps({"text": f"text {i}", "label": f"class {i % 2}"}) + "\n" for i in range(20)))
    result = finetune("text-classification", tmp_path / "d", "--model_name_or_path", str(classifier),
                      "--train_files", str(two), "--test_files", str(two), check=False)  # fmt: skip
    assert_one_line_error(result, "pass --ignore_mismatched_sizes true")

    from transformers import ResNetConfig, ResNetModel

    two_channels = tmp_path / "two-channels"  # CMC's ab encoder would be one: no processor makes its input
    ResNetModel(ResNetConfig(num_channels=2, embedding_size=8, hidden_sizes=[8], depths=[1])).save_pretrained(
        two_channels
    )
    result = finetune("image-classification", tmp_path / "f", "--model_name_or_path", str(two_channels), check=False)
    assert_one_line_error(result, f"{two_channels}: a 2-channel backbone with no image processor; image-classification")

    monkeypatch.chdir(tmp_path)
    result = run_recipe(["--output_dir", str(tmp_path / "e")], recipe="finetune.py", check=False)
    assert_one_line_error(result, "runs/mlm-demo: no model there yet; make it first with "
                          "`accelerate launch recipes/mlm.py`")  # fmt: skip


def test_layer_decay_and_the_head_multiplier_scale_each_parameters_learning_rate():
    """Block i of L trains at decay^(L - i), embeddings at decay^(L + 1), the head at head_lr_multiplier."""
    from transformers import BertConfig, BertForSequenceClassification

    from fmkit.optim import parameter_groups
    from fmkit.tasks import get_task
    from fmkit.tasks.finetune.adapters import layer_depths

    task_class = get_task("text-classification")
    task = task_class(task_class.config_class(model_name_or_path="x", layer_decay=0.5, head_lr_multiplier=10))
    config = BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=16, num_labels=3)  # fmt: skip
    model = BertForSequenceClassification(config)
    task.depths, task.top_depth = layer_depths([name for name, _ in model.named_parameters()])
    factor = task.lr_multiplier
    assert factor("bert.embeddings.word_embeddings.weight") == 0.5**4
    assert factor("bert.encoder.layer.0.attention.self.query.weight") == 0.5**3
    assert factor("bert.encoder.layer.2.output.dense.weight") == 0.5
    assert factor("bert.pooler.dense.weight") == 1.0
    assert factor("classifier.weight") == 10.0
    groups = parameter_groups(model, 0.01, factor)
    assert sorted({group["lr_multiplier"] for group in groups}) == [0.5**4, 0.5**3, 0.5**2, 0.5, 1.0, 10.0]
