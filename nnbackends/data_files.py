"""Datasets from files: CSV with a label column, and the IDX format of MNIST.

Nothing here unpickles or executes anything from a file: CSV is parsed as
text, IDX as raw big-endian numbers after a fixed header.

* CSV: one sample per row, UTF-8 text (a byte-order mark is allowed). Fields
  are split at the ``delimiter`` given, else at the one of comma, semicolon and
  tab that splits the first lines into the most fields (a tie goes to tab, then
  semicolon: commas also occur inside values). Rows whose cells are all blank
  are left out; every other row must be as wide as the first.
* Header: the first row names the columns when it holds no missing-value token
  (empty cells aside, as over a data frame's index column) and its types differ
  from the rows under it: a text cell over a column of numbers, or text in every
  cell over columns that hold numbers (``csv.Sniffer.has_header``'s idea). So a
  headerless file whose first row holds ``NA`` or a string label keeps that row.
* The label column is chosen by name (with a header) or by 0-based index;
  negative indices count from the end. Labels are float64 when every one is a
  number, else strings (``setosa``); every other column must hold numbers.
* Missing values: an empty cell, ``NA``, ``N/A``, ``#N/A``, ``NaN`` and
  ``null`` in any case (``MISSING_VALUES``), and any other spelling of NaN that
  ``float`` reads (``-nan``). ``missing="error"`` (the default) stops at the
  first, naming its file line and column; ``missing="drop"`` leaves those rows
  out and counts them. ``inf`` and the like are errors at their line and column.
  Every error names the 1-based file line and the 1-based column (and its name).
* IDX (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
  number of dimensions, one big-endian uint32 per dimension, then the data.
  Either file may be gzip-compressed (detected from its first bytes, not its name).
"""
from __future__ import annotations

import collections
import csv
import gzip
import itertools
import math
import os
import re
import struct
from typing import NamedTuple

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


MISSING_CHOICES = ("error", "drop")
#: Cell texts that are a missing value (stripped, in any case); so is any spelling of NaN float() reads.
MISSING_VALUES = ("", "na", "n/a", "#n/a", "nan", "null")
_DELIMITERS = (",", ";", "\t")  # the ones detected
_PREFERRED = ("\t", ";", ",")  # on a tie: commas are the ones that also occur inside values (1,5)
_SAMPLE_LINES = 20  # lines that the delimiter is detected from
_HEADER_SAMPLE = 100  # rows under the first that its cells' types are compared with
_SHOWN = {",": "','", ";": "';'", "\t": "tabs"}
_OPTION = {",": ",", ";": "';'", "\t": "tab"}


class CsvData(NamedTuple):
    """A CSV file with a label column (``load_csv_data``)."""

    X: np.ndarray  # (rows, features) float32
    y: np.ndarray  # (rows,) float64 when every label is a number, else str
    feature_names: list[str] | None  # the header without the label column; None without a header
    label_name: str | None  # the label column's header name; None without a header
    dropped: int  # rows left out for a missing value (missing="drop")


class Features(NamedTuple):
    """A CSV file of features only (``load_features``)."""

    names: list[str] | None  # the header without the dropped column; None without a header
    values: np.ndarray  # (rows, columns) float64
    dropped: int  # rows left out for a missing value (missing="drop")


class _Table(NamedTuple):
    """A CSV file's text: its header (or None) and each data row's 1-based file line and cells."""

    name: str
    header: list[str] | None
    rows: list[tuple[int, list[str]]]
    delimiter: str

    @property
    def width(self) -> int:
        return len(self.header or self.rows[0][1])

    def where(self, line, j) -> str:
        """``'f.csv' line 7, column 3 ('petal_length')``."""
        name = f" ({self.header[j]!r})" if self.header and self.header[j] else ""
        return f"{self.name!r} line {line}, column {j + 1}{name}"

    def delimiter_hint(self, text="") -> str:
        """How to read a file that reads as one column although its first row or ``text`` holds another
        delimiter, or a number written with a decimal comma."""
        if re.fullmatch(r"[-+]?\d+,\d+", text.strip()) and self.delimiter != ",":
            return "; decimal commas are not read: write the number with a point (1.5)"
        seen = text + "".join(self.header or self.rows[0][1])
        other = next((d for d in _DELIMITERS if d != self.delimiter and d in seen), None)
        if self.width > 1 or other is None:
            return ""
        return (f"; its lines hold {_SHOWN[other]} but were split at {_SHOWN[self.delimiter]}: give "
                f"--delimiter {_OPTION[other]} (Python: delimiter={other!r})")


def read_csv(path, delimiter=None, missing="error"):
    """``(header or None, float64 array of shape (rows, columns))`` from a numeric CSV file."""
    names, values, _ = load_features(path, delimiter=delimiter, missing=missing)
    return names, values


def load_features(path, drop_column=None, delimiter=None, missing="error", drop_if_present=None) -> Features:
    """The numeric columns of a CSV file but ``drop_column`` (a header name or an index, as in
    ``column_index``; None keeps every column), which may hold anything, such as string labels.
    ``drop_if_present``: a column name left out too where the file's header has it."""
    table = _read_table(path, delimiter)
    columns = list(range(table.width))
    if drop_column is not None:
        columns.remove(column_index(table.header, table.width, drop_column))
    if drop_if_present is not None and table.header and drop_if_present in table.header:
        columns.remove(table.header.index(drop_if_present))
    values, _, keep = _convert(table, columns, None, missing)
    names = [table.header[j] for j in columns] if table.header else None
    return Features(names, values[keep], int(len(keep) - keep.sum()))


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


def load_csv(path, label_column=-1, delimiter=None, missing="error"):
    """``(X, y)``: float32 features and labels (float64 numbers, or strings) from a CSV file with a label column."""
    return load_csv_data(path, label_column, delimiter, missing)[:2]


def load_csv_data(path, label_column=-1, delimiter=None, missing="error") -> CsvData:
    """What ``load_csv`` reads, with the file's column names and the count of rows dropped."""
    table = _read_table(path, delimiter)
    if table.width < 2:
        raise ValueError(f"{table.name!r} has {table.width} column; it needs features and a label column"
                         f"{table.delimiter_hint()}.")
    j = column_index(table.header, table.width, label_column)
    columns = [k for k in range(table.width) if k != j]
    values, texts, keep = _convert(table, columns, j, missing)
    kept = np.flatnonzero(keep)
    y = _label_array(table, j, [texts[i] for i in kept], [table.rows[i][0] for i in kept])
    header = table.header
    return CsvData(values[keep].astype(np.float32), y, [header[k] for k in columns] if header else None,
                   header[j] if header else None, int(len(keep) - len(kept)))


def _read_table(path, delimiter) -> _Table:
    """The rows of a CSV file (rows of blank cells left out), split at ``delimiter`` or the detected one,
    all as wide as the first, and its header when the first row is one (``_is_header``)."""
    name = os.fspath(path)
    delimiter = _check_delimiter(delimiter)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            head = list(itertools.islice(f, _SAMPLE_LINES))
            delimiter = delimiter or _detect_delimiter(head)
            rows = _rows(csv.reader(itertools.chain(head, f), delimiter=delimiter))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name!r} is not UTF-8 text ({exc.reason}); save it as a UTF-8 CSV file.") from None
    except csv.Error as exc:
        raise ValueError(f"{name!r} is not a readable CSV file: {exc}.") from None
    if not rows:
        raise ValueError(f"{name!r} has no rows.")
    width = len(rows[0][1])
    for line, cells in rows:
        if len(cells) != width:
            raise ValueError(f"{name!r} line {line} has {len(cells)} fields, expected {width} "
                             f"(fields split at {_SHOWN[delimiter]}).")
    if not _is_header(rows):
        return _Table(name, None, rows, delimiter)
    if len(rows) == 1:
        raise ValueError(f"{name!r} has a header but no data rows.")
    return _Table(name, [cell.strip() for cell in rows[0][1]], rows[1:], delimiter)


def _rows(reader) -> list[tuple[int, list[str]]]:
    """``(1-based file line where it starts, cells)`` of each row that holds a non-blank cell."""
    rows, line = [], 0
    for cells in reader:
        if any(cell.strip() for cell in cells):
            rows.append((line + 1, cells))
        line = reader.line_num
    return rows


def _check_delimiter(delimiter):
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise ValueError(f"delimiter must be one character such as ',', ';' or '\\t' (None: detected), "
                         f"got {delimiter!r}.")
    return delimiter


def _detect_delimiter(lines) -> str:
    """The delimiter that splits the most lines of ``lines`` into the most fields: for each candidate
    the most common field count, the largest count winning; a comma when none splits a line."""
    lines = [line for line in lines if line.strip()]

    def width(delimiter):
        counts = collections.Counter(len(row) for row in csv.reader(lines, delimiter=delimiter))
        return counts.most_common(1)[0][0] if counts else 1

    widths = {delimiter: width(delimiter) for delimiter in _PREFERRED}
    best = max(widths, key=widths.get)  # the first of the widest
    return best if widths[best] > 1 else ","


def _is_header(rows) -> bool:
    """Whether the first row names the columns: none of its cells is a missing-value token (empty
    cells, as over a data frame's index, aside) and its types differ from the rows below: a text cell
    over a column of numbers, or text in every cell over columns that hold numbers. Alone, a row of
    text is a header."""
    first = [_kind(cell) for cell in rows[0][1]]
    if "missing" in first or "text" not in first:
        return False
    if len(rows) == 1:
        return all(kind == "text" for kind in first)
    below = [set() for _ in first]
    for _, cells in rows[1:1 + _HEADER_SAMPLE]:
        for kinds, cell in zip(below, cells):
            kinds.add(_kind(cell))
    below = [kinds - {"missing", "empty"} for kinds in below]
    over_numbers = any(kind == "text" and kinds == {"number"} for kind, kinds in zip(first, below))
    all_text = all(kind == "text" for kind in first) and any("number" in kinds for kinds in below)
    return over_numbers or all_text


def _kind(cell) -> str:
    """"empty", "missing" (another missing-value token), "number" or "text"."""
    text = cell.strip()
    if not text:
        return "empty"
    if _is_missing(text):
        return "missing"
    return "number" if _is_number(text) else "text"


def _convert(table, columns, label, missing):
    """Each row's float64 values in ``columns``, its stripped text in column ``label`` (None: no label
    column), and which rows to keep: with ``missing="drop"`` those without a missing value; with
    "error" a missing value is a ValueError, as is a cell of ``columns`` that is not a finite number."""
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}.")
    values = np.empty((len(table.rows), len(columns)))
    texts, missing_label = [], np.zeros(len(table.rows), dtype=bool)
    for i, (line, cells) in enumerate(table.rows):
        try:
            numbers = [float(cells[j]) for j in columns]
        except ValueError:
            numbers = None
        if numbers is None or not all(map(math.isfinite, numbers)):  # find out why, cell by cell
            numbers = [_cell_number(table, line, cells, j, missing) for j in columns]
        values[i] = numbers
        if label is not None:
            texts.append(cells[label].strip())
            missing_label[i] = _is_missing(texts[-1])
            if missing_label[i] and missing == "error":
                raise _missing_error(table, line, label, texts[-1])
    keep = ~(missing_label | np.isnan(values).any(axis=1))  # NaN: a missing value dropped
    if len(keep) and not keep.any():
        raise ValueError(f"every data row of {table.name!r} holds a missing value, so dropping them leaves "
                         "nothing; fill them in.")
    return values, texts, keep


def _cell_number(table, line, cells, j, missing) -> float:
    """The finite number in ``cells[j]``, NaN for a missing value with ``missing="drop"``; else a
    ValueError naming the cell."""
    text = cells[j].strip()
    if _is_missing(text):
        if missing == "drop":
            return math.nan
        raise _missing_error(table, line, j, text)
    if not _is_number(text):
        raise ValueError(f"{table.where(line, j)}: {text!r} is not a number{table.delimiter_hint(text)}.")
    if not math.isfinite(float(text)):
        raise _not_finite(table, line, j, text)
    return float(text)


def _label_array(table, j, texts, lines) -> np.ndarray:
    """The labels as float64 when each is a number (a finite one, else a ValueError naming it), else as str."""
    if not all(map(_is_number, texts)):
        return np.array(texts)
    y = np.array([float(text) for text in texts])
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise _not_finite(table, lines[bad[0]], j, texts[bad[0]])
    return y


def _missing_error(table, line, j, text) -> ValueError:
    return ValueError(f"{table.where(line, j)}: missing value {text!r}; drop such rows with --missing drop "
                      "(Python: missing=\"drop\") or fill them in.")


def _not_finite(table, line, j, text) -> ValueError:
    return ValueError(f"{table.where(line, j)}: {text!r} is not a finite number; replace it or remove the row.")


def _is_missing(text) -> bool:
    """Whether stripped ``text`` is a missing value: a ``MISSING_VALUES`` token or any spelling of NaN."""
    return text.lower() in MISSING_VALUES or (_is_number(text) and math.isnan(float(text)))


def save_csv(path, header, rows) -> None:
    """Write a header line and then ``rows`` to the file ``path``."""
    with open(path, "w", newline="") as f:
        write_csv(f, header, rows)


def write_csv(stream, header, rows) -> None:
    """Write a header line and then ``rows`` (sequences of numbers or text) to an open text stream."""
    writer = csv.writer(stream)
    writer.writerow(header)
    writer.writerows(rows)


def _is_number(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
