"""Images decoded once into a cached, memory-mapped uint8 array, FFCV-style.

The resumable sampler picks samples by index, so every source is decoded up front, in parallel, into fixed-size
square images that any process of a run maps read-only. Bad images are skipped and counted here, once: training
never meets one, and every later load repeats the warning from the cached counts.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fmkit.data.cache import build_once, cache_root, fingerprint
from fmkit.data.images import (
    BadImage,
    ImageRecord,
    Listing,
    decode_image,
    is_named_source,
    iter_image_records,
    resize_square,
    source_files,
)
from fmkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
"""Bump whenever the same inputs would give different arrays, so caches rebuild."""
PIL_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit, our default."""


@dataclass
class ImageArray:
    images: np.ndarray
    """uint8 [N, size, size, 3], memory-mapped read-only from the cache."""
    labels: np.ndarray | None
    """int64 [N] indices into `class_names`, when labelled."""
    class_names: list[str]
    description: str
    """For model cards, e.g. "1,297 images from /data/x (2 skipped: 1 truncated, 1 too_large)"."""
    stats: dict
    """{"images": N, "skipped": {reason: count}}"""


def load_image_array(
    sources: Sequence[str],
    size: int,
    *,
    labelled: bool = False,
    max_pixels: int = PIL_MAX_PIXELS,
    workers: int = 0,
) -> ImageArray:
    """Decode every image once (cached per machine); later calls, and other processes, map the cache.

    A named source (`fashion-mnist:train`, `embedded:photos`, ...) is an array already and stands alone.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    for setting, value in (("size", size), ("max_pixels", max_pixels)):
        if value < 1:
            raise ConfigError(f"{setting}: expected a positive number of pixels, got {value}")
    named = [source for source in sources if is_named_source(source)]
    if named:
        if len(sources) > 1:
            raise ConfigError(f"{', '.join(sources)}: a named source ({named[0]}) must be the only source")
        from fmkit.data.named_images import named_image_array  # it builds on this module

        return named_image_array(named[0], size, labelled)
    key = fingerprint(BUILDER_VERSION, sources, size, labelled, max_pixels, _file_states(sources))
    build = functools.partial(
        _build, sources=sources, size=size, labelled=labelled, max_pixels=max_pixels, workers=workers
    )
    return _open(build_once(cache_root() / "images" / f"{size}px-{key}", build))


def image_array_from_numpy(
    name: str,
    key: object,
    make: Callable[[], tuple[np.ndarray, np.ndarray | None]],
    *,
    class_names: Sequence[str] = (),
    description: str,
) -> ImageArray:
    """Images made in code (the embedded data) cached like decoded ones; `make` runs only for a new `key`.

    `make` returns uint8 [N, size, size, 3] images and int64 [N] labels (or None); `key` must change
    whenever they would.
    """

    def build(out: Path) -> None:
        images, labels = make()
        np.save(out / "images.npy", images)
        if labels is not None:
            np.save(out / "labels.npy", labels.astype(np.int64))
        _write_meta(out, name, list(class_names), {"images": len(images), "skipped": {}}, description, None)

    return _open(build_once(cache_root() / "images" / f"{name}-{fingerprint(BUILDER_VERSION, name, key)}", build))


def _file_states(sources: list[str]) -> list[tuple[str, int, int]]:
    """Path, size and mtime of every file read, so an edited folder gets a new cache key."""
    states = []
    for source in sources:
        for path in source_files(source):
            stat = path.stat()
            states.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return states


def _build(out: Path, sources: list[str], size: int, labelled: bool, max_pixels: int, workers: int) -> None:
    """Stream decoded images into the memory map as they arrive: memory does not grow with the dataset."""
    listing = Listing()
    records = list(iter_image_records(sources, labelled, listing))
    class_names = label_classes(records, sources, listing) if labelled else []
    index = {name: i for i, name in enumerate(class_names)}
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3)
    )
    labels = np.zeros(len(records), dtype=np.int64)
    kept = 0
    for record, (pixels, reason) in zip(records, _decode_all(records, size, max_pixels, workers), strict=True):
        if pixels is None:
            listing.skipped[reason] += 1
            continue
        images[kept] = pixels
        labels[kept] = index[record.label] if labelled else 0
        kept += 1
    images.flush()
    del images
    what = ", ".join(sources)
    if not kept:
        raise DataError(f"{what}: all {len(records):,} images are bad ({_reasons(listing.skipped)})")
    _drop_tail_rows(out / "images.npy", kept)
    if labelled:
        np.save(out / "labels.npy", labels[:kept])
    stats = {"images": kept, "skipped": dict(sorted(listing.skipped.items()))}
    _write_meta(out, what, class_names, stats, _describe(what, stats), max_pixels)


def label_classes(records: list[ImageRecord], sources: list[str], listing: Listing) -> list[str]:
    """The classes the sources declare (HF ClassLabel) when all declare the same, else the labels sorted."""
    declared = set(listing.classes.values())
    if len(listing.classes) == len(sources) and len(declared) == 1:
        return list(declared.pop())
    return sorted({record.label for record in records}, key=_class_order)


def _class_order(name: str) -> tuple[int, int, str]:
    """Numeric labels ("2" before "10") sort as numbers, so their index is their order."""
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def _decode_all(
    records: list[ImageRecord], size: int, max_pixels: int, workers: int
) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """(pixels, None) or (None, reason) per record, in record order, decoded by a pool of processes."""
    processes = max(1, min(workers or os.cpu_count() or 1, len(records)))
    chunksize = max(1, min(64, len(records) // (processes * 8)))
    decode = functools.partial(_decode_record, size=size, max_pixels=max_pixels)
    with multiprocessing.Pool(processes) as pool:
        yield from tqdm(pool.imap(decode, records, chunksize), total=len(records), desc="decoding images", unit="img")


def _decode_record(record: ImageRecord, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return resize_square(decode_image(record.read(), max_pixels), size), None
    except BadImage as bad:
        return None, bad.reason
    except OSError:  # the file vanished or became unreadable after listing
        return None, "unreadable"


def _drop_tail_rows(path: Path, rows: int) -> None:
    """Shrink a .npy file in place to its first `rows` rows, without copying the images.

    numpy pads the header so that the first dimension can grow to 21 digits, so the new header has the
    same length as the old one and the data need not move.
    """
    array = np.load(path, mmap_mode="r")
    offset, row_bytes = array.offset, array[0].nbytes
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": (rows, *array.shape[1:])},
    )
    del array
    if len(header.getvalue()) != offset:
        raise RuntimeError(f"{path}: cannot rewrite the .npy header in place")
    with open(path, "r+b") as handle:
        handle.write(header.getvalue())
        handle.truncate(offset + rows * row_bytes)


def _write_meta(
    out: Path, source: str, class_names: list[str], stats: dict, description: str, max_pixels: int | None
) -> None:
    meta = {
        "source": source,
        "class_names": class_names,
        "stats": stats,
        "description": description,
        "max_pixels": max_pixels,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _open(folder: Path) -> ImageArray:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    labels_file = folder / "labels.npy"
    _report_skipped(meta["source"], meta["stats"], meta["max_pixels"])
    return ImageArray(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.load(labels_file) if labels_file.exists() else None,
        class_names=meta["class_names"],
        description=meta["description"],
        stats=meta["stats"],
    )


def _report_skipped(what: str, stats: dict, max_pixels: int | None) -> None:
    """Warn on every load, cached or not, so a run's log always says what its data lost."""
    skipped = stats["skipped"]
    if not skipped:
        return
    bombs = (
        f"; {skipped['too_large']} over max_pixels={max_pixels:,} were refused as possible decompression bombs"
        if "too_large" in skipped
        else ""
    )
    logger.warning("%s: skipped %d bad images (%s)%s", what, sum(skipped.values()), _reasons(skipped), bombs)


def _reasons(skipped: dict) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))


def _describe(what: str, stats: dict) -> str:
    skipped = stats["skipped"]
    lost = f" ({sum(skipped.values()):,} skipped: {_reasons(skipped)})" if skipped else ""
    return f"{stats['images']:,} images from {what}{lost}"
