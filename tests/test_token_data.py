"""Token shards on disk (datatrove layout), packed blocks and trained tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import jsonl_texts
from transformers import AutoTokenizer

from fmkit.data.packing import PackedBlocks
from fmkit.data.token_shards import TokenShard, encode_documents, write_token_shard
from fmkit.data.tokenizer import BERT_SPECIALS, ROBERTA_SPECIALS, SpecialTokens, round_up, train_tokenizer
from fmkit.errors import DataError

GPT_SPECIALS = SpecialTokens(eos="<|endoftext|>", pad="<|endoftext|>")


@pytest.fixture(scope="module")
def texts(text_files) -> list[str]:
    return jsonl_texts(text_files[0])


@pytest.fixture(scope="module")
def wordpiece(texts):
    return train_tokenizer(texts, "wordpiece", 300, BERT_SPECIALS)


def expected_ids(texts: list[str], tokenizer, append: int | None = None) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] + ([append] if append is not None else []) for t in texts]


def test_shard_holds_every_document_in_order(tmp_path, texts, wordpiece):
    path = tmp_path / "train.ds"
    info = write_token_shard(path, encode_documents(texts, wordpiece), wordpiece)
    shard = TokenShard(path)
    per_doc = expected_ids(texts, wordpiece)
    assert all(ids[0] == wordpiece.cls_token_id and ids[-1] == wordpiece.sep_token_id for ids in per_doc)
    flat = np.concatenate([np.asarray(ids) for ids in per_doc])
    assert shard.tokens.dtype == np.uint16
    np.testing.assert_array_equal(shard.tokens, flat)
    np.testing.assert_array_equal(shard.doc_ends, np.cumsum([len(ids) for ids in per_doc]))
    assert len(shard) == info.tokens == len(flat) and info.documents == len(texts)


def test_shard_files_follow_datatrove_layout(tmp_path, texts, wordpiece):
    path = tmp_path / "train.ds"
    info = write_token_shard(path, encode_documents(texts[:50], wordpiece), wordpiece)
    index = np.fromfile(tmp_path / "train.ds.index", dtype="<u8")
    assert (tmp_path / "train.ds.index").stat().st_size == 8 * 50
    assert index[-1] == info.tokens and np.all(np.diff(index) > 0)
    assert (tmp_path / "train.ds").stat().st_size == 2 * info.tokens
    metadata = (tmp_path / "train.ds.metadata").read_text().splitlines()
    assert len(metadata) == 3 and metadata[1] == str(info.tokens)


def test_eos_appended_when_the_template_does_not_close_documents(tmp_path, texts):
    bpe = train_tokenizer(texts, "bpe", 300, GPT_SPECIALS)
    docs = texts[:20]
    assert all(ids[-1] != bpe.eos_token_id for ids in expected_ids(docs, bpe))
    path = tmp_path / "gpt.ds"
    write_token_shard(path, encode_documents(docs, bpe), bpe)
    per_doc = expected_ids(docs, bpe, append=bpe.eos_token_id)
    shard = TokenShard(path)
    np.testing.assert_array_equal(shard.tokens, np.concatenate([np.asarray(ids) for ids in per_doc]))
    assert np.all(shard.tokens[shard.doc_ends.astype(np.int64) - 1] == bpe.eos_token_id)


def test_check_tokenizer(tmp_path, texts, wordpiece):
    path = tmp_path / "train.ds"
    write_token_shard(path, encode_documents(texts[:10], wordpiece), wordpiece)
    shard = TokenShard(path)
    shard.check_tokenizer(wordpiece)
    wordpiece.save_pretrained(tmp_path / "tok")
    shard.check_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "tok"))
    other = train_tokenizer(texts, "wordpiece", 600, BERT_SPECIALS)
    assert len(other) != len(wordpiece)
    with pytest.raises(DataError) as error:
        shard.check_tokenizer(other)
    message = str(error.value)
    assert str(path) in message
    assert f"vocabulary {len(wordpiece)}" in message and f"vocabulary {len(other)}" in message


def test_interrupted_write_leaves_no_shard(tmp_path, texts, wordpiece):
    def dies_midway():
        for count, ids in enumerate(encode_documents(texts, wordpiece)):
            if count == 100:
                raise KeyboardInterrupt
            yield ids

    path = tmp_path / "train.ds"
    with pytest.raises(KeyboardInterrupt):
        write_token_shard(path, dies_midway(), wordpiece)
    for suffix in ("", ".index", ".metadata", ".json"):
        assert not (tmp_path / f"train.ds{suffix}").exists()
    with pytest.raises(DataError, match="no such token shard"):
        TokenShard(path)


def test_packed_blocks():
    tokens = np.arange(103, dtype=np.uint16)
    blocks = PackedBlocks(tokens, 10)
    assert len(blocks) == 10
    rows = blocks.get(np.array([3, 0, 9]))
    assert rows.dtype == torch.int64 and rows.shape == (3, 10)
    for row, i in zip(rows, [3, 0, 9], strict=True):
        assert row.tolist() == tokens[i * 10 : (i + 1) * 10].tolist()


def test_packed_blocks_on_a_shard(tmp_path, texts, wordpiece):
    path = tmp_path / "train.ds"
    write_token_shard(path, encode_documents(texts[:30], wordpiece), wordpiece)
    shard = TokenShard(path)
    blocks = PackedBlocks(shard.tokens, 16)
    assert len(blocks) == len(shard) // 16
    last = len(blocks) - 1
    np.testing.assert_array_equal(blocks.get([last])[0].numpy(), shard.tokens[last * 16 : (last + 1) * 16])


def test_round_up():
    assert round_up(8000) == 8000 and round_up(8001) == 8064
    assert round_up(1) == 64 and round_up(100, 8) == 104


@pytest.mark.parametrize("kind, specials", [("wordpiece", BERT_SPECIALS), ("bpe", GPT_SPECIALS)])
def test_trained_tokenizer_size_and_reload(tmp_path, texts, kind, specials):
    tokenizer = train_tokenizer(texts, kind, 300, specials)
    assert 256 < len(tokenizer) <= 320
    for token in specials.as_list():
        assert tokenizer.convert_tokens_to_ids(token) is not None
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = texts[:25]
    assert reloaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert reloaded.all_special_tokens == tokenizer.all_special_tokens


@pytest.mark.parametrize(("kind", "specials"), [("wordpiece", BERT_SPECIALS), ("bpe", ROBERTA_SPECIALS),
                                                ("unigram", BERT_SPECIALS)])  # fmt: skip
def test_every_tokenizer_kind_is_a_working_mlm_tokenizer(tmp_path, texts, kind, specials):
    tokenizer = train_tokenizer(texts[:400], kind, 500, specials)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = reloaded("Return the sorted list.")["input_ids"]
    assert ids[0] == reloaded.cls_token_id and ids[-1] == reloaded.sep_token_id
    assert reloaded.mask_token_id is not None and len(reloaded) <= 512
    assert ids == tokenizer("Return the sorted list.")["input_ids"]
    assert reloaded.decode(ids, skip_special_tokens=True).replace(" ", "") == "Returnthesortedlist."


@pytest.mark.parametrize(("kind", "specials"), [("wordpiece", BERT_SPECIALS), ("bpe", GPT_SPECIALS)])
def test_the_same_corpus_trains_the_same_ids(texts, kind, specials):
    """`tokenizers` numbers WordPiece in hash-map order: without fmkit's renumbering two trainings differ in
    about a tenth of the ids, and so do two runs of one seed (Unigram cannot be made reproducible)."""
    first, second = (train_tokenizer(texts[:400], kind, 500, specials) for _ in range(2))
    assert first.get_vocab() == second.get_vocab()
    assert [first.convert_tokens_to_ids(t) for t in specials.as_list()] == list(range(len(set(specials.as_list()))))
