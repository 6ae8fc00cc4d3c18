"""Image-text pairs from every source, bad pairs replaced and counted, retrieval metrics, pixels = the processor's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from fmkit.data.image_text import PairBatches, center_crop, load_pairs, random_resized_crop
from fmkit.data.images import decode_image
from fmkit.data.loader import EVAL_STREAM, TRAIN_STREAM
from fmkit.errors import DataError
from fmkit.eval.retrieval import recall_at_k
from fmkit.models.clip_processor import clip_image_processor, clip_tokenizer
from fmkit.tasks.clip import Tokenize

MAX_PIXELS = 10_000_000


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = image_bytes(99, "JPEG", (64, 64))
    return data[: len(data) // 2]


def write_shard(path: Path, samples: list[dict]) -> None:
    with webdataset.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.fixture
def sources(tmp_path) -> dict[str, object]:
    """The same six good pairs as a shard (txt and json captions), a CSV, a JSONL and a HF dataset."""
    good = [(image_bytes(i, "PNG" if i % 2 else "JPEG"), f"caption number {i}") for i in range(6)]
    ext = ["jpg" if i % 2 == 0 else "png" for i in range(6)]
    shard = tmp_path / "pairs-000.tar"
    write_shard(shard, [{"__key__": f"{i:03d}", ext[i]: data, "txt": caption} if i < 3 else
                        {"__key__": f"{i:03d}", ext[i]: data, "json": json.dumps({"caption": caption}).encode()}
                        for i, (data, caption) in enumerate(good)])  # fmt: skip
    folder = tmp_path / "files"
    folder.mkdir()
    for i, (data, _caption) in enumerate(good):
        (folder / f"{i}.{ext[i]}").write_bytes(data)
    rows = [{"image": f"files/{i}.{ext[i]}", "caption": caption} for i, (_data, caption) in enumerate(good)]
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import datasets

    hf = tmp_path / "hf"
    table = {"image": [{"bytes": data, "path": None} for data, _ in good], "caption": [c for _, c in good]}
    datasets.Dataset.from_dict(table, features=datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string")})).save_to_disk(str(hf))  # fmt: skip
    return {"good": good, "shard": str(shard), "csv": str(csv), "jsonl": str(jsonl), "hf": f"hf:{hf}"}


@pytest.mark.parametrize("kind", ["shard", "csv", "jsonl", "hf"])
def test_every_source_gives_the_same_pairs(sources, kind):
    pairs = load_pairs(sources[kind], "image", "caption")
    assert len(pairs) == 6
    for i, (data, caption) in enumerate(sources["good"]):
        assert pairs.caption(i) == caption
        expected = np.asarray(decode_image(data, MAX_PIXELS))
        assert np.array_equal(np.asarray(pairs.images.load(i, MAX_PIXELS)), expected)


def test_bad_pairs_are_replaced_by_the_next_good_one_and_counted(tmp_path):
    shard = tmp_path / "mixed.tar"
    write_shard(shard, [
        {"__key__": "0", "png": image_bytes(0), "txt": "first"},
        {"__key__": "1", "jpg": truncated_jpeg(), "txt": "truncated image"},
        {"__key__": "2", "jpg": b"not an image at all", "txt": "undecodable image"},
        {"__key__": "3", "png": image_bytes(3), "txt": "   "},
        {"__key__": "4", "png": image_bytes(4), "txt": "fourth"},
        {"__key__": "5", "png": image_bytes(5)},  # no caption at all: dropped while listing
        {"__key__": "6", "txt": "no image"},
    ])  # fmt: skip
    pairs = load_pairs(str(shard), "image", "caption")
    assert len(pairs) == 5
    assert pairs.skipped == {"sample_without_caption": 1, "sample_without_image": 1}
    make = PairBatches(pairs, Tokenize(clip_tokenizer(16), 16), 24, MAX_PIXELS, 0, EVAL_STREAM, train=False)
    batch = make(np.arange(5), np.arange(5))
    assert batch["pixel_values"].shape == (5, 3, 24, 24)
    assert batch["captions"] == ["first", "fourth", "fourth", "fourth", "fourth"]
    assert sorted(reason for reason, _ in batch["skipped"]) == [
        "empty_caption", "empty_caption", "empty_caption", "truncated", "undecodable", "undecodable",
    ]  # fmt: skip
    assert any(name.endswith(":1") for _, name in batch["skipped"])


def test_tables_count_rows_without_caption_or_file_and_name_missing_columns(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    table = tmp_path / "t.jsonl"
    table.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "gone.png", "caption": "x"}\n'
                     '{"image": "a.png", "caption": ""}\nnot json\n')  # fmt: skip
    pairs = load_pairs(str(table), "image", "caption")
    assert len(pairs) == 1
    assert pairs.skipped == {"missing_image_file": 1, "empty_caption": 1, "bad_json_line": 1}
    with pytest.raises(DataError, match=r"t.jsonl: no column 'filepath' \(image_column\); columns: caption, image"):
        load_pairs(str(table), "filepath", "caption")


def test_training_crops_are_seeded_per_sample_and_eval_crops_match_the_processor():
    photo = Path(__import__("skimage").__file__).parent / "data" / "chelsea.png"
    image = decode_image(photo.read_bytes(), MAX_PIXELS)
    ours = torch.from_numpy(np.asarray(center_crop(image, 64), dtype=np.float32)).permute(2, 0, 1) / 255
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    ours = (ours - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    theirs = clip_image_processor(64, mean, std)(image, return_tensors="pt")["pixel_values"][0]
    # One 8-bit level after normalisation is 1/255/0.26 = 0.015; a wrong crop or statistics is far more.
    assert (ours - theirs).abs().max() < 0.02
    square = image.crop((0, 0, 300, 300))  # 451x300 leaves no room for a 90% crop at aspect <= 4:3
    first = random_resized_crop(square, 64, np.random.default_rng(7))
    again = random_resized_crop(square, 64, np.random.default_rng(7))
    other = random_resized_crop(square, 64, np.random.default_rng(8))
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert first.size == (64, 64)


def test_train_batches_depend_only_on_positions(sources):
    pairs = load_pairs(sources["shard"], "image", "caption")
    make = PairBatches(pairs, Tokenize(clip_tokenizer(16), 16), 24, MAX_PIXELS, 3, TRAIN_STREAM, train=True)
    one = make(np.array([2, 4]), np.array([10, 11]))
    two = make(np.array([2, 4]), np.array([10, 11]))
    moved = make(np.array([2, 4]), np.array([12, 13]))
    assert torch.equal(one["pixel_values"], two["pixel_values"])
    assert not torch.equal(one["pixel_values"], moved["pixel_values"])
    assert one["input_ids"].shape == (2, 16) and one["input_ids"][0, 0] == 49406


def test_recall_counts_any_pair_with_the_same_caption():
    image = torch.eye(4)
    text = torch.eye(4)[[1, 0, 2, 3]]  # rows 0 and 1 swapped
    exact = recall_at_k(image, text, ["a", "b", "c", "d"], (1,))
    assert exact["image_to_text_recall@1"] == 0.5 and exact["text_to_image_recall@1"] == 0.5
    shared = recall_at_k(image, text, ["a", "a", "c", "d"], (1,))  # 0 and 1 share a caption: both right
    assert shared["image_to_text_recall@1"] == 1.0 and shared["text_to_image_recall@1"] == 1.0
