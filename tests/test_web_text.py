"""The web-text pipeline on real WARC files: what each stage keeps and drops, resume, errors, and training on it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY_TRAINING, read_metrics, run_recipe

from fmkit.data.tokenizer import train_tokenizer
from fmkit.tasks.clm import CLM_SPECIALS
from fmkit.webtext.config import WebTextConfig
from fmkit.webtext.extract import resiliparse_text, trafilatura_text
from fmkit.webtext.pipeline import WebTextPipeline
from fmkit.webtext.readers import Skip, _EndAtDamage, decode_page, looks_binary
from fmkit.webtext.sample_crawl import EMAILS, PUBLIC_IPS, page, prose_paragraphs, write_sample_crawl

SCRIPT = REPO / "data_scripts" / "web_text.py"
BOILERPLATE = ("We use cookies", "Accept all cookies", "Login", "Sport", "Read more stories", "Copyright 2026",
               "Privacy policy", "Terms of use", "Contact us")  # fmt: skip
SMALL_PAGES = ["--max_page_bytes", "100000"]  # the sample's 'huge' page is ~120 KB


def web_text(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"web_text.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def rows(folder: Path) -> list[dict]:
    return [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def by_url(documents: list[dict]) -> dict[str, dict]:
    return {doc["url"]: doc for doc in documents}


def rejected(out: Path) -> dict[str, str]:
    """url -> the folder (filter) that rejected it."""
    found = {}
    for folder in (out / "rejected").iterdir():
        for row in rows(folder):
            found[row["metadata"]["url"]] = folder.name
    return found


def normalized(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    return write_sample_crawl(tmp_path_factory.mktemp("crawl"), articles=18, files=2)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(prose_paragraphs(), "bpe", 512, CLM_SPECIALS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, crawl, tokenizer_dir):
    """One full run through the command line, with two workers and tokenization."""
    out = tmp_path_factory.mktemp("corpus") / "out"
    web_text([str(crawl.files[0].parent), "--output_dir", str(out), "--workers", "2", "--tokenizer",
              str(tokenizer_dir), *SMALL_PAGES])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def kept(corpus):
    return by_url(rows(corpus / "documents"))


# --- what each stage keeps and drops ------------------------------------------------------------------------


def test_articles_keep_their_main_text_without_boilerplate(crawl, kept):
    kept_articles = [url for url in crawl.articles if url in kept]
    assert len(kept_articles) >= len(crawl.articles) - len(crawl.near_copies) - len(crawl.exact_copies)
    for url in kept_articles:
        text = kept[url]["text"]
        for paragraph in crawl.articles[url].splitlines():
            if "@" not in paragraph:  # PII lines are rewritten, checked below
                assert normalized(paragraph) in normalized(text), url
        assert not [phrase for phrase in BOILERPLATE if phrase in text], url
    latin = kept["https://news.example.com/latin1"]
    assert "café served crème brûlée" in latin["text"]  # declared windows-1252, decoded as such


def test_both_extractors_drop_menus_banners_and_footers():
    paragraphs = prose_paragraphs()[:4]
    html = page("A title", paragraphs)
    for extract in (trafilatura_text, resiliparse_text):
        text = extract(html)
        assert all(normalized(p) in normalized(text) for p in paragraphs), extract.__name__
        assert not [phrase for phrase in BOILERPLATE if phrase in text], extract.__name__


def test_damaged_and_non_html_records_are_skipped_and_counted(crawl, corpus, kept):
    stats = json.loads((corpus / "stats.json").read_text())
    read = stats["stages"][0]
    assert read["stage"] == "read"
    for url, reason in crawl.broken.items():
        assert url not in kept
        assert read["rejected"].get(reason, 0) >= 1, reason
    assert read["rejected"]["not_a_response"] == 2 * 2 + 1  # a warcinfo and a resource record per file; cut's warcinfo
    report = (corpus / "report.md").read_text()
    for reason in set(crawl.broken.values()):
        assert f"### {reason}" in report
    assert "https://files.example.com/report.pdf" in report  # examples name the record
    # the records before the cut in the truncated file survive it
    assert {"https://news.example.com/before-cut/0", "https://news.example.com/before-cut/1"} <= set(kept)


def test_other_languages_are_dropped_and_english_kept(crawl, corpus, kept):
    gone = rejected(corpus)
    assert all(gone.get(url) == "language" for url in crawl.foreign)
    assert {doc["language"] for doc in kept.values()} == {"en"}
    assert min(doc["language_score"] for doc in kept.values()) >= 0.65


def test_spam_and_lorem_ipsum_fail_the_quality_filters(crawl, corpus, kept):
    gone = rejected(corpus)
    assert not set(crawl.spam) & set(kept)
    assert {gone[url] for url in crawl.spam} <= {"gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"}
    assert gone["https://lorem.example.com/template"] == "c4_quality"


def test_exact_and_near_duplicates_collapse_to_one(crawl, corpus, kept):
    gone = rejected(corpus)
    for copies, folder in ((crawl.exact_copies, "exact_duplicate"), (crawl.near_copies, "near_duplicate")):
        for copy, original in copies.items():
            assert (copy in kept) != (original in kept), (copy, original)
            assert gone[copy if original in kept else original] == folder
    texts = [doc["text"] for doc in kept.values()]
    assert len(set(texts)) == len(texts)


def test_emails_and_ip_addresses_are_replaced(crawl, corpus, kept):
    assert set(crawl.with_pii) <= set(kept)
    every_text = [doc["text"] for doc in kept.values()] + [
        row["text"] for folder in (corpus / "rejected").iterdir() for row in rows(folder)
    ]
    for secret in (*EMAILS, *PUBLIC_IPS):
        assert not [text for text in every_text if secret in text], secret
    assert all("@example." in kept[url]["text"] for url in crawl.with_pii)  # a placeholder took its place


def test_stats_account_for_every_document(corpus, kept):
    stats = json.loads((corpus / "stats.json").read_text())
    stages = stats["stages"]
    assert [s["stage"] for s in stages] == ["read", "extract", "language", "quality", "exact_dedup", "near_dedup"]
    for before, after in zip(stages, stages[1:], strict=False):
        assert after["documents_in"] == before["documents_out"]
    for stage in stages:
        assert stage["documents_in"] - stage["documents_out"] == sum(stage["rejected"].values()), stage
    assert stats["output"]["documents"] == stages[-1]["documents_out"] == len(kept)
    assert stats["output"]["bytes"] == sum(len(doc["text"].encode()) for doc in kept.values())
    assert stats["tokens"]["documents"] == len(kept)


# --- resume, determinism, errors ---------------------------------------------------------------------------


def test_a_killed_run_resumes_to_the_same_corpus(tmp_path, crawl, corpus, kept):
    """SIGKILL mid-run (one worker, after its first finished task), rerun: the same documents as the 2-worker run."""
    out = tmp_path / "out"
    args = [sys.executable, str(SCRIPT), str(crawl.files[0].parent), "--output_dir", str(out), "--workers", "1",
            *SMALL_PAGES]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    completions = out / ".work" / "logs" / "filter" / "completions"
    deadline = time.monotonic() + 300
    while not (completions.is_dir() and any(completions.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "stats.json").exists(), "the run finished before it could be interrupted"
    assert not list((out / "documents").glob("*.parquet"))  # nothing half-done is published
    web_text([str(crawl.files[0].parent), "--output_dir", str(out), "--workers", "1", *SMALL_PAGES])
    resumed = by_url(rows(out / "documents"))
    assert resumed == kept
    assert rejected(out) == rejected(corpus)


def test_rerun_with_other_settings_is_refused(crawl, corpus):
    result = web_text([str(crawl.files[0].parent), "--output_dir", str(corpus), "--languages", "[de]", *SMALL_PAGES],
                      check=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "settings.languages" in result.stderr and str(corpus) in result.stderr


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: ["/no/such/crawl.warc.gz", "--output_dir", str(tmp / "o")], "/no/such/crawl.warc.gz: no such"),
        (lambda tmp: [str(tmp / "x.pdf"), "--output_dir", str(tmp / "o")], "unknown input type"),
        (lambda tmp: [str(tmp / "page.html"), "--output_dir", str(tmp / "page.html" / "o")], "cannot write there"),
        (lambda tmp: [str(tmp / "page.html")], "output_dir is required"),
        (lambda tmp: [str(tmp / "page.html"), "--output_dir", str(tmp / "o"), "--language_threshold", "2"],
         "language_threshold 2.0"),
    ],
)  # fmt: skip
def test_bad_paths_and_settings_are_one_line_errors(tmp_path, make_args, message):
    (tmp_path / "x.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "page.html").write_text("<html><body><p>Hello.</p></body></html>")
    result = web_text(make_args(tmp_path), check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr


def test_saved_html_pages_and_jsonl_text_are_inputs_too(tmp_path):
    paragraphs = prose_paragraphs()
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "article.html").write_text(page("Saved page", paragraphs[:6]), encoding="utf-8")
    (pages / "scan.htm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    jsonl = tmp_path / "extracted.jsonl.gz"
    lines = [json.dumps({"text": "\n".join(paragraphs[6:12]), "url": "https://a.example/1", "id": "a1"}),
             "{not json", json.dumps({"title": "no text"}), ""]  # fmt: skip
    with gzip.open(jsonl, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    config = WebTextConfig(output_dir=str(tmp_path / "out"), workers=1)
    stats = WebTextPipeline(config, [str(pages), str(jsonl)]).run()
    documents = by_url(rows(tmp_path / "out" / "documents"))
    assert set(documents) == {(pages / "article.html").as_uri(), "https://a.example/1"}
    assert documents["https://a.example/1"]["text"] == "\n".join(paragraphs[6:12])  # text input is not re-extracted
    assert documents["https://a.example/1"]["id"] == "a1"
    assert stats["stages"][0]["rejected"] == {"bad_json": 1, "binary_payload": 1, "empty_page": 1, "missing_text": 1}


# --- reading damaged input ----------------------------------------------------------------------------------


def test_decoding_trusts_declared_charsets_and_refuses_garbage():
    text = "Crème brûlée, s'il vous plaît."
    assert decode_page(text.encode("cp1252"), "windows-1252", 0.01) == text
    meta = f'<meta charset="iso-8859-1"><p>{text}</p>'
    assert text in decode_page(meta.encode("latin-1"), None, 0.01)
    mostly_fine = ("A" * 500).encode() + b"\xff" + ("B" * 500).encode()  # a stray byte is dropped, not fatal
    assert decode_page(mostly_fine, "utf-8", 0.01) == "A" * 500 + "B" * 500
    with pytest.raises(Skip, match="invalid_encoding"):
        decode_page(bytes(range(128, 256)) * 4, "utf-8", 0.01)


def test_binary_payloads_are_recognised():
    assert looks_binary(b"%PDF-1.7 ...") and looks_binary(b"\x89PNG\r\n") and looks_binary(b"<html>\x00\x00")
    assert not looks_binary("<!DOCTYPE html><html><p>Grüße</p></html>".encode())


def test_a_truncated_gzip_stream_ends_quietly_and_says_why(tmp_path):
    data = gzip.compress(os.urandom(200_000))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with open(path, "rb") as raw:
        stream = _EndAtDamage(raw)
        recovered = b"".join(iter(lambda: stream.read(65536), b""))
    assert 0 < len(recovered) < 200_000
    assert "end-of-stream" in stream.damage


# --- the result trains --------------------------------------------------------------------------------------


def test_the_tokenized_corpus_trains_with_the_clm_recipe(tmp_path, corpus):
    tiny_gpt = json.dumps({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64})
    run_recipe(["--train_shards", str(corpus / "tokens"), "--eval_fraction", "0.1", "--model_config", tiny_gpt,
                "--vocab_size", "512", *TINY_TRAINING, "--output_dir", str(tmp_path / "clm"), "--max_steps", "12",
                "--log_every", "1", "--eval_every", "3", "--eval_batches", "2", "--samples", "1"],
               recipe="clm.py")  # fmt: skip
    losses = [m["loss"] for m in read_metrics(tmp_path / "clm") if "loss" in m]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0]
