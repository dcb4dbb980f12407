"""File datasets: CSV with a label column and IDX (gzipped or not), with errors that say what is wrong."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from nnbackends import data_files


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != "uint8" else np.arange(24, dtype=dtype)
    data_files.write_idx(tmp_path / name, array)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\0\0")
    assert data_files.is_idx(tmp_path / name)
    got = data_files.read_idx(tmp_path / name)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_idx_images_are_flattened_and_scaled(tmp_path):
    images = np.full((3, 2, 2), 255, dtype=np.uint8)
    images[1] = 0
    data_files.write_idx(tmp_path / "x.gz", images)
    data_files.write_idx(tmp_path / "y", np.array([1, 0, 1], dtype=np.uint8))
    X, y = data_files.load_idx(tmp_path / "x.gz", tmp_path / "y")
    assert X.shape == (3, 4) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:, 0], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(y, [1, 0, 1])


def test_truncated_idx_is_rejected(tmp_path):
    data_files.write_idx(tmp_path / "x", np.zeros((4, 5), dtype=np.uint8))
    blob = (tmp_path / "x").read_bytes()
    (tmp_path / "cut.gz").write_bytes(gzip.compress(blob[:-3]))
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*needs 20 data bytes, the file has 17"):
        data_files.read_idx(tmp_path / "cut.gz")
    (tmp_path / "text").write_text("hello")
    assert not data_files.is_idx(tmp_path / "text")
    with pytest.raises(ValueError, match="is not an IDX file"):
        data_files.read_idx(tmp_path / "text")


def test_idx_labels_must_match_images(tmp_path):
    data_files.write_idx(tmp_path / "x", np.zeros((4, 2, 2), dtype=np.uint8))
    data_files.write_idx(tmp_path / "y", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="has 4 samples but .* has 3 labels"):
        data_files.load_idx(tmp_path / "x", tmp_path / "y")


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("a,label,b\n1,0,2\n3,1,4\n")
    X, y = data_files.load_csv(tmp_path / "h.csv", "label")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])
    (tmp_path / "n.csv").write_text("1,2,0\n\n3,4,1\n")
    X, y = data_files.load_csv(tmp_path / "n.csv")  # default: the last column
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])
    X, y = data_files.load_csv(tmp_path / "n.csv", "0")
    np.testing.assert_array_equal(y, [1, 3])


@pytest.mark.parametrize("text, column, message", [
    ("a,b\n1,2\n3\n", -1, "line 3 has 1 fields, expected 2"),
    ("a,b\n", -1, "has a header but no data rows"),
    ("a,b\n1,2\n", "c", "label column 'c' is not a column name or index; the columns are: a, b"),
    ("1,2\n", 5, "label column index 5 is out of range for 2 columns"),
    ("5\n6\n", -1, "has 1 column; it needs features and a label column"),
])
def test_csv_errors(tmp_path, text, column, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        data_files.load_csv(tmp_path / "bad.csv", column)
