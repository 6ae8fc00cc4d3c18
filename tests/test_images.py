"""Decoding images (formats, modes, orientation, bad bytes) and listing sources (folders, globs, shards, HF)."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import webdataset
from PIL import Image

from fmkit.data.images import (
    BadImage,
    Listing,
    decode_image,
    iter_image_records,
    resize_grey_squares,
    resize_square,
)
from fmkit.errors import DataError

MAX = 10_000_000
COLOR = (200, 30, 60)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    image = decode_image(data, MAX)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def reason(data: bytes, max_pixels: int = MAX) -> str:
    with pytest.raises(BadImage) as caught:
        decode_image(data, max_pixels)
    return caught.value.reason


@pytest.mark.parametrize("fmt, tolerance", [("PNG", 0), ("JPEG", 6), ("WEBP", 6), ("BMP", 0), ("TIFF", 0),
                                            ("GIF", 0)])  # fmt: skip
def test_formats_decode_to_rgb(fmt, tolerance):
    values = pixels(encode(Image.new("RGB", (16, 12), COLOR), fmt))
    assert values.shape == (12, 16, 3)
    assert np.abs(values - COLOR).max() <= tolerance


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert (pixels(data) == (255, 0, 0)).all()


def grey(values: list, mode: str) -> Image.Image:
    array = np.array([values], dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}.get(mode, np.uint8))
    return Image.fromarray(array) if mode in ("I;16", "I", "F") else Image.fromarray(array).convert(mode)


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (grey([0, 77, 255], "L"), "PNG", [0, 77, 255]),
        (Image.frombytes("1", (8, 1), bytes([0b10100000])), "PNG", [255, 0, 255, 0, 0, 0, 0, 0]),
        (grey([0, 257 * 100, 65535], "I;16"), "PNG", [0, 100, 255]),
        (Image.frombytes("I;16B", (3, 1), np.array([0, 257 * 100, 65535], ">u2").tobytes()), "TIFF", [0, 100, 255]),
        (grey([0, 1000, 65535], "I"), "TIFF", [0, 4, 255]),
        (grey([0.0, 0.5, 1.0], "F"), "TIFF", [0, 128, 255]),
    ],
    ids=["L", "1-bit", "16-bit PNG", "16-bit big-endian TIFF", "32-bit int", "float"],
)
def test_grey_modes_scale_to_8_bit(image, fmt, expected):
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == image.mode
    values = pixels(data)[0]
    assert values.tolist() == [[v, v, v] for v in expected]


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 255), (10, 20, 30, 0), (0, 0, 0, 128)])
    assert pixels(encode(rgba, "PNG"))[0].tolist() == [[10, 20, 30], [255, 255, 255], [127, 127, 127]]

    la = Image.new("LA", (2, 1))
    la.putdata([(50, 255), (50, 0)])
    assert pixels(encode(la, "PNG"))[0].tolist() == [[50, 50, 50], [255, 255, 255]]

    pa = la.convert("RGBA").convert("PA")
    assert pa.mode == "PA"
    assert pixels(encode(pa, "TIFF"))[0].tolist() == [[50, 50, 50], [255, 255, 255]]


def test_palette_with_transparent_index():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    data = encode(image, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert pixels(data)[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_cmyk_and_ycbcr():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])
    assert pixels(encode(cmyk, "TIFF"))[0].tolist() == [[255, 255, 255], [0, 255, 255], [0, 0, 0]]

    ycbcr = Image.new("RGB", (2, 2), COLOR).convert("YCbCr")
    data = encode(ycbcr, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert np.abs(pixels(data) - COLOR).max() <= 3


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (10, 0, 20, 10))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    upright = pixels(encode(image, "JPEG", quality=95))
    rotated = pixels(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert upright.shape == (10, 20, 3)
    assert rotated.shape == (20, 10, 3)
    assert np.abs(rotated[2, 5] - (255, 0, 0)).max() < 30  # red on top
    assert np.abs(rotated[17, 5] - (0, 0, 255)).max() < 30  # blue below


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data stops short: decoding it would fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64)))


def test_bad_bytes_raise_bad_image_with_a_reason():
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert reason(jpeg[: len(jpeg) // 2]) == "truncated"
    assert reason(np.random.default_rng(0).bytes(5000)) == "undecodable"
    assert reason(b"just some text, not an image\n") == "undecodable"
    assert reason(b"") == "empty"


def test_too_large_is_refused_from_the_header():
    # The pixel data is missing, so "too_large" (not "truncated") proves the refusal came before decoding.
    assert reason(png_claiming(200, 100), max_pixels=19_999) == "too_large"
    assert reason(png_claiming(200, 100), max_pixels=20_000) == "truncated"
    # Beyond Pillow's own bomb limit, its DecompressionBombError is caught too.
    assert reason(png_claiming(100_000, 100_000), max_pixels=10**11) == "too_large"


def test_grey_squares_resize_like_colour_images_into_three_equal_channels():
    grey = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    resized = resize_grey_squares(grey, 36)
    assert resized.shape == (3, 36, 36, 3) and resized.dtype == np.uint8
    for image, out in zip(grey, resized, strict=True):
        assert (out == resize_square(Image.fromarray(image).convert("RGB"), 36)).all()


def test_named_sources_are_not_listed_as_files():
    with pytest.raises(DataError, match="fashion-mnist:train: a named source cannot be listed as files here"):
        list(iter_image_records(["fashion-mnist:train"], labelled=True))


def test_resize_square_scales_the_shorter_side_and_crops_the_centre():
    image = Image.new("RGB", (90, 30), (255, 0, 0))
    image.paste((0, 255, 0), (30, 0, 60, 30))  # green middle third
    square = resize_square(image, 10)
    assert square.shape == (10, 10, 3) and square.dtype == np.uint8
    assert np.abs(square[:, 1:-1].astype(int) - (0, 255, 0)).max() <= 2


def write(path: Path, color=COLOR, fmt: str = "PNG", size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(Image.new("RGB", size, color), fmt))
    return path


def names(records) -> list[str]:
    return [Path(record.name).name for record in records]


def test_folder_is_recursive_sorted_and_case_insensitive(tmp_path):
    write(tmp_path / "b" / "z.PNG")
    write(tmp_path / "a.JPG", fmt="JPEG")
    write(tmp_path / "b" / "c" / "y.webp", fmt="WEBP")
    (tmp_path / "notes.txt").write_text("not an image")
    records = list(iter_image_records([str(tmp_path)], labelled=False))
    assert names(records) == ["a.JPG", "y.webp", "z.PNG"]  # b/c/y.webp sorts before b/z.PNG
    assert all(record.label is None for record in records)
    assert (np.asarray(decode_image(records[2].read(), MAX)) == COLOR).all()


def test_image_folder_labels_and_globs(tmp_path):
    for label in ("cat", "dog"):
        write(tmp_path / "train" / label / "one.png")
        write(tmp_path / "train" / label / "deeper" / "two.png")
    records = list(iter_image_records([str(tmp_path / "train")], labelled=True))
    assert [record.label for record in records] == ["cat", "cat", "dog", "dog"]

    globbed = list(iter_image_records([str(tmp_path / "train" / "*" / "one.png")], labelled=True))
    assert [(Path(r.name).parent.name, r.label) for r in globbed] == [("cat", "cat"), ("dog", "dog")]


def test_labelled_folder_without_class_folders_is_an_error(tmp_path):
    write(tmp_path / "flat.png")
    with pytest.raises(DataError, match="has no label") as caught:
        list(iter_image_records([str(tmp_path)], labelled=True))
    assert "<class name>" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_and_empty_sources_are_one_line_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as caught:
        list(iter_image_records([str(missing)], labelled=False))
    assert str(caught.value) == f"{missing}: no such file or folder"

    with pytest.raises(DataError, match="matches no file"):
        list(iter_image_records([str(tmp_path / "*.png")], labelled=False))

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        list(iter_image_records([str(tmp_path / "empty")], labelled=False))

    text = tmp_path / "a.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_image_records([str(text)], labelled=False))


def write_shard(path: Path, count: int, label_member: str = "cls") -> list[bytes]:
    """A WebDataset shard written by webdataset's own TarWriter; returns the image bytes in order."""
    images = [encode(Image.new("RGB", (8, 8), (i * 20, 0, 0)), "PNG") for i in range(count)]
    with webdataset.TarWriter(str(path)) as sink:
        for i, data in enumerate(images):
            label = i % 3 if label_member == "cls" else {"label": f"class{i % 3}"}
            sink.write({"__key__": f"sample{i:03d}", "png": data, label_member: label})
    return images


def test_webdataset_shard_with_cls_labels(tmp_path):
    images = write_shard(tmp_path / "shard-000.tar", 7)
    records = list(iter_image_records([str(tmp_path / "shard-000.tar")], labelled=True))
    assert [record.label for record in records] == [str(i % 3) for i in range(7)]
    assert [record.read() for record in records] == images
    assert records[0].name.endswith("shard-000.tar:sample000")


def test_webdataset_json_labels_and_folder_of_shards(tmp_path):
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "a.tar", 3, label_member="json")
    write_shard(tmp_path / "shards" / "b.tar", 2, label_member="json")
    records = list(iter_image_records([str(tmp_path / "shards")], labelled=True))
    assert [record.label for record in records] == ["class0", "class1", "class2", "class0", "class1"]


def test_truncated_and_corrupt_shards_keep_their_readable_part(tmp_path):
    shard = tmp_path / "full.tar"
    images = write_shard(shard, 10)
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        members = {info.name: info for info in tar}
    fifth_image, fifth_label = members["sample005.png"], members["sample005.cls"]

    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: fifth_image.offset_data + 40])  # inside sample005's image
    listing = Listing()
    records = list(iter_image_records([str(cut)], labelled=True, listing=listing))
    assert [record.read() for record in records] == images[:5]
    assert listing.skipped == {"truncated_shard": 1}

    corrupt = tmp_path / "corrupt.tar"
    header = fifth_label.offset  # sample005's first header block, overwritten with garbage
    corrupt.write_bytes(data[:header] + b"\xff" * 512 + data[header + 512 :])
    listing = Listing()
    records = list(iter_image_records([str(corrupt)], labelled=True, listing=listing))
    # Reading stops at the damage; sample004, just before it, may have lost members there and is dropped too.
    assert [record.read() for record in records] == images[:4]
    assert listing.skipped == {"truncated_shard": 1}


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["zebra", "ant"])})
    rows = {"picture": [Image.new("RGB", (6, 6), c) for c in colors], "kind": [1, 0, 1]}
    dataset = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": dataset, "test": dataset.select([2])}).save_to_disk(str(tmp_path / "ds"))

    listing = Listing()
    records = list(iter_image_records([f"hf:{tmp_path / 'ds'}"], labelled=True, listing=listing))
    assert [record.label for record in records] == ["ant", "zebra", "ant"]
    assert [tuple(np.asarray(decode_image(r.read(), MAX))[0, 0]) for r in records] == colors
    assert listing.classes == {f"hf:{tmp_path / 'ds'}": ("zebra", "ant")}

    test = list(iter_image_records([f"hf:{tmp_path / 'ds'}:test"], labelled=True))
    assert [record.label for record in test] == ["ant"]
    with pytest.raises(DataError, match="no split 'valid'"):
        list(iter_image_records([f"hf:{tmp_path / 'ds'}:valid"], labelled=False))
