"""Decoded, cached image arrays: bad images counted, labels, every source kind, cache reuse, embedded data."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import webdataset
from PIL import Image
from sklearn.datasets import load_digits

from fmkit.data.cache import cache_root
from fmkit.data.embedded_images import EMBEDDED_DESCRIPTION, embedded_images
from fmkit.data.image_array import image_array_from_numpy, load_image_array
from fmkit.errors import ConfigError, DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write(path: Path, color, fmt: str = "PNG", size=(12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


def folder_with_bad_images(root: Path) -> Path:
    write(root / "a.png", RED)
    write(root / "b.bmp", GREEN, "BMP")
    write(root / "c.tif", BLUE, "TIFF")
    noise = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(noise, "JPEG")
    (root / "d_truncated.jpg").write_bytes(noise.getvalue()[:1000])
    (root / "e_random.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "f_empty.png").write_bytes(b"")
    (root / "g_text.png").write_text("hello, I am text")
    write(root / "h_large.png", RED, size=(300, 300))
    return root


def test_bad_images_are_skipped_and_counted(tmp_path, caplog):
    root = folder_with_bad_images(tmp_path / "images")
    with caplog.at_level(logging.WARNING):
        array = load_image_array([str(root)], 6, max_pixels=10_000, workers=2)
    assert array.images.shape == (3, 6, 6, 3) and array.images.dtype == np.uint8
    assert not array.images.flags.writeable and isinstance(array.images, np.memmap)
    assert [tuple(image[3, 3]) for image in array.images] == [RED, GREEN, BLUE]
    assert array.labels is None
    skipped = {"empty": 1, "too_large": 1, "truncated": 1, "undecodable": 2}
    assert array.stats == {"images": 3, "skipped": skipped}
    assert array.description == f"3 images from {root} (5 skipped: 1 empty, 1 too_large, 1 truncated, 2 undecodable)"
    assert f"{root}: skipped 5 bad images" in caplog.text
    assert "1 too_large" in caplog.text and "decompression bombs" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_image_array([str(root)], 6, max_pixels=10_000, workers=2)
    assert "skipped 5 bad images" in caplog.text  # the cached load warns again


def test_npy_file_holds_only_the_good_images(tmp_path):
    root = folder_with_bad_images(tmp_path / "images")
    array = load_image_array([str(root)], 4, max_pixels=10_000, workers=1)
    on_disk = np.load(array.images.filename)
    assert on_disk.shape == (3, 4, 4, 3)
    assert os.path.getsize(array.images.filename) == array.images.offset + on_disk.nbytes


def test_every_image_bad_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    (tmp_path / "y.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"all 2 images are bad \(1 empty, 1 undecodable\)"):
        load_image_array([str(tmp_path)], 8, workers=1)


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError) as caught:
        load_image_array([str(tmp_path / "missing")], 8)
    assert str(caught.value) == f"{tmp_path / 'missing'}: no such file or folder"


def test_image_folder_labels(tmp_path):
    for label, color in (("dog", GREEN), ("cat", RED), ("eel", BLUE)):
        for i in range(2):
            write(tmp_path / label / f"{i}.png", color)
    array = load_image_array([str(tmp_path)], 5, labelled=True, workers=2)
    assert array.class_names == ["cat", "dog", "eel"]
    assert array.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert array.labels.dtype == np.int64
    colors = {0: RED, 1: GREEN, 2: BLUE}
    assert all(tuple(image[2, 2]) == colors[label] for image, label in zip(array.images, array.labels, strict=True))


def write_shard(path: Path, count: int) -> None:
    with webdataset.TarWriter(str(path)) as sink:
        for i in range(count):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(image, "PNG")
            sink.write({"__key__": f"s{i:02d}", "png": image.getvalue(), "cls": i})


def test_webdataset_labels_sort_numerically(tmp_path):
    write_shard(tmp_path / "shard.tar", 12)
    array = load_image_array([str(tmp_path / "shard.tar")], 4, labelled=True, workers=2)
    assert array.class_names == [str(i) for i in range(12)]  # "10" after "9"
    assert array.labels.tolist() == list(range(12))
    assert [int(image[0, 0, 0]) for image in array.images] == [i * 20 for i in range(12)]


def test_truncated_shard_is_counted_in_the_stats(tmp_path, caplog):
    write_shard(tmp_path / "full.tar", 6)
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        array = load_image_array([str(tmp_path / "cut.tar")], 4, labelled=True, workers=1)
    assert 0 < len(array.images) < 6
    assert array.stats["skipped"] == {"truncated_shard": 1}
    assert "skipped 1 bad images (1 truncated_shard)" in caplog.text


def test_hugging_face_class_label_order_is_kept(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["zebra", "ant"])})
    rows = {"image": [Image.new("RGB", (8, 8), color) for color in (RED, GREEN, BLUE)], "label": [1, 0, 0]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    array = load_image_array([f"hf:{tmp_path / 'ds'}"], 4, labelled=True, workers=2)
    assert array.class_names == ["zebra", "ant"]
    assert array.labels.tolist() == [1, 0, 0]
    assert [tuple(image[1, 1]) for image in array.images] == [RED, GREEN, BLUE]


def cache_folders() -> set[Path]:
    return {path for path in (cache_root() / "images").glob("*px-*") if path.is_dir()}


def test_cache_is_reused_and_rebuilt_after_a_change(tmp_path):
    write(tmp_path / "a.png", RED)
    write(tmp_path / "b.png", GREEN)
    before = cache_folders()
    first = load_image_array([str(tmp_path)], 3, workers=1)
    built = cache_folders() - before
    assert len(built) == 1
    written = (next(iter(built)) / "images.npy").stat().st_mtime_ns

    second = load_image_array([str(tmp_path)], 3, workers=1)
    assert cache_folders() - before == built  # no new build
    assert (next(iter(built)) / "images.npy").stat().st_mtime_ns == written
    assert second.images.filename == first.images.filename

    write(tmp_path / "b.png", BLUE)  # same size and name, new content and mtime
    os.utime(tmp_path / "b.png", ns=(written + 10**9, written + 10**9))
    third = load_image_array([str(tmp_path)], 3, workers=1)
    assert len(cache_folders() - before) == 2
    assert tuple(third.images[1, 1, 1]) == BLUE and tuple(first.images[1, 1, 1]) == GREEN


def test_arrays_from_numpy_are_made_once():
    calls = []

    def make():
        calls.append(1)
        return np.full((2, 4, 4, 3), 7, np.uint8), np.array([1, 0])

    first = image_array_from_numpy("test-made", "key-1", make, class_names=["a", "b"], description="two")
    second = image_array_from_numpy("test-made", "key-1", make, class_names=["a", "b"], description="two")
    assert len(calls) == 1
    assert (second.images == 7).all() and second.labels.tolist() == [1, 0] and second.class_names == ["a", "b"]
    assert first.stats == {"images": 2, "skipped": {}} and first.description == "two"
    image_array_from_numpy("test-made", "key-2", make, description="two")
    assert len(calls) == 2


def test_embedded_default_images(tmp_path, monkeypatch):
    embedded = embedded_images(16)
    train, probe_train, probe_test = embedded.train, embedded.probe_train, embedded.probe_test
    assert probe_train.images.shape == (1297, 16, 16, 3) and probe_test.images.shape == (500, 16, 16, 3)
    assert 800 <= len(train.images) - 1297 <= 1500  # the photograph crops
    assert train.labels is None and train.images.shape[1:] == (16, 16, 3)
    assert (train.images[:1297] == probe_train.images).all()
    assert probe_train.class_names == probe_test.class_names == [str(d) for d in range(10)]

    digits = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    assert probe_train.labels.tolist() == digits.target[order[:1297]].tolist()
    assert probe_test.labels.tolist() == digits.target[order[1297:]].tolist()
    assert set(probe_test.labels.tolist()) == set(range(10))
    assert (probe_train.images[..., 0] == probe_train.images[..., 2]).all()  # grey digits
    assert train.images[1297:].std(axis=(1, 2)).mean() > 10  # crops of photographs, not blank
    assert (embedded.photos.images == train.images[1297:]).all() and embedded.photos.labels is None
    assert "1,297" in probe_train.description and "digits" in EMBEDDED_DESCRIPTION

    monkeypatch.setenv("FMKIT_CACHE", str(tmp_path / "fresh-cache"))  # a rebuild gives the same arrays
    again = embedded_images(16)
    assert again.train.images.filename != train.images.filename
    assert (again.train.images == train.images).all()
    assert (again.probe_test.images == probe_test.images).all()


def test_named_embedded_sources_are_the_embedded_arrays():
    embedded = embedded_images(16)
    photos = load_image_array("embedded:photos", 16)
    assert photos.images.filename == embedded.photos.images.filename and photos.labels is None
    assert (photos.images[..., 0] != photos.images[..., 2]).any()  # colour, unlike the digits
    for split, expected in (("train", embedded.probe_train), ("test", embedded.probe_test)):
        digits = load_image_array([f"embedded:digits:{split}"], 16, labelled=True)
        assert digits.images.filename == expected.images.filename and digits.class_names == expected.class_names


@pytest.mark.parametrize(
    ("sources", "labelled", "error", "message"),
    [
        (["embedded:photos"], True, DataError, "embedded:photos: these images have no labels"),
        (["embedded:cats"], False, DataError, r"embedded:cats: unknown named source \(expected fashion-mnist:"),
        (["embedded:photos", "more/"], False, ConfigError, r"a named source \(embedded:photos\) must be the only"),
    ],
)
def test_bad_named_source_is_a_one_line_error(sources, labelled, error, message):
    with pytest.raises(error, match=message):
        load_image_array(sources, 16, labelled=labelled)
