"""Fashion-MNIST: the IDX reader on the Debian package's files and on damaged ones, the named source, the default
probe set and its digits fallback, and how a run names the probe set it was measured on."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from PIL import Image

from fmkit.data.fashion_mnist import (
    CLASS_NAMES,
    DIRECTORY_ENV,
    SPLIT_FILES,
    fashion_mnist_directory,
    fashion_mnist_installed,
    stratified_subset,
)
from fmkit.data.idx import read_idx, read_labelled_images
from fmkit.data.image_array import load_image_array
from fmkit.data.named_images import DIGITS_PROBE, FASHION_MNIST_PROBE, default_probe_sources, default_train_sources
from fmkit.errors import DataError
from fmkit.metrics import MetricsLog
from fmkit.tasks import get_task

PACKAGE = fashion_mnist_directory()
# CI installs the package, so there these tests must run; elsewhere they need it installed.
needs_package = pytest.mark.skipif(
    not fashion_mnist_installed() and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
FAKE_PER_CLASS = {"train": 4, "test": 2}
"""Images per class in the small stand-in folder the source tests write."""


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits written as gzipped IDX files of random 28x28 images, labels interleaved, the folder in use."""
    rng = np.random.default_rng(0)
    written = {}
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        labels = np.tile(np.arange(10, dtype=np.uint8), FAKE_PER_CLASS[split])
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_gz(tmp_path / images_name, idx_bytes(images))
        write_gz(tmp_path / labels_name, idx_bytes(labels))
        written[split] = images, labels
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path))
    return written


# -- the IDX reader ---------------------------------------------------------------------------------------------


@needs_package
@pytest.mark.parametrize(("split", "count"), [("train", 60_000), ("test", 10_000)])
def test_reads_the_package_files(split, count):
    images, labels = read_labelled_images(*(PACKAGE / name for name in SPLIT_FILES[split]))
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [count // 10] * 10
    assert images.min() == 0 and images.max() == 255
    assert 50 < images.mean() < 100  # clothing on a black background, not noise or zeros


def test_reads_every_value_type_gzipped_or_not(tmp_path):
    values = np.arange(-6, 6).reshape(2, 3, 2)
    for code, dtype in ((0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)):
        plain = tmp_path / f"{code}.idx"
        plain.write_bytes(idx_bytes(values.astype(dtype), code))
        for path in (plain, write_gz(tmp_path / f"{code}.idx.gz", plain.read_bytes())):
            array = read_idx(path)
            assert array.dtype == dtype and array.dtype.isnative and (array == values).all(), (code, path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda good: b"PK\x03\x04" + good[4:], "not an IDX file (expected magic 00 00"),
        (lambda good: good[:6], "truncated IDX header (expected 16 bytes for 3 dimensions)"),
        (lambda good: good[:-5], "truncated: 1,563 data bytes, expected 1,568 for shape (2, 28, 28)"),
        (lambda good: good + b"\0", "trailing bytes: 1,569 data bytes, expected 1,568"),
    ],
)
def test_damaged_file_is_a_one_line_error_naming_it(tmp_path, damage, message):
    good = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    path = write_gz(tmp_path / "images.gz", damage(good))
    with pytest.raises(DataError) as caught:
        read_idx(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cut_gzip_and_missing_file_are_one_line_errors(tmp_path):
    whole = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: damaged gzip data"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match=r"absent\.gz: cannot read"):
        read_idx(tmp_path / "absent.gz")


def test_label_count_must_match_the_images(tmp_path):
    images = write_gz(tmp_path / "images.gz", idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))
    labels = write_gz(tmp_path / "labels.gz", idx_bytes(np.zeros(2, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"labels\.gz: 2 labels for the 3 images of .*images\.gz"):
        read_labelled_images(images, labels)


# -- the named source -------------------------------------------------------------------------------------------


def test_source_is_rgb_at_the_stored_size_with_fashion_mnist_classes(fake_fashion_mnist):
    grey, labels = fake_fashion_mnist["test"]
    array = load_image_array("fashion-mnist:test", 12, labelled=True)
    assert array.images.shape == (20, 12, 12, 3) and array.images.dtype == np.uint8
    assert array.labels.tolist() == labels.tolist() and array.class_names == CLASS_NAMES
    assert (array.images[..., 0] == array.images[..., 1]).all() and (array.images[..., 1] == array.images[..., 2]).all()
    resized = np.asarray(Image.fromarray(grey[3]).resize((12, 12), Image.Resampling.BICUBIC))
    assert (array.images[3, ..., 0] == resized).all()
    assert "Fashion-MNIST test" in array.description


def test_subset_is_fixed_balanced_and_independent_of_the_order_asked(fake_fashion_mnist):
    _grey, labels = fake_fashion_mnist["train"]
    subset = load_image_array("fashion-mnist:train:20", 8, labelled=True)
    chosen = stratified_subset(labels, 20, "fashion-mnist:train:20")
    assert np.bincount(subset.labels).tolist() == [2] * 10
    assert subset.labels.tolist() == labels[chosen].tolist()
    assert (np.diff(chosen) > 0).all()  # file order, classes interleaved
    assert (chosen == stratified_subset(labels, 20, "again")).all()
    assert (load_image_array("fashion-mnist:train", 8, labelled=True).images[chosen] == subset.images).all()
    assert "20 Fashion-MNIST train images at 8x8, 2 per class" in subset.description


def test_subset_draws_differ_from_the_first_images_of_each_class():
    labels = np.repeat(np.arange(10), 100)
    chosen = stratified_subset(labels, 100, "x")
    assert np.bincount(labels[chosen]).tolist() == [10] * 10
    assert not (chosen % 100 < 10).all()  # drawn, not the first ten of each class


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("fashion-mnist:train:25", "fashion-mnist:train:25: expected a count that is a positive multiple of 10"),
        ("fashion-mnist:train:50", "and at most 40, got 50"),
        ("fashion-mnist:train:many", "fashion-mnist:train:many: expected a count of images after the split"),
        ("fashion-mnist:validation", "fashion-mnist:validation: unknown split (expected train or test)"),
    ],
)
def test_bad_source_spelling_is_a_one_line_error(fake_fashion_mnist, source, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_image_array(source, 8, labelled=True)


def test_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path))
    assert not fashion_mnist_installed()
    with pytest.raises(DataError) as caught:
        load_image_array("fashion-mnist:train", 8, labelled=True)
    assert "apt-get install dataset-fashion-mnist" in str(caught.value) and str(tmp_path) in str(caught.value)


# -- the default probe set and how runs name it -----------------------------------------------------------------


def test_default_images_are_fashion_mnist_when_installed_else_the_embedded_ones(fake_fashion_mnist, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    assert default_probe_sources() == FASHION_MNIST_PROBE == ("fashion-mnist:train:10000", "fashion-mnist:test:2000")
    assert default_train_sources() == "fashion-mnist:train"
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "empty"))
    assert default_probe_sources() == DIGITS_PROBE
    assert default_train_sources() is None  # the embedded digits and photographs


@needs_package
def test_default_probe_set_is_ten_thousand_and_two_thousand_balanced_images():
    train, test = (load_image_array(source, 28, labelled=True) for source in default_probe_sources())
    assert np.bincount(train.labels).tolist() == [1000] * 10 and np.bincount(test.labels).tolist() == [200] * 10
    grey, labels = read_labelled_images(*(PACKAGE / name for name in SPLIT_FILES["test"]))
    chosen = stratified_subset(labels, 2000, "test")
    assert (test.images[..., 0] == grey[chosen]).all()  # at 28 pixels the images are the files' own


def probe_run(tmp_path: Path, *overrides: str) -> tuple[dict, str]:
    """Set up a tiny rotation task in this process; its first evaluation record (as metrics.jsonl and TensorBoard
    get it) and the model card's data text."""
    task_class = get_task("rotation")
    backbone = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
    config = task_class.config_class(
        output_dir=str(tmp_path / "run"), image_size=16, stored_size=16, per_device_batch_size=256,
        heldout_images=16, backbone_config=backbone, **dict(zip(overrides[::2], overrides[1::2], strict=True)),
    )  # fmt: skip
    task = task_class(config)
    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path / "run"))
    accelerator.init_trackers("probe")
    model = task.setup(accelerator)
    metrics = task.evaluate(model, accelerator, step=0)
    log = MetricsLog(tmp_path / "metrics.jsonl", accelerator, None)
    log.log(0, metrics)  # TensorBoard takes scalars only: the probe set's name must not reach it
    accelerator.end_training()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    return record, task.card_details().data


def test_runs_name_the_digits_probe_set_when_fashion_mnist_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "empty"))
    record, card_data = probe_run(tmp_path)
    assert record["probe_set"] == "embedded:digits:train -> embedded:digits:test"
    assert "1,297 scikit-learn handwritten digits" in card_data and "embedded:digits:train" in card_data
    assert "Fashion-MNIST" not in card_data  # trained on the embedded images too
    for name in ("linear_probe_accuracy", "knn_accuracy", "few_shot_accuracy"):
        assert 0.1 < record[name] <= 1.0 and 0.1 < record[f"{name}_random_backbone"] <= 1.0, record


def test_runs_name_a_fashion_mnist_probe_set(fake_fashion_mnist, tmp_path):
    record, card_data = probe_run(
        tmp_path, "probe_train_images", "fashion-mnist:train:40", "probe_test_images", "fashion-mnist:test"
    )
    assert record["probe_set"] == "fashion-mnist:train:40 -> fashion-mnist:test"
    assert "40 Fashion-MNIST train images" in card_data and "all Fashion-MNIST test images" in card_data
    assert card_data.startswith("Trained on all Fashion-MNIST train images")  # the default training images
