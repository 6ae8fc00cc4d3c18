"""Reading documents from local files: formats, bad records, undecodable bytes, folders and globs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmkit.data.documents import ReadStats, TextSource, expand_files, iter_documents
from fmkit.errors import DataError


def read(*paths, text_field: str = "text") -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    docs = list(iter_documents(TextSource(files=tuple(str(p) for p in paths), text_field=text_field), stats))
    return docs, stats


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_txt_paragraphs_are_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First line\nstill first.\n\n\n   \nSecond paragraph.\n\nThird\n", encoding="utf-8")
    docs, stats = read(path)
    assert docs == ["First line\nstill first.", "Second paragraph.", "Third"]
    assert stats.documents == 3 and not stats.skipped and stats.replaced_bytes == 0


def test_jsonl_skips_bad_records_by_reason(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [
        json.dumps({"body": "one", "text": "ignored field"}),
        "{not json",
        json.dumps({"other": "no body here"}),
        json.dumps({"body": 42}),
        json.dumps({"body": None}),
        json.dumps(["a", "list"]),
        json.dumps({"body": "two"}),
        "",
        json.dumps({"body": "three"}),
        '{"body": "truncated',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs, stats = read(path, text_field="body")
    assert docs == ["one", "two", "three"]
    assert stats.documents == 3
    assert stats.skipped == {"invalid JSON lines": 2, "records without a string 'body'": 4}
    assert stats.as_dict()["skipped"] == dict(stats.skipped)


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_text_column(tmp_path, sep, suffix):
    path = tmp_path / f"a{suffix}"
    rows = ["id" + sep + "content", f'1{sep}"hello, world"', f'2{sep}"two\nlines"']
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    docs, stats = read(path, text_field="content")
    assert docs == ["hello, world", "two\nlines"]
    assert stats.documents == 2


def test_csv_without_the_column_is_a_one_line_error(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,body,title\n1,hello,x\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read(path)
    message = str(error.value)
    assert str(path) in message and "'text'" in message
    assert "id, body, title" in message
    assert "\n" not in message


def test_parquet_skips_nulls(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": ["alpha", None, "beta", None]}), path)
    docs, stats = read(path)
    assert docs == ["alpha", "beta"]
    assert stats.skipped == {"null 'text' values": 2}


def test_parquet_without_the_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["alpha"]}), path)
    with pytest.raises(DataError, match="no column 'text'.*body"):
        read(path)


def test_gzipped_jsonl_and_txt(tmp_path):
    jsonl, txt = tmp_path / "a.jsonl.gz", tmp_path / "b.txt.gz"
    jsonl.write_bytes(gzip.compress(b'{"text": "from jsonl"}\n{"text": "again"}\n'))
    txt.write_bytes(gzip.compress(b"para one\n\npara two\n"))
    docs, stats = read(jsonl, txt)
    assert docs == ["from jsonl", "again", "para one", "para two"]
    assert stats.documents == 4


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_undecodable_bytes_are_replaced_and_counted(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    body = b"caf\xe9 ok \xff\xfe"
    content = {".txt": body + b"\n", ".jsonl": b'{"text": "' + body + b'"}\n', ".csv": b"text\n" + body + b"\n"}
    path.write_bytes(content[suffix])
    docs, stats = read(path)
    assert docs == ["caf\ufffd ok \ufffd\ufffd"]
    assert stats.replaced_bytes == 3


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_legitimate_replacement_character_is_not_counted(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    text = "keep \ufffd as is"
    content = {".txt": text + "\n", ".jsonl": json.dumps({"text": text}, ensure_ascii=False) + "\n"}
    path.write_text(content.get(suffix, f"text\n{text}\n"), encoding="utf-8")
    docs, stats = read(path)
    assert docs == [text]
    assert stats.replaced_bytes == 0


@pytest.mark.parametrize(
    "suffix, content",
    [(".csv", "text,id\nhello,1\n"), (".jsonl", '{"text": "hello"}\n'), (".txt", "hello\n")],
    ids=["csv", "jsonl", "txt"],
)
def test_utf8_byte_order_mark_is_ignored(tmp_path, suffix, content):
    path = tmp_path / f"a{suffix}"
    path.write_bytes(content.encode("utf-8-sig"))
    docs, stats = read(path)
    assert docs == ["hello"] and not stats.skipped


def test_empty_documents_are_skipped_and_counted(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": ""}, {"text": "  \n "}, {"text": "kept"}])
    csv = tmp_path / "b.csv"
    csv.write_text('text\n""\nalso kept\n', encoding="utf-8")
    docs, stats = read(jsonl, csv)
    assert docs == ["kept", "also kept"]
    assert stats.skipped == {"empty documents": 3}
    assert stats.documents == 2


def test_folder_is_expanded_recursively_sorted_known_suffixes_only(tmp_path):
    for name in ["b.txt", "a.jsonl", "sub/c.csv", "sub/deeper/d.jsonl.gz", "sub/notes.pdf", "model.bin", "e.parquet"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = expand_files([str(tmp_path)])
    expected = ["a.jsonl", "b.txt", "e.parquet", "sub/c.csv", "sub/deeper/d.jsonl.gz"]
    assert [p.relative_to(tmp_path).as_posix() for p in found] == expected


def test_folder_documents_come_in_sorted_order(tmp_path):
    (tmp_path / "z").mkdir()
    write_jsonl(tmp_path / "z" / "1.jsonl", [{"text": "third"}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "second"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "first"}])
    assert read(tmp_path)[0] == ["first", "second", "third"]


def test_glob_is_sorted_and_combines_with_files(tmp_path):
    for name in ["c.txt", "a.txt", "b.txt"]:
        (tmp_path / name).write_text(name + "\n", encoding="utf-8")
    docs, _ = read(tmp_path / "*.txt", tmp_path / "a.txt")
    assert docs == ["a.txt", "b.txt", "c.txt", "a.txt"]


@pytest.mark.parametrize("name", ["missing.jsonl", "nothing-*.jsonl"])
def test_missing_path_or_empty_glob_is_a_one_line_error(tmp_path, name):
    pattern = str(tmp_path / name)
    with pytest.raises(DataError) as error:
        expand_files([pattern])
    assert pattern in str(error.value)
    assert "\n" not in str(error.value)


def test_folder_without_text_files_is_an_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="no text files found"):
        expand_files([str(tmp_path)])
