"""Model card and push to the Hub, against a loopback Hub server (the real Hub is unreachable from tests)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from hub_server import LoopbackHub
from transformers import BertConfig, BertForMaskedLM

from fmkit.errors import FmkitError
from fmkit.hub import ModelCard, push_to_hub, write_model_card

TOKEN = "hf_test_secret_token"
REPO = "user/tiny-bert"
CARD = ModelCard(
    title="bert-style masked language model trained with fmkit",
    library_name="transformers",
    pipeline_tag="fill-mask",
    tags=["fmkit", "masked-lm"],
    architecture="BertForMaskedLM, 1 layer, hidden 16",
    data="A few sentences of Python documentation.",
    training={"steps": 300, "tokens seen": 1234567, "global batch": 64, "learning rate": 1e-3},
    metrics={"eval_loss": 4.213456, "eval_perplexity": 67.60123},
    usage=(
        'from transformers import AutoModelForMaskedLM\nmodel = AutoModelForMaskedLM.from_pretrained("user/tiny-bert")'
    ),
)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    with LoopbackHub(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # read by push_to_hub at call time
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        # huggingface_hub reads HF_HUB_OFFLINE at import; a run with it set must still reach the loopback server.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        # Telemetry would fetch a registry from huggingface.co (also read at import); keep the test hermetic.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
        yield server


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A training output folder: a tiny real model, its card, and by-products that must stay local."""
    folder = tmp_path / "run"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForMaskedLM(config).save_pretrained(folder)
    write_model_card(folder, CARD)
    (folder / "checkpoints" / "step_1").mkdir(parents=True)
    (folder / "checkpoints" / "step_1" / "junk.bin").write_bytes(b"\0" * 100)
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events").write_bytes(b"events")
    (folder / ".lock").write_text("")
    (folder / "partial.tmp").write_text("half")
    return folder


def test_push_uploads_model_files_only(hub: LoopbackHub, model_dir: Path) -> None:
    url = push_to_hub(model_dir, REPO)

    assert url == f"{hub.url}/{REPO}"
    received = hub.files(REPO)
    assert {"config.json", "model.safetensors", "README.md"} <= received.keys()
    assert all(received[name] == (model_dir / name).read_bytes() for name in received)
    assert not [name for name in received if name.startswith(("checkpoints/", "tensorboard/", "."))]
    assert "partial.tmp" not in received
    assert hub.auth_headers and all(header == f"Bearer {TOKEN}" for header in hub.auth_headers)

    original = BertForMaskedLM.from_pretrained(model_dir).state_dict()
    pushed = BertForMaskedLM.from_pretrained(hub.repo_dir(REPO)).state_dict()
    assert original.keys() == pushed.keys()
    assert all(torch.equal(original[key], pushed[key]) for key in original)


def test_push_again_to_existing_repo(hub: LoopbackHub, model_dir: Path) -> None:
    push_to_hub(model_dir, REPO)
    write_model_card(model_dir, dataclasses.replace(CARD, title="second version"))

    push_to_hub(model_dir, REPO, commit_message="Update card")

    assert b"# second version" in hub.files(REPO)["README.md"]


def test_model_card_content(tmp_path: Path) -> None:
    text = write_model_card(tmp_path, CARD).read_text(encoding="utf-8")

    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta == {"library_name": "transformers", "pipeline_tag": "fill-mask", "tags": ["fmkit", "masked-lm"]}
    assert f"# {CARD.title}" in text
    assert "| learning rate | 0.001 |" in text
    assert "| eval_loss | 4.213 |" in text and "| eval_perplexity | 67.6 |" in text
    assert f"```python\n{CARD.usage}\n```" in text
    assert text.rstrip().endswith("Trained with fmkit.")
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_model_card_puts_each_baseline_beside_its_metric(tmp_path: Path) -> None:
    metrics = {"eval_psnr": 24.31234, "eval_psnr_bicubic": 23.1, "linear_probe_accuracy": 0.75,
               "linear_probe_accuracy_random_backbone": 0.5, "linear_probe_accuracy_chance": 0.1,
               "eval_loss_unigram": 6.5, "samples": 12}  # fmt: skip
    text = write_model_card(tmp_path, dataclasses.replace(CARD, metrics=metrics)).read_text(encoding="utf-8")
    results = text.split("## Results\n\n")[1].split("\n\n")[0].splitlines()
    assert results == [
        "| metric | value | baseline |",
        "| --- | --- | --- |",
        "| eval_psnr | 24.31 | 23.1 (bicubic) |",
        "| linear_probe_accuracy | 0.75 | 0.5 (random backbone); 0.1 (chance) |",
        # A baseline without its metric is a metric of its own, as is anything without a baseline.
        "| eval_loss_unigram | 6.5 |  |",
        "| samples | 12 |  |",
    ]


def test_rejected_token_gives_one_line_error_without_token(
    hub: LoopbackHub, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.reject_token)

    with pytest.raises(FmkitError) as excinfo:
        push_to_hub(model_dir, REPO)

    message = str(excinfo.value)
    assert "\n" not in message
    assert REPO in message and "401" in message
    assert hub.reject_token not in message
    assert not hub.repo_dir(REPO).exists()


def test_token_never_logged_or_printed(
    hub: LoopbackHub, model_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # huggingface_hub sets its own logger to WARNING, so lower it too to see its per-request debug lines.
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="huggingface_hub"):
        push_to_hub(model_dir, REPO)

    captured = capsys.readouterr()
    assert any(r.name.startswith("huggingface_hub") for r in caplog.records), "requests should be logged"
    assert TOKEN not in captured.out + captured.err + caplog.text
    written = [p for p in [*model_dir.rglob("*"), *hub.root.rglob("*")] if p.is_file()]
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]


def test_server_stops_itself_when_a_test_forgets(tmp_path: Path) -> None:
    hub = LoopbackHub(tmp_path, timeout_s=0.1).__enter__()
    time.sleep(1)

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(hub.url.rsplit(":", 1)[1])), timeout=2)
