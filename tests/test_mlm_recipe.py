"""The MLM recipe end to end, as a user runs it: real processes, real files, reloaded in a fresh process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    RECIPES,
    TINY_BERT,
    assert_one_line_error,
    eval_losses,
    jsonl_texts,
    read_metrics,
    run_recipe,
    train_losses,
)
from hub_server import LoopbackHub
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from fmkit.data.masking import IGNORE_INDEX, Masker
from fmkit.data.tokenizer import BERT_SPECIALS, train_tokenizer
from fmkit.models.masked_positions import MaskedPositionsOnly
from fmkit.tasks.mlm import MaskedLM, MLMConfig


def data_args(text_files) -> list[str]:
    train, held_out = text_files
    return ["--train_files", str(train), "--eval_files", str(held_out)]


def test_recipe_trains_exports_and_uploads(tmp_path, text_files):
    out = tmp_path / "run"
    with LoopbackHub(tmp_path / "hub") as hub:
        run_recipe(
            [
                *data_args(text_files),
                *TINY_BERT,
                "--output_dir",
                str(out),
                "--max_steps",
                "60",
                "--log_every",
                "10",
                "--eval_every",
                "30",
                "--save_every",
                "30",
                "--report_to",
                "tensorboard",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "someone/tiny-bert",
            ],
            env={
                "HF_ENDPOINT": hub.url,
                "HF_TOKEN": "hf_secret_for_tests",
                "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_TELEMETRY": "1",
            },
        )
        uploaded = hub.files("someone/tiny-bert")

    metrics = read_metrics(out)
    train_steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_steps] == [10, 20, 30, 40, 50, 60]
    for record in train_steps:
        assert {"loss", "lr", "tokens_per_s", "samples_per_s", "mfu"} <= record.keys()
        assert record["tokens_per_s"] > 0
    evals = eval_losses(out)
    assert sorted(evals) == [0, 30, 60]
    assert evals[60] < evals[0] - 0.3, f"held-out loss did not fall: {evals}"
    final = [m for m in metrics if m["step"] == 60 and "eval_perplexity" in m][0]
    assert final["eval_perplexity"] == pytest.approx(2.718281828 ** final["eval_loss"], rel=1e-6)

    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "config.yaml"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").rglob("events.out.tfevents*")), "no TensorBoard events"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_30", "step_60"]
    card = (out / "README.md").read_text()
    assert "fill-mask" in card and f"{final['eval_loss']:.4g}" in card
    assert "hf_secret_for_tests" not in (out / "config.yaml").read_text() + card

    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(uploaded)
    assert not any(name.startswith(("checkpoints/", "tensorboard/")) for name in uploaded)
    assert uploaded["model.safetensors"] == (out / "model.safetensors").read_bytes()


# A small ModernBERT (the demo's architecture) on the session's real-text files: leaves the unigram plateau in
# seconds, so its checks run in CI.
SMALL_MLM = [
    "--model_config", json.dumps({"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 256, "max_position_embeddings": 128}),
    "--vocab_size", "1024", "--block_size", "64", "--per_device_batch_size", "32", "--learning_rate", "3e-3",
    "--warmup_steps", "10", "--max_steps", "500", "--eval_every", "500", "--log_every", "50", "--save_every", "0",
    "--report_to", "none",
]  # fmt: skip
FILL_MASK_SENTENCES = [
    "Return the number of {mask} in the list.",
    "If the file does not {mask}, an error is raised.",
    "This method returns a new {mask} object.",
    "The default {mask} is None.",
    "Raise a {mask} if the key is missing.",
    "See the documentation for more {mask}.",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_files):
    """One run of the demo preset (shrunk by flags) shared by the checks below."""
    out = tmp_path_factory.mktemp("mlm") / "run"
    run_recipe([*data_args(text_files), *SMALL_MLM, "--output_dir", str(out)])
    return out


def test_masked_accuracy_beats_the_unigram_baseline(trained):
    evals = [m for m in read_metrics(trained) if "eval_accuracy" in m]
    assert [m["step"] for m in evals] == [0, 500]
    first, last = evals
    # The baseline comes from the training split alone, so it is the same number at every evaluation.
    assert first["eval_accuracy_unigram"] == last["eval_accuracy_unigram"] > 0.01
    assert last["eval_accuracy"] >= 1.5 * last["eval_accuracy_unigram"], evals
    assert f"{last['eval_accuracy_unigram']:.4g} (unigram)" in (trained / "README.md").read_text()  # card baseline


def test_fill_mask_in_a_fresh_process_answers_by_context(trained):
    """Plain transformers, no fmkit: the exported model fills masks, with answers that depend on the sentence."""
    check = (
        "import sys, json\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline\n"
        "model = AutoModelForMaskedLM.from_pretrained(sys.argv[1])\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "fill = pipeline('fill-mask', model=model, tokenizer=tokenizer)\n"
        "answers = [fill(s.format(mask=tokenizer.mask_token)) for s in json.loads(sys.argv[2])]\n"
        "assert 'fmkit' not in sys.modules\n"
        "print(json.dumps([[p['token_str'] for p in a] for a in answers]))\n"
    )
    command = [sys.executable, "-c", check, str(trained), json.dumps(FILL_MASK_SENTENCES)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    assert all(len(top5) == 5 and all(t.strip() for t in top5) for top5 in answers), answers
    assert len({top5[0] for top5 in answers}) >= 3, answers


def test_accuracy_counts_only_mask_token_positions(text_files):
    """A model that copies its input is right at the 10% of predicted positions left unchanged; it must score 0."""
    tokenizer = train_tokenizer(jsonl_texts(text_files[0]), "wordpiece", 512, BERT_SPECIALS)
    task = MaskedLM(MLMConfig())
    task.masker, task.most_frequent = Masker(tokenizer, 0.15), 0
    copier = InputCopier(len(tokenizer))
    task.head = MaskedPositionsOnly(copier)
    ids = torch.randint(
        len(tokenizer.all_special_ids), len(tokenizer), (64, 32), generator=torch.Generator().manual_seed(0)
    )
    input_ids, labels = task.masker(ids, list(range(64)))
    sums = task.held_out_sums(copier, {"input_ids": input_ids, "labels": labels})
    predicted = labels != IGNORE_INDEX
    copied_right = int((input_ids[predicted] == labels[predicted]).sum())
    assert copied_right > 0.05 * int(sums["items"])  # the unchanged 10% exist, and the copier is right there
    assert int(sums["correct"]) == 0 and int(sums["masked"]) > 0.7 * int(sums["items"])


class InputCopier(torch.nn.Module):
    """A masked LM whose logits are its one-hot input: it predicts each position's own input token."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.encoder = torch.nn.Identity()

    @property
    def base_model(self) -> torch.nn.Module:
        return self.encoder

    def forward(self, input_ids: torch.Tensor):
        hidden = self.encoder(BaseModelOutput(last_hidden_state=F.one_hot(input_ids, self.vocab_size).float()))
        return MaskedLMOutput(logits=hidden.last_hidden_state)


def resume_args(text_files, out, steps: int, extra: list[str] = ()) -> list[str]:
    return [
        *data_args(text_files),
        *TINY_BERT,
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--log_every",
        "1",
        "--eval_every",
        "4",
        "--save_every",
        "4",
        "--save_total_limit",
        "5",
        *extra,
    ]


def test_resume_after_sigkill_logs_the_same_losses(tmp_path, text_files):
    """kill -9 past a checkpoint, then resume: the same losses as a straight run. Dropout is on, so resuming
    must also restore the RNG state, not only weights and data position (the loop's own resume mathematics is
    tested in-process in tests/test_loop.py)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["--num_workers", "1", "--model_config",
            TINY_BERT[1].replace("}", ', "mlp_dropout": 0.1, "embedding_dropout": 0.1}')]  # fmt: skip
    run_recipe(resume_args(text_files, straight, 24, args))
    command = [sys.executable, str(RECIPES / "mlm.py"), *resume_args(text_files, killed, 24, args)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step_12").is_dir():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # past step 12: a checkpoint exists, others may be half-written
    process.wait()
    assert (killed / "checkpoints" / "step_12").is_dir(), "run ended before reaching the kill point"
    run_recipe(resume_args(text_files, killed, 24, [*args, "--resume_from_checkpoint", "latest"]))
    assert train_losses(killed) == train_losses(straight)
    assert eval_losses(killed) == eval_losses(straight)


def test_existing_run_is_not_overwritten(tmp_path, text_files):
    out = tmp_path / "run"
    run_recipe(resume_args(text_files, out, 2))
    before = (out / "model.safetensors").read_bytes()
    result = run_recipe(resume_args(text_files, out, 2), check=False)
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "--resume_from_checkpoint latest" in result.stderr
    assert (out / "model.safetensors").read_bytes() == before
    run_recipe(resume_args(text_files, out, 2, ["--overwrite_output_dir", "true", "--seed", "7"]))
    assert (out / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--train_files", "/no/such/corpus.txt"], "/no/such/corpus.txt: no such file or folder"),
        (["--max_stepz", "3"], "unknown config key 'max_stepz'; did you mean max_steps?"),
        (["--block_size", "128"], "block_size 128 exceeds the model's 64 positions"),
        (["--model_config", '{"vocab_size": 64, "max_position_embeddings": 64}'], "smaller than the tokenizer's"),
        (["--tokenizer_name_or_path", "/no/such/tokenizer"], "tokenizer /no/such/tokenizer: no such folder"),
        (["--model_name_or_path", "/no/such/model"], "model /no/such/model: cannot load it"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, text_files, args, expected):
    result = run_recipe([*data_args(text_files), *TINY_BERT, "--output_dir", str(tmp_path / "o"), *args], check=False)
    assert_one_line_error(result, expected)


def test_trains_on_a_streamed_hugging_face_dataset(tmp_path, text_files):
    """A dataset folder read through `datasets.load_dataset(..., streaming=True)`; no file is downloaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "my-dataset" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"content": jsonl_texts(text_files[0])}), folder / "train-00000-of-00001.parquet")
    out = tmp_path / "run"
    run_recipe([*TINY_BERT, "--dataset_name", str(folder.parent), "--text_field", "content", "--streaming", "true",
                "--output_dir", str(out), "--max_steps", "20", "--log_every", "10", "--eval_every", "20"])  # fmt: skip
    evals = eval_losses(out)
    assert sorted(evals) == [0, 20] and evals[20] < evals[0]
    missing = run_recipe([*TINY_BERT, "--dataset_name", str(folder.parent), "--output_dir", str(tmp_path / "o")],
                         check=False)  # fmt: skip
    assert missing.returncode == 2 and "no column 'text' (columns: content)" in missing.stderr


def test_empty_corpus_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    result = run_recipe(["--train_files", str(empty), *TINY_BERT, "--output_dir", str(tmp_path / "o")], check=False)
    assert result.returncode == 2
    assert "no text" in result.stderr and str(empty) in result.stderr
