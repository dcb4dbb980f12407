"""Datasets from files: CSV with a label column, and the IDX format of MNIST.

Nothing here unpickles or executes anything from a file: CSV is parsed as
text, IDX as raw big-endian numbers after a fixed header.

* CSV: comma-separated numbers, one sample per row. A first row with any
  non-numeric field is a header (column names). The label column is chosen by
  name (with a header) or by 0-based index; negative indices count from the end.
* IDX (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
  number of dimensions, one big-endian uint32 per dimension, then the data.
  Either file may be gzip-compressed (detected from its first bytes, not its name).
"""
from __future__ import annotations

import csv
import gzip
import os
import struct

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{os.fspath(path)!r} looks gzip-compressed but cannot be decompressed: {exc}") from None
    return data


def is_idx(path) -> bool:
    """Whether ``path`` (gzipped or not) starts with an IDX header."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == _GZIP_MAGIC:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES and head[3] > 0


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (native byte order)."""
    data = _read_bytes(path)
    where = f"{os.fspath(path)!r} is not an IDX file"
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{where}: it must start with two zero bytes and a type code "
                         f"({', '.join(f'0x{c:02X}' for c in _IDX_TYPES)}), got {data[:4]!r}.")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{where}: its header declares {ndim} dimensions but is truncated.")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    body = memoryview(data)[4 + 4 * ndim:]
    expected = dtype.itemsize * int(np.prod(shape))
    if len(body) != expected:
        raise ValueError(f"{where}: shape {shape} of {dtype.newbyteorder('=')} needs {expected} data bytes, "
                         f"the file has {len(body)} (truncated or corrupt).")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype)
    if code is None:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, codes))}.")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(_IDX_TYPES[code]).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(blob) if os.fspath(path).endswith(".gz") else blob)


def load_idx(images, labels):
    """MNIST-style IDX pair: X (n, features) float32 (uint8 pixels scaled to [0, 1]), y (n,) labels."""
    X, y = read_idx(images), read_idx(labels)
    if y.ndim != 1:
        raise ValueError(f"the labels file {os.fspath(labels)!r} holds an array of shape {y.shape}; "
                         "labels must be 1-D (one per image).")
    if len(X) != len(y):
        raise ValueError(f"{os.fspath(images)!r} has {len(X)} samples but {os.fspath(labels)!r} has {len(y)} labels.")
    X = X.reshape(len(X), -1)
    X = X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32)
    return X, y


def read_csv(path):
    """``(header or None, float64 array of shape (rows, columns))`` from a numeric CSV file."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{os.fspath(path)!r} has no rows.")
    header = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise ValueError(f"{os.fspath(path)!r} has a header but no data rows.")
    width = len(header or rows[0])
    values = np.empty((len(rows), width))
    for i, row in enumerate(rows):
        line = i + 1 + (header is not None)
        if len(row) != width:
            raise ValueError(f"{os.fspath(path)!r} line {line} has {len(row)} fields, expected {width}.")
        try:
            values[i] = [float(cell) for cell in row]
        except ValueError:
            bad = next(cell for cell in row if not _is_number(cell))
            raise ValueError(f"{os.fspath(path)!r} line {line} holds {bad.strip()!r}, which is not a number.") from None
    return header, values


def column_index(header, width, column) -> int:
    """The 0-based index of ``column`` (a header name or an integer index, negative from the end)."""
    if header is not None and column in header:
        return header.index(column)
    try:
        index = int(column)
    except (TypeError, ValueError):
        names = ", ".join(header) if header else "none (the file has no header)"
        raise ValueError(f"label column {column!r} is not a column name or index; the columns are: {names}.") from None
    if not -width <= index < width:
        raise ValueError(f"label column index {index} is out of range for {width} columns.")
    return index % width


def load_csv(path, label_column=-1):
    """X (n, columns - 1) float32 and y (n,) float64 from a CSV file with a label column."""
    header, values = read_csv(path)
    if values.shape[1] < 2:
        raise ValueError(f"{os.fspath(path)!r} has {values.shape[1]} column; it needs features and a label column.")
    j = column_index(header, values.shape[1], label_column)
    return np.delete(values, j, axis=1).astype(np.float32), values[:, j]


def save_csv(path, header, rows) -> None:
    """Write a header line and then ``rows`` (sequences of numbers)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _is_number(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
