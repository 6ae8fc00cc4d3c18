"""Real multi-process runs on CPU: `accelerate launch` with 2 processes, plain DDP and DeepSpeed ZeRO.

Every 2-process run of one configuration shares one launch (tests/launched_runs.py): a launch pays seconds of
interpreter start and imports per process before its first step. The 1-process references run in this process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    REPO,
    TINY_CLIP,
    TINY_MODEL,
    TINY_TRAINING,
    eval_losses,
    jsonl_texts,
    read_metrics,
    reset_accelerate,
    task_of_run,
    train_losses,
)
from conftest import run_recipe as run
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from fmkit.checkpoint import task_state_file
from fmkit.data.loader import Sharding
from fmkit.data.tokenizer import BERT_SPECIALS, train_tokenizer
from fmkit.tasks.contrastive.moco import MoCo, key_permutation

CONFIGS = REPO / "recipes" / "accelerate_configs"


@pytest.fixture(scope="module")
def initial_model(tmp_path_factory, text_files):
    """Every run starts from these saved weights: under ZeRO-3, transformers builds new models inside
    deepspeed.zero.Init (sharded from the start), so a from-scratch ZeRO-3 run draws different initial
    weights than a single process. Dropout is off: it draws different masks on every rank by design."""
    folder = tmp_path_factory.mktemp("initial")
    tokenizer = train_tokenizer(jsonl_texts(text_files[0]), "wordpiece", 512, BERT_SPECIALS)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=512, **json.loads(TINY_MODEL[1]), hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


def args(text_files, initial_model, out: Path | None, per_device_batch: int, steps: int = 12) -> list[str]:
    train, held_out = text_files
    return [
        "--train_files", str(train), "--eval_files", str(held_out), *TINY_TRAINING, *output_dir(out),
        "--model_name_or_path", str(initial_model), "--tokenizer_name_or_path", str(initial_model),
        "--per_device_batch_size", str(per_device_batch), "--max_steps", str(steps), "--log_every", "1",
        "--eval_every", str(steps), "--save_every", "0",
    ]  # fmt: skip


def output_dir(out: Path | None) -> list[str]:
    return [] if out is None else ["--output_dir", str(out)]


def learning_rates(output_dir) -> list[float]:
    return [m["lr"] for m in read_metrics(output_dir) if "lr" in m]


def launch(config: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--num_processes", "2", "--main_process_port", "0"]  # fmt: skip


@dataclass
class TwoProcessRun:
    recipe: str
    args: list[str]
    """Without --output_dir: each run gets its own folder."""


class Launches:
    """The 2-process runs of each configuration, all launched together the first time a test asks for one."""

    def __init__(self, root: Path, runs: dict[str, dict[str, TwoProcessRun]]):
        self.root, self.runs, self.launched = root, runs, set()

    def __call__(self, config: str, name: str) -> tuple[Path, dict]:
        """The run's output folder, and the main process's exit status, stdout and stderr."""
        folder = self.root / config.removesuffix(".yaml")
        if config not in self.launched:
            self.launched.add(config)
            folder.mkdir(parents=True)
            plan = [{"recipe": run.recipe, "args": [*run.args, "--output_dir", str(folder / key)],
                     "result": str(folder / f"{key}.json")} for key, run in self.runs[config].items()]  # fmt: skip
            (folder / "runs.json").write_text(json.dumps(plan))
            command = [*launch(config), str(REPO / "tests" / "launched_runs.py"), str(folder / "runs.json")]
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stderr[-4000:]
        report = json.loads((folder / f"{name}.json").read_text())
        assert report["returncode"] == 0 or name.endswith("refused"), report["stderr"][-4000:]
        return folder / name, report


@pytest.fixture(scope="module")
def labelled_texts(tmp_path_factory, text_files) -> tuple[Path, Path]:
    """Train / test JSONL with 3 arbitrary classes (the length of the document's module name, mod 3): enough to
    compare runs, not to learn from."""
    folder = tmp_path_factory.mktemp("labelled")
    rows = [json.loads(line) for line in text_files[0].read_text().splitlines()[:360]]
    lines = [json.dumps({"text": row["text"], "label": f"class {len(row['source']) % 3}"}) + "\n" for row in rows]
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    train.write_text("".join(lines[:240]))
    test.write_text("".join(lines[240:]))
    return train, test


def finetune_args(labelled_texts, model: Path, per_device_batch: int, adapter: str) -> list[str]:
    configs = REPO / "recipes" / "configs" / "finetune"
    return ["--task", "text-classification", "--config", str(configs / "text-classification.yaml"), "--config",
            str(configs / "text-classification-debug.yaml"), "--model_name_or_path", str(model), "--train_files",
            str(labelled_texts[0]), "--test_files", str(labelled_texts[1]), "--adapter", adapter, "--max_steps", "6",
            "--log_every", "1", "--eval_every", "6", "--eval_batches", "0", "--learning_rate", "1e-3",
            "--per_device_batch_size", str(per_device_batch)]  # fmt: skip


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, text_files, initial_model, initial_backbone, labelled_texts) -> Launches:
    mlm = TwoProcessRun("mlm.py", args(text_files, initial_model, None, 8))
    zero3_start = ["--backbone_name_or_path", str(initial_backbone)]
    runs = {
        "ddp.yaml": {
            "mlm": mlm,
            "inpainting": TwoProcessRun("pretext.py", pretext_args("inpainting", None, 8)),
            "simclr": TwoProcessRun("contrastive.py", pretext_args("simclr", None, 8)),
            "moco": TwoProcessRun("contrastive.py", pretext_args("moco", None, 8)),
            "moco-v3": TwoProcessRun("contrastive.py", pretext_args("moco-v3", None, 8)),
            "byol": TwoProcessRun("contrastive.py", pretext_args("byol", None, 8)),
            "npid": TwoProcessRun("contrastive.py", pretext_args("npid", None, 8)),
            "deepcluster": TwoProcessRun("contrastive.py", pretext_args("deepcluster", None, 8)),
            "cmc": TwoProcessRun("contrastive.py", pretext_args("cmc", None, 8)),
            "moco-shuffle-bn": TwoProcessRun("contrastive.py", SHUFFLE_BN),
            "moco-no-shuffle-bn": TwoProcessRun("contrastive.py", [*SHUFFLE_BN, "--shuffle_bn", "false"]),
            "moco-ghost-batches": TwoProcessRun("contrastive.py", [*SHUFFLE_BN, "--bn_batch_size", "4"]),
            "clm": TwoProcessRun("clm.py", [*clm_args(text_files), "--per_device_batch_size", "8"]),
            "clip": TwoProcessRun("clip.py", contrastive_args("clip", per_device=8, accumulation=1)),
            "finetune-lora": TwoProcessRun("finetune.py", finetune_args(labelled_texts, initial_model, 8, "lora")),
        },
        "deepspeed_zero2.yaml": {
            "mlm": mlm,
            "rotation": TwoProcessRun("pretext.py", pretext_args("rotation", None, 8)),
            "simclr": TwoProcessRun("contrastive.py", pretext_args("simclr", None, 8)),
            "siglip": TwoProcessRun("clip.py", contrastive_args("siglip", per_device=4, accumulation=2)),
            "finetune-full": TwoProcessRun("finetune.py", finetune_args(labelled_texts, initial_model, 8, "full")),
            "inpainting-refused": TwoProcessRun("pretext.py", pretext_args("inpainting", None, 8)),
            "lars-refused": TwoProcessRun("contrastive.py", [*pretext_args("simclr", None, 8), "--optimizer", "lars"]),
        },
        "deepspeed_zero3.yaml": {
            "mlm": mlm,
            "rotation": TwoProcessRun("pretext.py", [*pretext_args("rotation", None, 8), *zero3_start]),
            "cmc": TwoProcessRun("contrastive.py", pretext_args("cmc", None, 8)),
            "npid": TwoProcessRun("contrastive.py", [*pretext_args("npid", None, 8), *zero3_start]),
            "moco-refused": TwoProcessRun("contrastive.py", pretext_args("moco", None, 8)),
            "byol-refused": TwoProcessRun("contrastive.py", pretext_args("byol", None, 8)),
        },
    }
    return Launches(tmp_path_factory.mktemp("two-processes"), runs)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, text_files, initial_model):
    """The reference: one process with the same global batch (16) as two processes x 8."""
    out = tmp_path_factory.mktemp("single")
    run(args(text_files, initial_model, out, 16))
    return out


@pytest.mark.parametrize("config", ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_two_processes_match_one(two_processes, single_process, config):
    out, _ = two_processes(config, "mlm")
    two, one = train_losses(out), train_losses(single_process)
    assert sorted(two) == list(range(1, 13))
    # Same weights, same global batch, same masks (seeded per sample), loss normalised by the global token
    # count: only the order of floating-point sums differs between 1 and 2 processes.
    assert two[1] == pytest.approx(one[1], rel=1e-5)
    assert learning_rates(out) == learning_rates(single_process)  # the schedule ignores the process count
    assert two[12] == pytest.approx(one[12], rel=2e-3)
    assert eval_losses(out)[12] < eval_losses(out)[0] - 0.1
    if config != "deepspeed_zero3.yaml":
        return  # the export of unsharded runs is the single-process one, reloaded by tests/test_registry.py
    # (in a fresh process there, for the format; what ZeRO-3 adds is gathering the shards, checked here)
    # Gathered from the shards into whole tensors: plain transformers loads every weight, none left new.
    model, info = BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.hidden_size == 32 and len(AutoTokenizer.from_pretrained(out)) <= model.config.vocab_size
    assert all(p.numel() > 0 for p in model.parameters())


# --- vision pretext tasks: a ConvNeXt backbone (LayerNorm, so no per-process batch statistics) -------------

TINY_CONVNEXT = [
    "--backbone_type", "convnext",
    "--backbone_config", json.dumps({"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2}),
    "--image_size", "32", "--stored_size", "36", "--heldout_images", "64", "--eval_batches", "2",
    "--learning_rate", "2e-3", "--warmup_steps", "2", "--report_to", "none", "--log_every", "1", "--save_every", "0",
    # The small digits probe: what is compared is 2 processes against 1, not the probe set.
    "--probe_train_images", "embedded:digits:train", "--probe_test_images", "embedded:digits:test",
]  # fmt: skip
VISION_RUNS = {
    "rotation": ["--task", "rotation"],
    "inpainting": ["--task", "inpainting", "--adversarial_weight", "0.01"],  # two stages, two optimizers
    # Projections gathered with gradients: every view meets the 2N - 2 negatives of the global batch.
    "simclr": ["--method", "simclr"],
    # Keys gathered from every rank before they are enqueued: a queue of 2 steps' keys, wrapping from step 2 on.
    "moco": ["--method", "moco", "--queue_size", "32"],
    "moco-v3": ["--method", "moco", "--moco_version", "3"],  # the global batch's keys as negatives
    # The target network is a momentum copy on every rank; the demo's BatchNorm heads would have per-rank statistics.
    "byol": ["--method", "byol", "--head_batch_norm", "false"],
    # Each step's projections and bank rows gathered from every rank before the bank update; NCE's Z from the global
    # batch (the demo's InfoNCE has none).
    "npid": ["--method", "npid", "--npid_loss", "nce", "--bank_images", "512", "--num_negatives", "128",
             "--save_every", "1", "--save_total_limit", "6"],
    # Every rank embeds and clusters the same images, then takes rank 0's clustering; re-clustered at step 3.
    "deepcluster": ["--method", "deepcluster", "--num_clusters", "8", "--cluster_images", "256", "--recluster_every",
                    "3", "--pca_dim", "8", "--save_every", "1", "--save_total_limit", "6"],
    # L and ab projections gathered with gradients, both directions against the global batch; colour photographs.
    "cmc": ["--method", "cmc", "--train_images", "embedded:photos"],
}  # fmt: skip
"""The vision runs compared (the pretext and contrastive recipes), by task."""
VISION_RECIPES = {"simclr": "contrastive.py", "moco": "contrastive.py", "moco-v3": "contrastive.py",
                  "byol": "contrastive.py", "npid": "contrastive.py", "deepcluster": "contrastive.py",
                  "cmc": "contrastive.py"}  # fmt: skip


def pretext_args(task: str, out: Path | None, per_device_batch: int, steps: int = 6) -> list[str]:
    return [*TINY_CONVNEXT, *VISION_RUNS[task], *output_dir(out), "--max_steps", str(steps),
            "--per_device_batch_size", str(per_device_batch), "--eval_every", str(steps)]  # fmt: skip


def step_metric(output_dir, name: str) -> dict[int, float]:
    return {m["step"]: m[name] for m in read_metrics(output_dir) if name in m}


@pytest.fixture(scope="module")
def initial_backbone(tmp_path_factory):
    """Saved starting weights for ZeRO-3, which builds new transformers models sharded (other initial weights)."""
    from transformers import ConvNextConfig, ConvNextModel

    folder = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(**json.loads(TINY_CONVNEXT[3]))).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("task", "config"),
    [("rotation", "deepspeed_zero2.yaml"), ("rotation", "deepspeed_zero3.yaml"), ("inpainting", "ddp.yaml"),
     ("simclr", "ddp.yaml"), ("simclr", "deepspeed_zero2.yaml"), ("moco", "ddp.yaml"), ("moco-v3", "ddp.yaml"),
     ("byol", "ddp.yaml"), ("npid", "ddp.yaml"), ("npid", "deepspeed_zero3.yaml"), ("deepcluster", "ddp.yaml"),
     ("cmc", "ddp.yaml")],
)  # fmt: skip
def test_vision_two_processes_match_one(tmp_path, initial_backbone, two_processes, task, config):
    one = tmp_path / "one"
    start = ["--backbone_name_or_path", str(initial_backbone)] if "zero3" in config else []
    run([*pretext_args(task, one, 16), *start], recipe=VISION_RECIPES.get(task, "pretext.py"))
    two, _ = two_processes(config, task)
    stages = ["loss", "discriminator_loss"] if "--adversarial_weight" in VISION_RUNS[task] else ["loss"]
    for name in stages:
        # Crops, views, rotations and masks are seeded per sample, so both runs see the same global batch.
        assert step_metric(two, name)[1] == pytest.approx(step_metric(one, name)[1], rel=1e-5), name
        assert step_metric(two, name)[6] == pytest.approx(step_metric(one, name)[6], rel=1e-3), name
    final_one, final_two = read_metrics(one)[-1], read_metrics(two)[-1]
    # Probe features are computed in shards and gathered; two processes leave out one odd image per split.
    momentum_encoder = [name for name in final_one if name.startswith("knn_accuracy_") and "random" not in name]
    for name in ("linear_probe_accuracy", "linear_probe_accuracy_random_backbone", "knn_accuracy", *momentum_encoder):
        assert final_two[name] == pytest.approx(final_one[name], abs=0.01), name
    if task == "npid":
        assert_same_bank_on_every_rank_as_on_one(one, two)
    if task == "deepcluster":
        assert_same_clustering_on_every_rank_as_on_one(one, two)


def task_state(run: Path, step: int, rank: int) -> dict:
    return torch.load(task_state_file(run / "checkpoints" / f"step_{step}", rank), weights_only=True)


def assert_same_bank_on_every_rank_as_on_one(one: Path, two: Path) -> None:
    """NPID's bank after step 1 (the first step's features, of the same initial weights) and after step 6, and Z:
    the same on both ranks bit for bit, and the one-process run's up to the order of float sums."""
    state = task_state
    for step, tolerance in ((1, 1e-5), (6, 1e-3)):
        reference, ranks = state(one, step, 0), [state(two, step, rank) for rank in (0, 1)]
        assert torch.equal(ranks[0]["bank"], ranks[1]["bank"]) and ranks[0]["normalizer"] == ranks[1]["normalizer"]
        torch.testing.assert_close(ranks[0]["bank"], reference["bank"], rtol=tolerance, atol=tolerance, msg=str(step))
        assert ranks[0]["normalizer"] == pytest.approx(reference["normalizer"], rel=1e-5)
    moved = (reference["bank"] - state(one, 1, 0)["bank"]).norm(dim=1).gt(1e-3).sum()
    assert moved >= 5 * 16  # steps 2-6 each moved their 16 entries


def assert_same_clustering_on_every_rank_as_on_one(one: Path, two: Path) -> None:
    """DeepCluster's clusterings of the initial weights (step 1) and of step 3's (step 6): rank 0's on both ranks, bit
    for bit; the first, of the same weights, also the one-process run's; the second assigns as one process did."""
    for step in (1, 6):
        reference, ranks = task_state(one, step, 0), [task_state(two, step, rank) for rank in (0, 1)]
        assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ("centroids", "assignments", "whitening"))
        assert ranks[0]["period"] == reference["period"] == (step - 1) // 3
        if step == 1:
            assert torch.equal(ranks[0]["assignments"], reference["assignments"])
        else:
            assert (ranks[0]["assignments"] == reference["assignments"]).float().mean() >= 0.98


def shuffle_bn_args(out: Path | None, per_device_batch: int) -> list[str]:
    """One MoCo v2 step on a BatchNorm ResNet, checkpointed: the queue then holds the first step's 16 keys."""
    return [*pretext_args("moco", out, per_device_batch, steps=1), "--save_every", "1", "--backbone_type", "resnet",
            "--backbone_config", json.dumps({"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
                                             "layer_type": "basic"})]  # fmt: skip


SHUFFLE_BN = shuffle_bn_args(None, 8)


def test_moco_shuffle_bn_encodes_keys_in_a_shuffled_global_batch(two_processes):
    """Both processes enqueue the keys of a reference computed here from the run's own config, initial momentum
    encoder and views: the global batch's second views, dealt by the step's permutation into two halves, each half
    encoded as one train-mode batch, put back in order. Without shuffle-BN each process's own half is one batch."""
    shuffled, _ = two_processes("ddp.yaml", "moco-shuffle-bn")
    plain, _ = two_processes("ddp.yaml", "moco-no-shuffle-bn")
    task = task_of_run(shuffled, MoCo)
    config = task.config
    images = torch.cat([next(task.train_batches(0, Sharding(rank, 2)))["views"][:, 1] for rank in (0, 1)])
    permutation = key_permutation(config.seed, 0, len(images))
    encoder = task.momentum_encoder.train()
    with torch.no_grad():
        dealt = images[permutation]
        keys = torch.empty(len(images), config.projection_dim)
        keys[permutation] = torch.cat([encoder.project(dealt[:8]), encoder.project(dealt[8:])])
        per_process = torch.cat([encoder.project(images[:8]), encoder.project(images[8:])])
    keys, per_process = F.normalize(keys, dim=1), F.normalize(per_process, dim=1)
    for rank in (0, 1):
        queues = [torch.load(task_state_file(run / "checkpoints" / "step_1", rank), weights_only=True)["queue"]
                  for run in (shuffled, plain)]  # fmt: skip
        torch.testing.assert_close(queues[0][:16], keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(queues[1][:16], per_process, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(keys, per_process, atol=1e-3)  # the shuffle changed the batch statistics


def test_moco_ghost_batches_with_shuffle_bn_on_two_processes_match_one_process(tmp_path, two_processes):
    """BatchNorm batches of 4 views: two processes x 8 images hold the same four query batches as one process x 16,
    and the step's permutation deals the keys into the same four key batches, across the processes or not."""
    one = tmp_path / "one"
    run([*shuffle_bn_args(one, 16), "--bn_batch_size", "4"], recipe="contrastive.py")
    two, _ = two_processes("ddp.yaml", "moco-ghost-batches")
    plain, _ = two_processes("ddp.yaml", "moco-shuffle-bn")
    reference = task_state(one, 1, 0)["queue"][:16]
    for rank in (0, 1):
        torch.testing.assert_close(task_state(two, 1, rank)["queue"][:16], reference, rtol=1e-4, atol=1e-5)
    assert step_metric(two, "loss")[1] == pytest.approx(step_metric(one, "loss")[1], rel=1e-5)
    # Batches of 4 are other statistics than each process's 8.
    assert not torch.allclose(task_state(plain, 1, 0)["queue"][:16], reference, atol=1e-3)


def test_cmc_trains_under_zero3_and_exports_its_whole_l_encoder(two_processes):
    """Both encoders sharded by ZeRO-3 (built inside deepspeed.zero.Init, so their initial weights are not one
    process's, and the export is what is checked): the L encoder is gathered from the shards into a stock
    1-channel ResNet that plain transformers loads whole, and recipes/evaluate.py's probes of it are the ones the
    run logged from its sharded model (two processes left one odd probe image out of each split)."""
    from transformers import AutoModel

    from fmkit.evaluate import main as evaluate

    out, _ = two_processes("deepspeed_zero3.yaml", "cmc")
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(loss) for loss in losses.values())
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_channels == 1 and all(p.numel() > 0 for p in model.parameters())
    try:
        assert evaluate([str(out), "--probe_train_images", "embedded:digits:train", "--probe_test_images",
                         "embedded:digits:test", "--output_json", str(out / "reloaded.json")]) == 0  # fmt: skip
    finally:
        reset_accelerate()
    reloaded, logged = json.loads((out / "reloaded.json").read_text())["metrics"], read_metrics(out)[-1]
    for name in ("linear_probe_accuracy", "knn_accuracy", "few_shot_accuracy"):
        assert reloaded[name] == pytest.approx(logged[name], abs=0.01), name


MOMENTUM_REFUSED = "cannot run under DeepSpeed ZeRO-3: its momentum encoder averages whole parameters"


@pytest.mark.parametrize(
    ("config", "name", "expected"),
    [
        ("deepspeed_zero2.yaml", "inpainting-refused", "DeepSpeed runs one engine per model"),  # two optimizer stages
        ("deepspeed_zero2.yaml", "lars-refused",
         "--optimizer lars scales each parameter tensor's update by that tensor's norm"),
        ("deepspeed_zero3.yaml", "moco-refused", f"task moco {MOMENTUM_REFUSED}"),  # ZeRO-3 would shard them
        ("deepspeed_zero3.yaml", "byol-refused", f"task byol {MOMENTUM_REFUSED}"),
    ],
)  # fmt: skip
def test_what_deepspeed_cannot_run_is_refused_in_one_line(two_processes, config, name, expected):
    _, result = two_processes(config, name)
    assert result["returncode"] == 2
    error_lines = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert len(error_lines) == 1 and expected in error_lines[0], result["stderr"][-2000:]


# --- causal LM: a tiny GPT-2 from scratch (DDP starts every rank from rank 0's weights) -------------------

TINY_GPT = json.dumps({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
                       "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})  # fmt: skip


def clm_args(text_files) -> list[str]:
    train, held_out = text_files
    return ["--train_files", str(train), "--eval_files", str(held_out), "--model_config", TINY_GPT,
            "--vocab_size", "512", *TINY_TRAINING, "--document_aware", "true", "--max_steps", "8",
            "--log_every", "1", "--eval_every", "8", "--eval_batches", "0", "--save_every", "0",
            "--samples", "1"]  # fmt: skip


def test_causal_lm_two_processes_match_one(tmp_path, text_files, two_processes):
    """The whole held-out split on both (`--eval_batches 0`): with the demo's cap of 10 batches per process, one
    process would score the first 160 blocks and two processes blocks 0-79 and 127-206."""
    one = tmp_path / "one"
    run([*clm_args(text_files), "--output_dir", str(one), "--per_device_batch_size", "16"], recipe="clm.py")
    two, _ = two_processes("ddp.yaml", "clm")
    assert train_losses(two)[1] == pytest.approx(train_losses(one)[1], rel=1e-5)
    assert train_losses(two)[8] == pytest.approx(train_losses(one)[8], rel=1e-3)
    assert eval_losses(two)[0] == pytest.approx(eval_losses(one)[0], rel=1e-5)
    assert eval_losses(two)[8] == pytest.approx(eval_losses(one)[8], rel=1e-3)
    assert eval_losses(two)[8] < eval_losses(two)[0]


@pytest.mark.parametrize(("adapter", "config"), [("lora", "ddp.yaml"), ("full", "deepspeed_zero2.yaml")])
def test_finetuning_two_processes_match_one(tmp_path, labelled_texts, initial_model, two_processes, adapter, config):
    """LoRA under DDP (a frozen base: no unused-parameter error) and full fine-tuning under ZeRO-2 give one
    process's losses at the same global batch, and score the test split alike (gathered predictions; two
    processes leave out one odd example)."""
    one = tmp_path / "one"
    run([*finetune_args(labelled_texts, initial_model, 16, adapter), "--output_dir", str(one)], recipe="finetune.py")
    two, _ = two_processes(config, f"finetune-{adapter}")
    assert train_losses(two)[1] == pytest.approx(train_losses(one)[1], rel=1e-5)
    assert train_losses(two)[6] == pytest.approx(train_losses(one)[6], rel=1e-3)
    tests = [{k: v for m in read_metrics(r) for k, v in m.items() if k == "test_accuracy"} for r in (one, two)]
    assert tests[1]["test_accuracy"] == pytest.approx(tests[0]["test_accuracy"], abs=0.01)


# --- CLIP: features gathered across ranks with gradients, a local loss per rank ---------------------------


def contrastive_args(loss: str, per_device: int, accumulation: int) -> list[str]:
    return [*TINY_CLIP, "--loss", loss, "--max_steps", "4", "--eval_every", "4", "--save_every", "0",
            "--eval_batches", "2", "--per_device_batch_size", str(per_device),
            "--gradient_accumulation_steps", str(accumulation)]  # fmt: skip


@pytest.mark.parametrize(("loss", "config"), [("clip", "ddp.yaml"), ("siglip", "deepspeed_zero2.yaml")])
def test_contrastive_two_processes_match_one(tmp_path, two_processes, loss, config):
    """Two processes give the loss of one process with the same global batch of 16: every rank scores its rows
    against the gathered columns of both, so the contrastive batch is the global one. The ZeRO-2 case also
    accumulates 2 micro-batches of 4 per rank with cached features. Later steps check the updates."""
    one = tmp_path / "one"
    run([*contrastive_args(loss, per_device=16, accumulation=1), "--output_dir", str(one)], recipe="clip.py")
    two, _ = two_processes(config, loss)
    losses_one, losses_two = train_losses(one), train_losses(two)
    assert losses_two[1] == pytest.approx(losses_one[1], rel=1e-5)
    for step in (2, 3, 4):
        assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-4), step
    final_one, final_two = read_metrics(one)[-1], read_metrics(two)[-1]
    assert final_two["zero_shot_top1"] == pytest.approx(final_one["zero_shot_top1"], abs=0.01)
