"""IDX files, the format of MNIST and Fashion-MNIST, read with numpy.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one big-endian uint32 per
dimension, then the values in C order, big-endian; the distributed files are gzipped. Everything is checked
against the header, so a damaged download fails here with its name rather than as a reshape error later.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fmkit.errors import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""Type code in the magic -> numpy dtype of the values."""
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file (gzipped or not) holds, in native byte order."""
    data = _file_bytes(Path(path))
    if len(data) < 4 or data[0] or data[1] or data[2] not in IDX_TYPES:
        codes = "/".join(f"{code:02x}" for code in IDX_TYPES)
        raise DataError(f"{path}: not an IDX file (expected magic 00 00 <{codes}> <dims>, got {data[:4].hex(' ')!r})")
    dims = data[3]
    offset = 4 + 4 * dims
    if len(data) < offset:
        raise DataError(f"{path}: truncated IDX header (expected {offset} bytes for {dims} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - offset
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise DataError(f"{path}: {problem}: {found:,} data bytes, expected {expected:,} for shape {shape}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def read_labelled_images(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, rows, cols] and int64 labels [N] from an MNIST-style pair of IDX files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images [count, rows, cols], got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels [count], got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels):,} labels for the {len(images):,} images of {images_path}")
    return images, labels.astype(np.int64)


def _file_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as error:  # a cut file ends before gzip's end-of-stream marker
        raise DataError(f"{path}: damaged gzip data ({error})") from None
