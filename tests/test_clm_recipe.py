"""The autoregressive recipe end to end, its packing, and training on pre-tokenized token shards."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    RECIPES,
    TINY_TRAINING,
    assert_one_line_error,
    eval_losses,
    jsonl_texts,
    read_metrics,
    run_recipe,
    train_losses,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from fmkit.config import parse_config
from fmkit.data.documents import TextSource
from fmkit.data.loader import GlobalBatchSampler, Sharding
from fmkit.data.packing import EveryKthBlock, PackedBlocks, document_position_ids
from fmkit.data.shard_writer import write_token_shards
from fmkit.data.tokenizer import BERT_SPECIALS, train_tokenizer
from fmkit.tasks.clm import CLM_SPECIALS, CLMConfig
from fmkit.tasks.language_model import token_counts

TINY_GPT = [
    "--model_config", json.dumps({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
                                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
    "--vocab_size", "512", *TINY_TRAINING,
]  # fmt: skip


def clm(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return run_recipe(args, recipe="clm.py", check=check)


# --- packing ------------------------------------------------------------------------------------------------


def test_document_position_ids_restart_after_each_end_token():
    ids = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 0, 4], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 0], [0, 0, 1, 2, 3, 4, 5, 6, 7]])
    assert torch.equal(document_position_ids(ids, end_id=0), expected)


@pytest.mark.parametrize(
    "model",
    [
        lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50)),
        lambda: LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=2, intermediate_size=64, vocab_size=50)),
    ],
    ids=["gpt2-absolute-positions", "llama-rope"],
)  # fmt: skip
def test_document_aware_packing_stops_attention_at_document_boundaries(model):
    """A document packed after another gives exactly the logits it gives alone; plain packing does not."""
    torch.manual_seed(0)
    model = model().eval()
    first, second = [5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 14]
    packed = torch.tensor([first + second])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second]), use_cache=False).logits
        aware = model(input_ids=packed, position_ids=document_position_ids(packed, 0), use_cache=False).logits
        plain = model(input_ids=packed, use_cache=False).logits
    torch.testing.assert_close(aware[:, len(first) :], alone, rtol=1e-5, atol=1e-5)
    assert (plain[:, len(first) :] - alone).abs().max() > 1e-3


def test_blocks_overlap_by_one_token_and_never_straddle_shards():
    shards = [np.arange(0, 23, dtype=np.uint16), np.arange(100, 110, dtype=np.uint16)]
    blocks = PackedBlocks(shards, block_size=4, overlap=1)
    assert len(blocks) == 5 + 2  # (23 - 1) // 4 and (10 - 1) // 4
    rows = blocks.get(np.arange(len(blocks))).tolist()
    assert rows[0] == [0, 1, 2, 3, 4] and rows[1][0] == 4  # the target of one block's last position opens the next
    assert rows[4] == [16, 17, 18, 19, 20] and rows[5] == [100, 101, 102, 103, 104]
    assert blocks.get(np.array([6, 0])).tolist() == [[104, 105, 106, 107, 108], [0, 1, 2, 3, 4]]


def test_held_out_blocks_are_every_kth_and_disjoint_from_training():
    blocks = PackedBlocks(np.arange(230), block_size=10)  # 23 blocks
    train, held_out = EveryKthBlock(blocks, 5, held_out=False), EveryKthBlock(blocks, 5, held_out=True)
    train_firsts = train.get(np.arange(len(train)))[:, 0].tolist()
    held_out_firsts = held_out.get(np.arange(len(held_out)))[:, 0].tolist()
    assert held_out_firsts == [40, 90, 140, 190]
    assert sorted(train_firsts + held_out_firsts) == list(range(0, 230, 10))


def test_unigram_counts_are_exact_for_small_splits_and_bounded_for_large_ones():
    tokens = np.arange(1000, dtype=np.int64) % 7
    blocks = PackedBlocks(tokens, block_size=10)
    assert token_counts(blocks, 8).tolist() == np.bincount(tokens, minlength=8).tolist()
    sampled = token_counts(blocks, 8, max_tokens=200)  # 20 of the 100 blocks, spread over the split
    assert sampled.sum() == 200 and sampled[:7].min() > 0


def test_resumed_sampler_continues_exactly_over_shards():
    blocks = PackedBlocks([np.arange(1000), np.arange(5000, 5700)], block_size=16, overlap=1)
    sharding = Sharding(rank=1, world=2)
    straight = GlobalBatchSampler(len(blocks), 4, sharding, seed=3)
    resumed = GlobalBatchSampler(len(blocks), 4, sharding, seed=3, start=37)  # past the first epoch (13 batches)
    expected = [blocks.get(i) for (i, _), _ in zip(straight, range(45), strict=False)][37:]
    got = [blocks.get(i) for (i, _), _ in zip(resumed, range(8), strict=False)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


# --- presets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "model_class", "millions"),
    [("demo", "GPT2LMHeadModel", (2, 8)), ("gpt2-124m", "GPT2LMHeadModel", (123, 126)),
     ("llama-150m", "LlamaForCausalLM", (140, 160))],
)  # fmt: skip
def test_presets_build_standard_architectures(preset, model_class, millions):
    config = parse_config(CLMConfig, [], default_preset=RECIPES / "configs" / "clm" / f"{preset}.yaml")
    vocab = -(-config.vocab_size // 64) * 64
    model_config = AutoConfig.for_model(config.model_type, vocab_size=vocab, **config.model_config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    assert type(model).__name__ == model_class
    assert millions[0] <= model.num_parameters() / 1e6 <= millions[1]
    assert config.block_size <= model_config.max_position_embeddings


# --- the recipe ---------------------------------------------------------------------------------------------


# A small GPT-2 on the session's real-text files: learns in seconds, so its checks run in CI.
SMALL_GPT = [
    "--model_config", json.dumps({"n_embd": 128, "n_layer": 2, "n_head": 2, "n_positions": 128,
                                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
    "--vocab_size", "1024", "--block_size", "64", "--per_device_batch_size", "32", "--learning_rate", "3e-3",
    "--warmup_steps", "10", "--max_steps", "250", "--eval_every", "125", "--log_every", "50", "--save_every", "0",
    "--samples", "4", "--report_to", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_files):
    """One run of the demo preset (shrunk by flags) shared by the checks below."""
    train, held_out = text_files
    out = tmp_path_factory.mktemp("clm") / "run"
    clm(["--train_files", str(train), "--eval_files", str(held_out), *SMALL_GPT, "--output_dir", str(out)])
    return out


def logged_samples(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_held_out_loss_falls_below_the_unigram_entropy(trained):
    evals = [m for m in read_metrics(trained) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 125, 250]
    first, last = evals[0], evals[-1]
    # The baseline comes from the training split alone, so it is the same number at every evaluation.
    assert first["eval_loss_unigram"] == last["eval_loss_unigram"] < first["eval_loss"]
    assert last["eval_loss"] < last["eval_loss_unigram"] - 0.5, evals
    assert last["eval_perplexity"] == pytest.approx(np.exp(last["eval_loss"]), rel=1e-6)
    assert all(0 < m["mfu"] < 1 for m in read_metrics(trained) if "mfu" in m)
    card = (trained / "README.md").read_text()
    assert "text-generation" in card and f"{last['eval_loss_unigram']:.4g} (unigram)" in card


def longest_repeat(ids: list[int]) -> int:
    """Length of the longest run of one token repeated back to back."""
    longest, run = 0, 0
    for i, token in enumerate(ids):
        run = run + 1 if i and token == ids[i - 1] else 1
        longest = max(longest, run)
    return longest


def distinct_bigram_fraction(texts: list[str]) -> float:
    bigrams = [pair for text in texts for pair in zip(text.split(), text.split()[1:], strict=False)]
    return len(set(bigrams)) / max(len(bigrams), 1)


def test_samples_are_text_not_loops(trained):
    """Sampled with the saved generation config (no repetition penalty): greedy decoding of a small model
    repeats one token or phrase, which these checks catch."""
    samples = logged_samples(trained)
    assert {s["step"] for s in samples} == {0, 125, 250} and all(s["prompt"] for s in samples)
    final = [s for s in samples if s["step"] == 250]
    assert len(final) == 4
    tokenizer = AutoTokenizer.from_pretrained(trained)
    for sample in final:
        ids = tokenizer(sample["completion"]).input_ids
        assert longest_repeat(ids) <= 4, sample
    assert distinct_bigram_fraction([s["completion"] for s in final]) >= 0.5, final


def test_export_samples_alike_in_a_fresh_process(trained):
    """Plain transformers, no fmkit: the saved generation config samples, and the same seed gives the logged text."""
    last = logged_samples(trained)[-1]
    check = (
        "import sys, json, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = torch.tensor([t(sys.argv[2]).input_ids])\n"
        "torch.manual_seed(int(sys.argv[3]))\n"
        "out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32)\n"
        "assert 'fmkit' not in sys.modules\n"
        "print(json.dumps({'completion': t.decode(out[0, ids.shape[1]:]), 'vocab': m.config.vocab_size,\n"
        "                  'sampling': m.generation_config.do_sample}))\n"
    )
    command = [sys.executable, "-c", check, str(trained), last["prompt"], str(last["seed"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.splitlines()[-1])
    assert reloaded["sampling"] is True
    assert reloaded["completion"] == last["completion"]  # the exported weights are the trained ones
    assert reloaded["vocab"] % 64 == 0


def write_shards(folder, text_file, tokenizer) -> None:
    """With the writer users run (data_scripts/tokenize_corpus.py): several shards, tokenizer saved beside."""
    tokenizer_dir = folder.with_name(folder.name + "-tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)
    write_token_shards(TextSource(files=(str(text_file),)), str(tokenizer_dir), folder, docs_per_shard=500, workers=1)


@pytest.fixture(scope="module")
def clm_shards(tmp_path_factory, text_files):
    folder = tmp_path_factory.mktemp("shards") / "clm"
    write_shards(folder, text_files[0], train_tokenizer(jsonl_texts(text_files[0]), "bpe", 512, CLM_SPECIALS))
    assert len(list(folder.glob("*.ds"))) == 3  # 1,200 documents
    return folder


def shard_args(shards, out, steps: int, extra: list[str] = ()) -> list[str]:
    return ["--train_shards", str(shards), "--eval_fraction", "0.1", *TINY_GPT, "--output_dir", str(out),
            "--max_steps", str(steps), "--log_every", "1", "--eval_every", "4", "--eval_batches", "4",
            "--save_every", "4", "--lr_scheduler", "constant", "--warmup_steps", "2", "--samples", "1",
            *extra]  # fmt: skip


def test_resume_on_token_shards_is_exact(tmp_path, clm_shards):
    """Document-aware packing on three memory-mapped shards; a resumed run logs the same numbers bit for bit.

    A constant schedule with warmup shorter than the first run makes the 4-step run a prefix of the 8-step one.
    """
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    aware = ["--document_aware", "true"]
    clm(shard_args(clm_shards, straight, 8, aware))
    clm(shard_args(clm_shards, resumed, 4, aware))
    clm(shard_args(clm_shards, resumed, 8, [*aware, "--resume_from_checkpoint", "latest"]))
    assert sorted(train_losses(resumed)) == list(range(1, 9))
    assert train_losses(resumed) == train_losses(straight)
    assert eval_losses(resumed) == eval_losses(straight)
    assert eval_losses(straight)[8] < eval_losses(straight)[0]
    config = AutoConfig.from_pretrained(straight)
    assert config.model_type == "gpt2" and config.vocab_size == 512


def test_masked_lm_trains_on_the_same_shard_format(tmp_path, text_files):
    shards = tmp_path / "bert-shards"
    write_shards(shards, text_files[0], train_tokenizer(jsonl_texts(text_files[0]), "wordpiece", 512, BERT_SPECIALS))
    out = tmp_path / "mlm"
    tiny_bert = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 64, "max_position_embeddings": 64})  # fmt: skip
    run_recipe(["--train_shards", str(shards), "--eval_fraction", "0.1", "--model_config", tiny_bert, *TINY_TRAINING,
                "--output_dir", str(out), "--max_steps", "12", "--eval_every", "12"])  # fmt: skip
    evals = eval_losses(out)
    assert evals[12] < evals[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--train_shards", "/no/such/shards"], "/no/such/shards: no such token shard file or folder"),
        (["--block_size", "128"], "block_size 128 exceeds the model's 64 positions"),
        (["--train_files", "x.txt"], "set either train_shards or train_files/dataset_name, not both"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, clm_shards, args, expected):
    result = clm([*shard_args(clm_shards, tmp_path / "o", 2), *args], check=False)
    assert_one_line_error(result, expected)


def test_shards_from_another_tokenizer_are_refused(tmp_path, clm_shards, text_files):
    other = tmp_path / "other-tokenizer"
    train_tokenizer(jsonl_texts(text_files[1]), "bpe", 512, CLM_SPECIALS).save_pretrained(other)
    result = clm([*shard_args(clm_shards, tmp_path / "o", 2), "--tokenizer_name_or_path", str(other)], check=False)
    assert result.returncode == 2
    assert "00000.ds: written with tokenizer" in result.stderr and "differs from the model's tokenizer" in result.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_shards_without_a_tokenizer_beside_them_need_one(tmp_path, clm_shards):
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in clm_shards.glob("00000.ds*"):
        (bare / path.name).write_bytes(path.read_bytes())
    result = clm(shard_args(bare, tmp_path / "o", 2), check=False)
    assert result.returncode == 2 and "no tokenizer saved beside the token shards" in result.stderr
