"""Image-text WebDataset shards from real image files and from a local HTTP server (img2dataset), read back."""

from __future__ import annotations

import csv
import functools
import io
import json
import runpy
import signal
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import webdataset
from conftest import REPO
from PIL import Image

from fmkit.data.image_text_shards import FolderOptions, OutputOptions, shards_from_folder

SCRIPT = REPO / "data_scripts" / "image_text_shards.py"
MAX_PIXELS = 100_000
IMAGE_MEMBERS = ("jpg", "png", "webp")


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(height: int, width: int, mode: str = "RGB") -> np.ndarray:
    """Smooth content, so a JPEG of it stays close to the pixels."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height), np.full_like(x, 200)]
    return np.stack(channels[: len(mode)], axis=-1).astype(np.uint8)


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)


def good_images() -> dict[str, bytes]:
    """File name -> bytes of images every decoder accepts, in several formats and sizes."""
    return {
        "red.png": encode(np.full((24, 32, 3), (200, 30, 60), np.uint8), "PNG"),
        "sky.jpg": encode(gradient(48, 64), "JPEG", quality=90),
        "sub/photo.JPEG": encode(gradient(120, 90), "JPEG", quality=80),
        "leaf.webp": encode(gradient(20, 30), "WEBP", lossless=True),
        "logo.png": encode(gradient(16, 16, "RGBA"), "PNG"),
    }


def bad_images() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, the reason it is skipped for)."""
    jpeg = encode(gradient(64, 80), "JPEG", quality=90)
    return {
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "noise.jpg": (np.random.default_rng(0).bytes(3000), "undecodable"),
        "huge.png": (encode(np.zeros((400, 300, 3), np.uint8), "PNG"), "too_large"),
        "scan.bmp": (encode(gradient(8, 8), "BMP"), "unsupported_format"),
    }


def caption_of(name: str) -> str:
    return f"a picture called {Path(name).stem}"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    for name, data in {**good_images(), **{name: data for name, (data, _) in bad_images().items()}}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "blank.png").write_bytes(encode(gradient(10, 10), "PNG"))
    return folder


def shard_samples(folder: Path) -> list[dict]:
    """Every sample of the shards in order, read the way training reads them."""
    return [sample for shard in sorted(folder.glob("*.tar")) for sample in shard_samples_of(shard)]


def shard_samples_of(shard: Path) -> list[dict]:
    return list(webdataset.WebDataset(str(shard), shardshuffle=False))


def by_source(samples: list[dict]) -> dict[str, tuple[str, bytes, str]]:
    """source -> (image member, its bytes, caption), checking that txt and json agree."""
    found = {}
    for sample in samples:
        meta = json.loads(sample["json"])
        assert sample["txt"].decode() == meta["caption"]
        (extension,) = [ext for ext in IMAGE_MEMBERS if ext in sample]
        found[meta["source"]] = (extension, sample[extension], meta["caption"])
    return found


def expected_good() -> dict[str, tuple[str, bytes, str]]:
    extensions = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
    return {
        name: (extensions[Path(name).suffix.lower()], data, caption_of(name)) for name, data in good_images().items()
    }


def run_cli(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"image_text_shards.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


# ---------------------------------------------------------------- folder mode


def test_folder_and_csv_keep_exactly_the_good_images_byte_for_byte(image_folder, tmp_path, monkeypatch, capsys):
    rows = [[name, caption_of(name)] for name in [*good_images(), *bad_images()]]
    rows += [["blank.png", "   "], ["gone.jpg", "a picture that is not there"]]
    captions = write_csv(tmp_path / "captions.csv", ["file", "caption"], rows)
    out = tmp_path / "shards"
    args = ["--images", image_folder, "--captions", captions, "--output_dir", out, "--max_pixels", MAX_PIXELS]
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])

    runpy.run_path(str(SCRIPT), run_name="__main__")  # the command in this process: a subprocess costs seconds

    assert by_source(shard_samples(out)) == expected_good()
    stats = json.loads((out / "stats.json").read_text())
    reasons = {reason: 1 for _, reason in bad_images().values()} | {"empty_caption": 1, "missing_image": 1}
    assert stats["skipped"] == reasons
    assert stats["examples"]["truncated"] == ["cut.jpg"] and stats["examples"]["missing_image"] == ["gone.jpg"]
    assert (stats["samples"], stats["shards"]) == (len(good_images()), 1)
    assert sorted(path.name for path in out.iterdir()) == ["00000.tar", "stats.json"]
    assert capsys.readouterr().out.splitlines() == [
        f"{len(good_images())} samples in 1 shards in {out}; skipped 6 (1 truncated, 1 undecodable, 1 too_large, "
        f"1 unsupported_format, 1 empty_caption, 1 missing_image); see {out / 'stats.json'}"
    ]


def test_sidecar_captions_and_samples_per_shard(image_folder, tmp_path):
    for name in [*good_images(), *bad_images()]:
        (image_folder / name).with_suffix(".txt").write_text(f"  {caption_of(name)}\n", encoding="utf-8")
    (image_folder / "blank.txt").write_text(" \n", encoding="utf-8")
    (image_folder / "no_caption.jpg").write_bytes(good_images()["sky.jpg"])
    out = tmp_path / "shards"

    stats = shards_from_folder(
        FolderOptions(image_folder), OutputOptions(out, samples_per_shard=2, max_pixels=MAX_PIXELS)
    )

    samples = shard_samples(out)
    assert by_source(samples) == expected_good()
    assert [sample["__key__"] for sample in samples] == [f"{i:09d}" for i in range(len(good_images()))]
    assert sorted(path.name for path in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert [len(shard_samples_of(path)) for path in sorted(out.glob("*.tar"))] == [2, 2, 1]
    reasons = {reason: 1 for _, reason in bad_images().values()} | {"empty_caption": 1, "missing_caption": 1}
    assert json.loads((out / "stats.json").read_text()) == stats.as_json()
    assert (stats.samples, stats.shards, dict(stats.skipped)) == (len(good_images()), 3, reasons)


def test_a_killed_run_leaves_only_complete_shards(tmp_path):
    """Shards get their names only when complete; --overwrite then replaces the remains."""
    folder = tmp_path / "many"
    folder.mkdir()
    tiny = encode(gradient(4, 4), "PNG")
    for i in range(1000):
        (folder / f"{i:04d}.png").write_bytes(tiny)
        (folder / f"{i:04d}.txt").write_text(f"tile {i}", encoding="utf-8")
    out = tmp_path / "shards"
    command = [sys.executable, str(SCRIPT), "--images", str(folder), "--output_dir", str(out),
               "--samples_per_shard", "50"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (out / "00001.tar").exists() and process.poll() is None:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()

    assert not (out / "stats.json").exists(), "the run finished before it could be killed"
    shards = sorted(out.glob("*.tar"))
    assert shards and all(len(shard_samples_of(shard)) == 50 for shard in shards)
    assert {path.name for path in out.iterdir()} - {shard.name for shard in shards} <= {f".{len(shards):05d}.tar.tmp"}

    stats = shards_from_folder(FolderOptions(folder), OutputOptions(out, samples_per_shard=400, overwrite=True))
    assert sorted(path.name for path in out.iterdir()) == ["00000.tar", "00001.tar", "00002.tar", "stats.json"]
    assert (stats.samples, len(shard_samples(out))) == (1000, 1000)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_folder", "--images {tmp}/nowhere: no such folder"),
        ("no_captions", "--captions {tmp}/missing.csv: no such file"),
        ("no_column", "--captions {tmp}/captions.csv: no column 'file' (columns: path, text)"),
        ("bad_suffix", "--captions {tmp}/captions.xlsx: unknown file type '.xlsx' "
                       "(expected .csv, .jsonl, .parquet, .tsv)"),
        ("not_empty", "--output_dir {tmp}/full: not empty (pass --overwrite to replace its shards)"),
        ("no_url_column", "--urls {tmp}/urls.jsonl: no column 'url' (columns: link, caption)"),
        ("wrong_mode", "--image_size applies only with --urls"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(case, expected, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_csv(tmp_path / "captions.csv", ["path", "text"], [["a.png", "a"]])
    (tmp_path / "captions.xlsx").write_bytes(b"PK")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "00000.tar").write_bytes(b"")
    (tmp_path / "urls.jsonl").write_text('{"link": "http://127.0.0.1/a.png", "caption": "a"}\n', encoding="utf-8")
    out = ["--output_dir", tmp_path / "out"]
    args = {
        "no_folder": ["--images", tmp_path / "nowhere", *out],
        "no_captions": ["--images", images, "--captions", tmp_path / "missing.csv", *out],
        "no_column": ["--images", images, "--captions", tmp_path / "captions.csv", *out],
        "bad_suffix": ["--images", images, "--captions", tmp_path / "captions.xlsx", *out],
        "not_empty": ["--images", images, "--captions", tmp_path / "captions.csv", "--image_column", "path",
                      "--caption_column", "text", "--output_dir", tmp_path / "full"],
        "no_url_column": ["--urls", tmp_path / "urls.jsonl", *out],
        "wrong_mode": ["--images", images, "--image_size", "64", *out],
    }[case]  # fmt: skip

    result = run_cli(*args, check=False)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"image_text_shards.py: error: {expected.format(tmp=tmp_path)}"]
    assert not (tmp_path / "out").exists()
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["00000.tar"]


# ---------------------------------------------------------------- URL mode (img2dataset)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_site(tmp_path_factory):
    """A local web server with good images, broken ones served as image/jpeg, and (by omission) 404s."""
    site = tmp_path_factory.mktemp("site")
    for name, data in {**good_images(), **{name: data for name, (data, _) in bad_images().items()}}.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def url_run(image_site, tmp_path_factory):
    """One img2dataset run (its start-up costs seconds) over good, broken, missing and uncaptioned URLs."""
    folder = tmp_path_factory.mktemp("url_run")
    names = ["sky.jpg", "red.png", "cut.jpg", "noise.jpg", "gone.jpg", "leaf.webp"]
    rows = [[f"{image_site}/{name}", caption_of(name)] for name in names]
    rows.append([f"{image_site}/sub/photo.JPEG", " "])
    urls = write_csv(folder / "urls.csv", ["url", "caption"], rows)
    out = folder / "shards"
    return out, run_cli("--urls", urls, "--output_dir", out, "--samples_per_shard", 4, "--timeout", 5)


def test_urls_keep_exactly_the_images_that_downloaded_and_decode(url_run):
    out, _ = url_run
    samples = shard_samples(out)
    found = {json.loads(sample["json"])["url"].rsplit("/", 1)[1]: sample for sample in samples}

    assert sorted(found) == ["leaf.webp", "red.png", "sky.jpg"]
    originals = good_images()
    for name, sample in found.items():
        assert sample["txt"].decode() == caption_of(name) == json.loads(sample["json"])["caption"]
        assert sorted(sample) == ["__key__", "__local_path__", "__url__", "jpg", "json", "txt"]
    # a JPEG is stored as downloaded (resize_mode no); other formats are re-encoded as JPEG, quality 95
    assert found["sky.jpg"]["jpg"] == originals["sky.jpg"]
    for name in ("red.png", "leaf.webp"):
        stored, original = decoded(found[name]["jpg"]), decoded(originals[name])
        assert stored.shape == original.shape and np.abs(stored - original).mean() < 2


def test_url_stats_count_404s_and_broken_images(url_run, image_site):
    out, result = url_run
    stats = json.loads((out / "stats.json").read_text())

    assert stats["skipped"] == {
        "failed_to_resize: Image decoding error": 2,
        "failed_to_download: HTTP Error 404: File not found": 1,
        "empty_caption": 1,
    }
    assert stats["examples"]["failed_to_resize: Image decoding error"] == [
        f"{image_site}/cut.jpg",
        f"{image_site}/noise.jpg",
    ]
    assert stats["examples"]["empty_caption"] == [f"{image_site}/sub/photo.JPEG"]
    assert (stats["samples"], stats["shards"]) == (3, 2)
    assert sorted(path.name for path in out.iterdir()) == [
        "00000.parquet", "00000.tar", "00001.parquet", "00001.tar", "stats.json",
    ]  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"3 samples in 2 shards in {out}; skipped 4 (2 failed_to_resize: Image decoding error")
