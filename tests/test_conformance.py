"""Conformance: every kernel of every backend against the NumPy reference in float64.

Each entry of ``CASES`` builds host inputs for one kernel from a random
generator and sizes drawn by hypothesis. The kernel runs on the backend under
test in the test's dtype and on the NumPy reference in float64; returned
arrays and the arrays a kernel writes in place (``inplace``) must agree within
the dtype's tolerance. A new kernel needs a case here (``test_every_kernel_has_a_case``).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_close
from nnbackends.backends import KERNELS


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_hot(labels, k):
    return np.eye(k)[labels]


def probabilities(r, n, k):
    return softmax_rows(r.standard_normal((n, k)) * 2)


def labels(r, n, k):
    return r.integers(0, k, n)


# name -> builder(r, n, k) returning (args, inplace positions). Float arrays are
# cast to the dtype under test; integer arrays (labels) are passed as they are.
CASES = {
    "dense_forward": lambda r, n, k: ((r.standard_normal((n, 5)), r.standard_normal((5, k)), r.standard_normal(k)), ()),
    "dense_backward": lambda r, n, k: ((r.standard_normal((n, 5)), r.standard_normal((5, k)), r.standard_normal((n, k))), ()),
    "relu_forward": lambda r, n, k: ((r.standard_normal((n, k)),), ()),
    "relu_backward": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "leaky_relu_forward": lambda r, n, k: ((r.standard_normal((n, k)), 0.1), ()),
    "leaky_relu_backward": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), 0.1), ()),
    "sigmoid_forward": lambda r, n, k: ((r.standard_normal((n, k)) * 5,), ()),
    "sigmoid_backward": lambda r, n, k: ((r.uniform(0, 1, (n, k)), r.standard_normal((n, k))), ()),
    "tanh_forward": lambda r, n, k: ((r.standard_normal((n, k)) * 3,), ()),
    "tanh_backward": lambda r, n, k: ((r.uniform(-1, 1, (n, k)), r.standard_normal((n, k))), ()),
    "softmax_forward": lambda r, n, k: ((r.standard_normal((n, k)) * 3,), ()),
    "softmax_backward": lambda r, n, k: ((probabilities(r, n, k), r.standard_normal((n, k))), ()),
    "linear_forward": lambda r, n, k: ((r.standard_normal((n, k)),), ()),
    "linear_backward": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "cce_loss": lambda r, n, k: ((probabilities(r, n, k), labels(r, n, k)), ()),
    "cce_backward": lambda r, n, k: ((probabilities(r, n, k), labels(r, n, k)), ()),
    "softmax_cce_backward": lambda r, n, k: ((probabilities(r, n, k), labels(r, n, k)), ()),
    "bce_loss": lambda r, n, k: ((r.uniform(0.01, 0.99, (n, k)), r.integers(0, 2, (n, k)).astype(float)), ()),
    "bce_backward": lambda r, n, k: ((r.uniform(0.01, 0.99, (n, k)), r.integers(0, 2, (n, k)).astype(float)), ()),
    "mse_loss": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "mse_backward": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "mae_loss": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "mae_backward": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "regularization_loss": lambda r, n, k: ((r.standard_normal((n, k)), 0.01, 0.02), ()),
    "regularization_backward": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), 0.01, 0.02), (1,)),
    "multiply": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k))), ()),
    "sgd_update": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), 0.1), (0,)),
    "adagrad_update": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), r.uniform(0, 1, (n, k)), 0.1, 1e-7), (0, 2)),
    "rmsprop_update": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), r.uniform(0, 1, (n, k)), 0.01, 0.9, 1e-7), (0, 2)),
    "adam_update": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), r.standard_normal((n, k)) * 0.1,
                                     r.uniform(0, 0.1, (n, k)), 0.01, 0.9, 0.999, 1e-7, 3), (0, 2, 3)),
    "argmax": lambda r, n, k: ((r.standard_normal((n, k)),), ()),
    "categorical_accuracy": lambda r, n, k: ((probabilities(r, n, k), labels(r, n, k)), ()),
    "binary_accuracy": lambda r, n, k: ((r.uniform(0, 1, (n, k)), r.integers(0, 2, (n, k)).astype(float)), ()),
    "regression_accuracy": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), 0.5), ()),
    "all_finite": None,  # takes a list of arrays: test_all_finite
    "dropout_mask": None,  # random: test_dropout_mask
}

# Variants of a kernel's arguments that a case above does not reach.
VARIANTS = {
    "dense_backward": lambda r, n, k: ((r.standard_normal((n, 5)), r.standard_normal((5, k)), r.standard_normal((n, k)), False), ()),
    "cce_loss": lambda r, n, k: ((probabilities(r, n, k), one_hot(labels(r, n, k), k)), ()),
    "cce_backward": lambda r, n, k: ((probabilities(r, n, k), one_hot(labels(r, n, k), k)), ()),
    "softmax_cce_backward": lambda r, n, k: ((probabilities(r, n, k), one_hot(labels(r, n, k), k)), ()),
    "categorical_accuracy": lambda r, n, k: ((probabilities(r, n, k), one_hot(labels(r, n, k), k)), ()),
    "sgd_update": lambda r, n, k: ((r.standard_normal((n, k)), r.standard_normal((n, k)), 0.1, 0.9, r.standard_normal((n, k))), (0, 4)),
}

sizes = st.tuples(st.integers(1, 40), st.integers(1, 17), st.integers(0, 2**32 - 1))
hypothesis_settings = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(backend, name, args, dtype, inplace):
    """Run kernel ``name`` on ``backend``; return its outputs and in-place arguments as host arrays."""
    dev = [backend.asarray(a, dtype if a.dtype.kind == "f" else None) if isinstance(a, np.ndarray) else a
           for a in args]
    out = getattr(backend, name)(*dev)
    outs = out if isinstance(out, tuple) else (out,)
    if not inplace:
        assert out is not None, f"{name} returned nothing"
    results = [None if o is None else backend.to_numpy(o) for o in outs if not (o is None and inplace)]
    return results + [backend.to_numpy(dev[i]) for i in inplace]


def check_case(backend, reference, name, builder, dtype, n, k, seed):
    args, inplace = builder(np.random.default_rng(seed), n, k)
    got = run(backend, name, args, dtype, inplace)
    want = run(reference, name, args, "float64", inplace)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{name} output {i}: expected None"
            continue
        if name == "argmax":
            np.testing.assert_array_equal(g, w)
            continue
        assert_close(g, w, dtype, f"{name} output {i} (n={n}, k={k})")
        if np.ndim(w) and np.asarray(w).dtype.kind == "f":  # reductions may carry any float type
            assert np.asarray(g).dtype == np.dtype(dtype), f"{name} output {i} has dtype {np.asarray(g).dtype}"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c is not None])
@given(size=sizes)
@hypothesis_settings
def test_kernel_matches_reference(backend, reference, dtype, name, size):
    check_case(backend, reference, name, CASES[name], dtype, *size)


@pytest.mark.parametrize("name", list(VARIANTS))
@given(size=sizes)
@hypothesis_settings
def test_kernel_variant_matches_reference(backend, reference, dtype, name, size):
    check_case(backend, reference, name, VARIANTS[name], dtype, *size)


def test_every_kernel_has_a_case():
    assert set(CASES) == set(KERNELS)


def test_all_finite(backend, dtype):
    r = np.random.default_rng(0)
    arrays = [r.standard_normal((4, 3)), r.standard_normal(3), np.array(1.5)]
    assert backend.all_finite([backend.asarray(a, dtype) for a in arrays]) is True
    for bad in (np.nan, np.inf, -np.inf):
        for i in range(len(arrays)):
            broken = [a.copy() for a in arrays]
            broken[i].flat[-1] = bad
            assert backend.all_finite([backend.asarray(a, dtype) for a in broken]) is False, (bad, i)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_dropout_mask(backend, dtype, rate):
    mask = backend.to_numpy(backend.dropout_mask((400, 50), rate, np.random.default_rng(1), dtype))
    assert mask.shape == (400, 50) and mask.dtype == np.dtype(dtype)
    scale = np.asarray(1 / (1 - rate), dtype=dtype)
    assert np.all((mask == 0) | (mask == scale))
    kept = (mask != 0).mean()
    assert abs(kept - (1 - rate)) < 0.02  # 20,000 draws: 5 standard deviations at rate 0.5
    again = backend.to_numpy(backend.dropout_mask((400, 50), rate, np.random.default_rng(1), dtype))
    np.testing.assert_array_equal(mask, again)  # same generator state, same mask
