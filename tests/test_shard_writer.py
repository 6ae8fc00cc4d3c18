"""The parallel, resumable token-shard writer and its command line (data_scripts/tokenize_corpus.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from conftest import REPO
from transformers import AutoTokenizer

from fmkit.data.documents import TextSource
from fmkit.data.shard_writer import write_token_shards
from fmkit.data.token_shards import TokenShard
from fmkit.data.tokenizer import SpecialTokens, tokenizer_fingerprint, train_tokenizer
from fmkit.errors import DataError

SCRIPT = REPO / "data_scripts" / "tokenize_corpus.py"
DOCS_PER_SHARD = 32
TOPICS = [text for _, text in sorted(topics.items())]  # CPython's pydoc topics: real English, no download
BAD_RECORDS = {"invalid JSON lines": 1, "records without a string 'text'": 1}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tokenizer = train_tokenizer(TOPICS, "bpe", 512, SpecialTokens(eos="<|endoftext|>", pad="<|endoftext|>"))
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[TextSource, list[str]]:
    """A JSONL file with two bad records among the second shard's documents, then a plain-text file of
    paragraphs; with the documents in the order they are read."""
    folder = tmp_path_factory.mktemp("corpus")
    records = [json.dumps({"text": text}) for text in TOPICS[:60]]
    records[40:40] = ["{not json", json.dumps({"body": "no text field"})]
    (folder / "a.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    paragraphs = [" ".join(p.split()) for text in TOPICS[60:] for p in text.split("\n\n") if p.strip()][:40]
    (folder / "b.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return TextSource(files=(str(folder / "a.jsonl"), str(folder / "b.txt"))), TOPICS[:60] + paragraphs


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, corpus, tokenizer_dir):
    """Shards written by a single worker, the reference the other runs must match byte for byte."""
    output = tmp_path_factory.mktemp("one-worker") / "shards"
    manifest = write_token_shards(corpus[0], str(tokenizer_dir), output, DOCS_PER_SHARD, workers=1)
    return output, manifest


def shard_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.ds*"))}


def documents_in(folder) -> list[list[int]]:
    """Every document's token ids, shard after shard."""
    documents = []
    for path in sorted(folder.glob("*.ds")):
        shard = TokenShard(path)
        documents += [ids.tolist() for ids in np.split(np.asarray(shard.tokens), shard.doc_ends[:-1].astype(int))]
    return documents


def test_every_document_round_trips_in_order_across_shards(one_worker, corpus, tokenizer):
    output, manifest = one_worker
    texts = corpus[1]
    expected = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    assert documents_in(output) == expected
    shards = sorted(output.glob("*.ds"))
    assert [p.name for p in shards[:2]] == ["00000.ds", "00001.ds"]
    assert len(shards) == manifest["shards"] == -(-len(texts) // DOCS_PER_SHARD) > 2
    assert manifest["documents"] == len(texts)
    assert manifest["tokens"] == sum(map(len, expected))
    assert manifest["complete"] and manifest["workers"] == 1 and manifest["tokens_per_s"] > 0
    assert not list(output.glob("*.tmp"))


def test_bad_records_are_skipped_and_counted_in_the_shard_that_read_them(one_worker):
    output, manifest = one_worker
    assert manifest["skipped"] == BAD_RECORDS
    per_shard = [TokenShard(path).info.read_stats["skipped"] for path in sorted(output.glob("*.ds"))]
    assert per_shard == [{}, BAD_RECORDS, {}, {}]


def test_shards_carry_the_tokenizer_they_were_written_with(one_worker, tokenizer):
    output, manifest = one_worker
    saved = AutoTokenizer.from_pretrained(output)
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(tokenizer) == manifest["tokenizer_fingerprint"]
    TokenShard(output / "00000.ds").check_tokenizer(saved)


def test_two_workers_write_the_same_bytes_as_one(tmp_path, one_worker, corpus, tokenizer_dir):
    manifest = write_token_shards(corpus[0], str(tokenizer_dir), tmp_path, DOCS_PER_SHARD, workers=2)
    assert manifest["workers"] == 2
    assert shard_files(tmp_path) == shard_files(one_worker[0])


def test_rerun_finishes_an_interrupted_run_without_rewriting_done_shards(tmp_path, one_worker, corpus, tokenizer_dir):
    output = tmp_path / "shards"
    shutil.copytree(one_worker[0], output)
    (output / "00001.ds").unlink()  # killed while writing shard 1: only its temporary file is left
    (output / "00001.ds.tmp").write_bytes(b"partial")
    done = {p.name: p.stat().st_mtime_ns for p in output.glob("*.ds") if p.name != "00001.ds"}
    manifest = write_token_shards(corpus[0], str(tokenizer_dir), output, DOCS_PER_SHARD, workers=1)
    assert shard_files(output) == shard_files(one_worker[0])
    assert {name: (output / name).stat().st_mtime_ns for name in done} == done
    assert manifest["resumed_shards"] == manifest["shards"] - 1 and manifest["complete"]
    assert manifest["documents"] == one_worker[1]["documents"] and manifest["tokens"] == one_worker[1]["tokens"]


def test_rerun_with_other_settings_is_refused(tmp_path, one_worker, corpus, tokenizer_dir):
    output = tmp_path / "shards"
    shutil.copytree(one_worker[0], output)
    with pytest.raises(DataError, match=f"with docs_per_shard {DOCS_PER_SHARD}, not 50") as error:
        write_token_shards(corpus[0], str(tokenizer_dir), output, docs_per_shard=50, workers=1)
    assert "\n" not in str(error.value)
    # The shards now claim to come from a copy of the JSONL file, which then grows by one document.
    original, changed = Path(corpus[0].files[0]).resolve(), tmp_path / "a.jsonl"
    shutil.copy2(original, changed)
    manifest = output / "manifest.json"
    manifest.write_text(manifest.read_text().replace(str(original), str(changed)))
    with changed.open("a") as handle:
        handle.write('{"text": "one more document"}\n')
    inputs = TextSource(files=(str(changed), corpus[0].files[1]))
    with pytest.raises(DataError, match=f"with inputs \\[.*{changed.name}.*\\], not \\[.*{changed.name}"):
        write_token_shards(inputs, str(tokenizer_dir), output, DOCS_PER_SHARD, workers=1)


def test_no_documents_at_all_is_a_one_line_error(tmp_path, tokenizer_dir):
    (tmp_path / "empty.jsonl").write_text('{"body": "x"}\n{broken\n')
    source = TextSource(files=(str(tmp_path / "empty.jsonl"),))
    with pytest.raises(DataError, match=r"empty.jsonl: no documents to tokenize \(2 bad records\)"):
        write_token_shards(source, str(tokenizer_dir), tmp_path / "shards", workers=1)


def test_output_dir_that_is_a_file_is_refused(tmp_path, corpus, tokenizer_dir):
    (tmp_path / "taken").write_text("")
    with pytest.raises(DataError, match="taken: is a file, expected a folder"):
        write_token_shards(corpus[0], str(tokenizer_dir), tmp_path / "taken", workers=1)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip


def test_command_line_writes_shards_and_a_loadable_tokenizer(tmp_path, corpus, tokenizer_dir, tokenizer, one_worker):
    folder = os.path.dirname(corpus[0].files[0])
    output = tmp_path / "shards"
    options = ["--tokenizer", str(tokenizer_dir), "--output_dir", str(output), "--docs_per_shard", str(DOCS_PER_SHARD)]
    result = run_script(f"{folder}/*.jsonl", f"{folder}/b.txt", *options, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert shard_files(output) == shard_files(one_worker[0])
    manifest = json.loads((output / "manifest.json").read_text())
    assert f"{manifest['shards']} shards, {manifest['documents']} documents" in result.stderr
    saved = AutoTokenizer.from_pretrained(output)
    assert saved("a line of text")["input_ids"] == tokenizer("a line of text")["input_ids"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl", "--tokenizer", "TOKENIZER"], "missing.jsonl: no such file or folder"),
        (["INPUT", "--tokenizer", "/no/such/tokenizer"], "tokenizer /no/such/tokenizer: no such folder"),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, corpus, tokenizer_dir, args, message):
    args = [{"TOKENIZER": str(tokenizer_dir), "INPUT": corpus[0].files[0]}.get(a, a) for a in args]
    result = run_script(*args, "--output_dir", str(tmp_path / "shards"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"tokenize_corpus.py: error: {message}")
    assert not (tmp_path / "shards").exists()
