"""Numerical robustness of every backend's kernels at extreme inputs (hypothesis).

Softmax, cross-entropy and their gradients stay finite for logits up to
+-1e4 in float32 and +-1e300 in float64; sigmoid and tanh saturate without a
warning; the loss of a perfect prediction is finite. Overflow, division by
zero and invalid operations are errors inside every check (underflow to 0 is
the right answer for exp of a very negative number, so it is allowed).
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

#: The largest logit magnitude each dtype must handle.
BOUND = {"float32": 1e4, "float64": 1e300}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def strict():
    """Turn every warning and NumPy overflow, invalid value or divide by zero into an error."""
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        warnings.simplefilter("error")
        yield


@st.composite
def logits(draw, dtype):
    """(n, k) logits anywhere in [-BOUND, BOUND], with the extremes themselves often drawn."""
    n, k = draw(st.integers(1, 6)), draw(st.integers(2, 5))
    bound = BOUND[dtype]
    values = st.one_of(st.sampled_from([-bound, bound, 0.0]),
                       st.floats(-bound, bound, width=32 if dtype == "float32" else 64))
    z = draw(arrays(dtype, (n, k), elements=values))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, k - 1)))
    return z, labels


def host(backend, x):
    out = backend.to_numpy(x)
    assert np.isfinite(out).all(), out
    return out


def to(backend, x, dtype=None):
    return backend.asarray(np.ascontiguousarray(x), dtype)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@SETTINGS
@given(data=st.data())
def test_softmax_and_cross_entropy_stay_finite(backend, dtype, data):
    z, labels = data.draw(logits(dtype))
    one_hot = np.eye(z.shape[1], dtype=dtype)[labels]
    dy = np.random.default_rng(0).standard_normal(z.shape).astype(dtype)
    with strict():
        p_dev = backend.softmax_forward(to(backend, z, dtype))
        p = host(backend, p_dev)
        assert (p >= 0).all() and (p <= 1).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
        host(backend, backend.softmax_backward(p_dev, to(backend, dy, dtype)))
        for y in (to(backend, labels), to(backend, one_hot, dtype)):
            assert np.isfinite(backend.to_float(backend.cce_loss(p_dev, y)))
            host(backend, backend.cce_backward(p_dev, y))
            grad = host(backend, backend.softmax_cce_backward(p_dev, y))
            assert (np.abs(grad) <= 1.0 / z.shape[0] + 1e-6).all()


@SETTINGS
@given(data=st.data())
def test_sigmoid_and_tanh_saturate_without_warnings(backend, dtype, data):
    z, _ = data.draw(logits(dtype))
    targets = (z > 0).astype(dtype)
    dy = np.ones_like(z)
    with strict():
        s_dev = backend.sigmoid_forward(to(backend, z, dtype))
        s = host(backend, s_dev)
        assert (s >= 0).all() and (s <= 1).all()
        host(backend, backend.sigmoid_backward(s_dev, to(backend, dy, dtype)))
        t_dev = backend.tanh_forward(to(backend, z, dtype))
        t = host(backend, t_dev)
        assert (t >= -1).all() and (t <= 1).all()
        host(backend, backend.tanh_backward(t_dev, to(backend, dy, dtype)))
        for y in (targets, 1 - targets):  # right and maximally wrong saturated predictions
            assert np.isfinite(backend.to_float(backend.bce_loss(s_dev, to(backend, y, dtype))))
            host(backend, backend.bce_backward(s_dev, to(backend, y, dtype)))


def test_saturation_values(backend, dtype):
    """At the bound, sigmoid and tanh reach their limits exactly and their gradients vanish."""
    bound = BOUND[dtype]
    z = np.array([[-bound, bound]], dtype=dtype)
    with strict():
        s = backend.sigmoid_forward(to(backend, z, dtype))
        t = backend.tanh_forward(to(backend, z, dtype))
        np.testing.assert_array_equal(host(backend, s), [[0.0, 1.0]])
        np.testing.assert_array_equal(host(backend, t), [[-1.0, 1.0]])
        ones = to(backend, np.ones_like(z), dtype)
        np.testing.assert_array_equal(host(backend, backend.sigmoid_backward(s, ones)), [[0.0, 0.0]])
        np.testing.assert_array_equal(host(backend, backend.tanh_backward(t, ones)), [[0.0, 0.0]])


@pytest.mark.parametrize("n, k", [(1, 2), (7, 4)])
def test_loss_of_a_perfect_prediction_is_finite(backend, dtype, n, k):
    labels = np.arange(n) % k
    one_hot = np.eye(k, dtype=dtype)[labels]
    binary = (np.arange(n * k).reshape(n, k) % 2).astype(dtype)
    with strict():
        p = to(backend, one_hot, dtype)
        for y in (to(backend, labels), p):
            loss = backend.to_float(backend.cce_loss(p, y))
            assert np.isfinite(loss) and 0 <= loss < 1e-6
            host(backend, backend.cce_backward(p, y))
            np.testing.assert_array_equal(host(backend, backend.softmax_cce_backward(p, y)), 0.0)
        b = to(backend, binary, dtype)
        loss = backend.to_float(backend.bce_loss(b, b))
        assert np.isfinite(loss) and 0 <= loss < 1e-6
        host(backend, backend.bce_backward(b, b))
        for name in ("mse", "mae"):
            assert backend.to_float(getattr(backend, name + "_loss")(b, b)) == 0.0
            np.testing.assert_array_equal(host(backend, getattr(backend, name + "_backward")(b, b)), 0.0)
