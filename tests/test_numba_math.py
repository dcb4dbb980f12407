"""The Numba backend's library-free exp and tanh against NumPy, in ulps, with the special values."""
from __future__ import annotations

import numpy as np
import pytest

from nnbackends.backends import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("numba") is not None, reason=str(unavailable_reason("numba")))

SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan]


@pytest.fixture(scope="module")
def apply():
    from numba import njit

    from nnbackends.backends.numba_kernels import exp_vectorizable, tanh_vectorizable

    @njit
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = exp_vectorizable(x[i])

    @njit
    def tanh_all(x, out):
        for i in range(x.size):
            out[i] = tanh_vectorizable(x[i])

    def run(name, x):
        out = np.empty_like(x)
        (exp_all if name == "exp" else tanh_all)(x, out)
        return out
    return run


def grid(dtype, low, high):
    """Evenly spaced points over [low, high], tiny magnitudes of both signs, and the limits' neighbours."""
    tiny = np.finfo(dtype).tiny
    points = [np.linspace(low, high, 400_001), np.geomspace(tiny, 1.0, 20_001), -np.geomspace(tiny, 1.0, 20_001)]
    return np.concatenate(points).astype(dtype)


def ulps(got, want, dtype):
    """|got - want| in units of the last place of ``want`` rounded to ``dtype`` (want is exact enough)."""
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


@pytest.mark.parametrize("dtype, low, high", [(np.float32, -103.0, 88.7), (np.float64, -745.0, 709.7)])
def test_exp_is_within_two_ulp_and_saturates(apply, dtype, low, high):
    x = grid(dtype, low, high)
    want = np.exp(x.astype(np.longdouble)).astype(np.float64)
    got = apply("exp", x)
    normal = want >= np.finfo(dtype).tiny
    assert ulps(got[normal], want[normal], dtype).max() <= 2.0
    assert np.all((got[~normal] >= 0) & (got[~normal] <= 2 * np.finfo(dtype).tiny))  # underflow to 0 or subnormal
    big = np.array([1e4, -1e4, np.finfo(dtype).max], dtype)
    np.testing.assert_array_equal(apply("exp", big), np.array([np.inf, 0.0, np.inf], dtype))
    specials = apply("exp", np.array(SPECIALS, dtype))
    np.testing.assert_array_equal(specials, np.array([1.0, 1.0, np.inf, 0.0, np.nan], dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_is_within_three_ulp_and_saturates(apply, dtype):
    x = grid(dtype, -25.0, 25.0)
    want = np.tanh(x.astype(np.longdouble)).astype(np.float64)
    got = apply("tanh", x)
    assert ulps(got, want, dtype).max() <= 3.0
    assert np.all(np.abs(got) <= 1)
    big = np.array([50.0, -50.0, np.finfo(dtype).max, -np.finfo(dtype).max], dtype)
    np.testing.assert_array_equal(apply("tanh", big), np.array([1.0, -1.0, 1.0, -1.0], dtype))
    specials = apply("tanh", np.array(SPECIALS, dtype))
    np.testing.assert_array_equal(specials, np.array([0.0, 0.0, 1.0, -1.0, np.nan], dtype))
