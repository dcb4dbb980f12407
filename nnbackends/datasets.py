"""Built-in datasets.

``spiral_data``, ``vertical_data`` and ``sine_data`` return exactly the values
and dtypes of the ``nnfs`` package's generators after ``nnfs.init(random_seed=seed)``
(float32 features, uint8 labels), using a private legacy ``RandomState`` so
that NumPy's global state is neither read nor patched.
"""
from __future__ import annotations

import numpy as np

from .validation import check_fraction, check_positive_int, check_seed


def spiral_data(samples, classes, seed=0):
    """``classes`` interleaved spiral arms of ``samples`` points each: X (n, 2) float32, y (n,) uint8."""
    def arm(rs, c, samples):
        r = np.linspace(0.0, 1, samples)
        t = np.linspace(c * 4, (c + 1) * 4, samples) + rs.randn(samples).astype(np.float32) * 0.2
        return np.c_[r * np.sin(t * 2.5), r * np.cos(t * 2.5)]

    return _by_class(samples, classes, seed, arm)


def vertical_data(samples, classes, seed=0):
    """``classes`` vertical blobs of ``samples`` points each: X (n, 2) float32, y (n,) uint8."""
    def blob(rs, c, samples):
        return np.c_[rs.randn(samples).astype(np.float32) * 0.1 + c / 3,
                     rs.randn(samples).astype(np.float32) * 0.1 + 0.5]

    return _by_class(samples, classes, seed, blob)


def _by_class(samples, classes, seed, points):
    """nnfs's layout: ``points(rs, c, samples)`` gives class c's (samples, 2) block, classes in order."""
    samples = check_positive_int("samples", samples)
    classes = check_positive_int("classes", classes)
    rs = np.random.RandomState(check_seed("seed", seed))
    X = np.zeros((samples * classes, 2), dtype=np.float32)
    y = np.zeros(samples * classes, dtype=np.uint8)
    for c in range(classes):
        rows = slice(samples * c, samples * (c + 1))
        X[rows] = points(rs, c, samples)
        y[rows] = c
    return X, y


def sine_data(samples=1000):
    """One period of a sine: X (n, 1) in [0, 1), y = sin(2 pi X), both float64 (as nnfs)."""
    samples = check_positive_int("samples", samples)
    X = np.arange(samples).reshape(-1, 1) / samples
    return X, np.sin(2 * np.pi * X).reshape(-1, 1)


def load_digits():
    """scikit-learn's bundled 8x8 digits: X (1797, 64) float32 in [0, 1], y (1797,) uint8."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ImportError(
            'load_digits needs scikit-learn, which is not installed: pip install "nnbackends[datasets]"'
        ) from None
    X, y = sk_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.uint8)


def classification_data(samples, features, classes, seed=0, dtype=np.float32):
    """Synthetic classification of any size: Gaussian features, labels from a random linear map."""
    samples = check_positive_int("samples", samples)
    features = check_positive_int("features", features)
    classes = check_positive_int("classes", classes)
    rng = np.random.default_rng(check_seed("seed", seed))
    X = rng.standard_normal((samples, features)).astype(dtype)
    y = (X @ rng.standard_normal((features, classes)).astype(dtype)).argmax(axis=1).astype(np.uint8 if classes <= 256 else np.int64)
    return X, y


def train_test_split(X, y, test_size=0.25, seed=0, shuffle=True):
    """Split into ``X_train, X_test, y_train, y_test`` with ``test_size`` of the rows held out.

    Without ``shuffle`` the test part is the last rows (as in scikit-learn), so
    ordered data such as a time series is tested on its end.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}.")
    test_size = check_fraction("test_size", test_size)
    seed = check_seed("seed", seed)
    n_test = int(round(len(X) * test_size))
    if not 0 < n_test < len(X):
        raise ValueError(f"test_size={test_size} leaves {n_test} of {len(X)} samples for testing; "
                         "both parts need at least one.")
    order = np.random.default_rng(seed).permutation(len(X)) if shuffle else np.arange(len(X))
    train, test = order[:len(X) - n_test], order[len(X) - n_test:]
    return X[train], X[test], y[train], y[test]
