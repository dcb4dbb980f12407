"""Datasets: the nnfs generators' exact output, digits, splitting and synthetic data."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nnbackends import datasets

#: (generator, samples, classes, seed) compared against the nnfs package.
NNFS_CASES = [
    ("spiral_data", 100, 3, 0),
    ("spiral_data", 100, 3, 1),
    ("spiral_data", 7, 5, 42),
    ("vertical_data", 100, 3, 0),
    ("vertical_data", 13, 4, 7),
]

# nnfs.init patches NumPy for the whole process, so the reference is made in a child process.
REFERENCE_SCRIPT = """
import json, sys
import numpy as np
import nnfs
from nnfs.datasets import sine_data, spiral_data, vertical_data

cases, out = json.loads(sys.argv[1]), sys.argv[2]
arrays = {}
for i, (name, samples, classes, seed) in enumerate(cases):
    nnfs.init(random_seed=seed)
    arrays[f"X{i}"], arrays[f"y{i}"] = {"spiral_data": spiral_data, "vertical_data": vertical_data}[name](samples, classes)
arrays["sine_X"], arrays["sine_y"] = sine_data()
np.savez(out, **arrays)
"""


@pytest.fixture(scope="module")
def nnfs_reference(tmp_path_factory):
    pytest.importorskip("nnfs", reason="the nnfs package is not installed; it is the reference for the datasets")
    out = tmp_path_factory.mktemp("nnfs") / "reference.npz"
    subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, json.dumps(NNFS_CASES), str(out)], check=True)
    with np.load(out) as ref:
        return dict(ref)


def assert_identical(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("index", range(len(NNFS_CASES)), ids=[f"{c[0]}-{c[1]}x{c[2]}-seed{c[3]}" for c in NNFS_CASES])
def test_equals_nnfs(nnfs_reference, index):
    name, samples, classes, seed = NNFS_CASES[index]
    state = np.random.get_state()
    X, y = getattr(datasets, name)(samples, classes, seed=seed)
    assert_identical(X, nnfs_reference[f"X{index}"])
    assert_identical(y, nnfs_reference[f"y{index}"])
    after = np.random.get_state()  # NumPy's global generator is neither read nor advanced
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


def test_sine_equals_nnfs(nnfs_reference):
    X, y = datasets.sine_data()
    assert_identical(X, nnfs_reference["sine_X"])
    assert_identical(y, nnfs_reference["sine_y"])


def test_seeds_differ():
    a, _ = datasets.spiral_data(50, 3, seed=0)
    b, _ = datasets.spiral_data(50, 3, seed=1)
    assert not np.array_equal(a, b)


def test_load_digits():
    pytest.importorskip("sklearn", reason="load_digits needs scikit-learn")
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.uint8
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_train_test_split():
    X = np.arange(40).reshape(20, 2)
    y = np.arange(20)
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.25, seed=3)
    assert len(X_test) == len(y_test) == 5 and len(X_train) == len(y_train) == 15
    np.testing.assert_array_equal(X_train[:, 0] // 2, y_train)  # rows stay paired with their labels
    np.testing.assert_array_equal(X_test[:, 0] // 2, y_test)
    assert sorted(np.concatenate([y_train, y_test])) == list(range(20))  # a partition
    assert not np.array_equal(np.sort(y_test), np.arange(15, 20))  # shuffled, not the last rows
    again = datasets.train_test_split(X, y, test_size=0.25, seed=3)
    np.testing.assert_array_equal(again[3], y_test)  # the seed fixes the split
    ordered = datasets.train_test_split(X, y, test_size=0.25, shuffle=False)
    np.testing.assert_array_equal(ordered[3], np.arange(15, 20))


@pytest.mark.parametrize("kwargs, match", [
    (dict(test_size=1.5), "test_size"),
    (dict(test_size=0.01), "test_size=0.01 leaves 0 of 20"),
])
def test_train_test_split_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.train_test_split(np.zeros((20, 2)), np.zeros(20), **kwargs)


def test_train_test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="different lengths: 5 and 4"):
        datasets.train_test_split(np.zeros((5, 2)), np.zeros(4))


def test_classification_data():
    X, y = datasets.classification_data(500, 12, 4, seed=2)
    assert X.shape == (500, 12) and X.dtype == np.float32
    assert y.shape == (500,) and y.dtype == np.uint8
    assert set(np.unique(y)) == {0, 1, 2, 3}
    X2, y2 = datasets.classification_data(500, 12, 4, seed=2)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, datasets.classification_data(500, 12, 4, seed=3)[0])
    X64, _ = datasets.classification_data(10, 3, 2, dtype=np.float64)
    assert X64.dtype == np.float64
