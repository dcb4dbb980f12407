"""The BLAS behind the Numba backend's compiled code: NumPy's own, or SciPy's through np.dot."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from nnbackends.backends import get_backend, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("numba") is not None, reason=str(unavailable_reason("numba")))


def call_gemm(function, trans_a, trans_b, alpha, a, b, beta, c):
    """Call a ``cblas_?gemm``-shaped C function (64-bit integers, row-major) on C-contiguous arrays."""
    from nnbackends.backends import numba_blas as B

    real = ctypes.c_float if c.dtype == np.float32 else ctypes.c_double
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    function.argtypes = [ctypes.c_int32] * 3 + [size] * 3 + [real, pointer, size, pointer, size, real, pointer, size]
    function(B.ROW_MAJOR, B.TRANS if trans_a else B.NO_TRANS, B.TRANS if trans_b else B.NO_TRANS, m, n, k,
             alpha, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], beta, c.ctypes.data, n)


def operands(dtype, trans_a, trans_b, m=5, n=4, k=3):
    r = np.random.default_rng(0)
    a = r.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = r.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = r.standard_normal((m, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    return a, b, c, want


def gemm_functions(dtype):
    """Every implementation the symbols may reach here: the fallback, and NumPy's where found."""
    from nnbackends.backends import numba_blas as B
    from nnbackends.backends import numba_kernels as K

    found = {"np.dot fallback": B.fallback_gemm(K.GEMM[dtype][1]).ctypes}
    addresses, _ = B._numpy_gemm_addresses()
    if addresses is not None:
        found["NumPy's OpenBLAS"] = ctypes.CFUNCTYPE(None)(addresses[dtype])
    return found


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (2.0, 0.0), (0.5, 1.5)])
def test_every_gemm_computes_alpha_op_a_op_b_plus_beta_c(dtype, trans_a, trans_b, alpha, beta):
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for name, function in gemm_functions(dtype).items():
        a, b, c, product = operands(np.dtype(dtype), trans_a, trans_b)
        want = alpha * product + beta * c.astype(np.float64)
        call_gemm(function, trans_a, trans_b, alpha, a, b, beta, c)
        np.testing.assert_allclose(c, want, rtol=rtol, atol=rtol, err_msg=name)


def test_info_names_the_blas_in_use():
    from nnbackends.backends import numba_blas as B

    blas = get_backend("numba").describe()["blas"]
    addresses, path = B._numpy_gemm_addresses()
    if addresses is None:
        assert blas.startswith("SciPy's BLAS through np.dot")
    else:
        assert blas == f"NumPy's OpenBLAS ({path})"


def test_kernels_and_the_fused_step_work_on_the_fallback():
    """With NumPy's BLAS hidden, the symbols reach np.dot and training gives the same weights."""
    from test_numba import run_python

    code = """
        import numpy as np
        from nnbackends.backends import numba_blas
        numba_blas._numpy_gemm_addresses = lambda: (None, None)
        from nnbackends import Model
        from nnbackends.backends import numba_kernels as K
        from nnbackends.layers import Dense, ReLU, Softmax
        print(K.BLAS)
        r = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            x, W, dy = (r.standard_normal(s).astype(dtype) for s in ((7, 5), (5, 3), (7, 3)))
            assert np.allclose(K.dense_forward(x, W, np.zeros(3, dtype)), x @ W, rtol=1e-5)
            assert np.allclose(K.dense_grads(x, dy)[0], x.T @ dy, rtol=1e-5)
            assert np.allclose(K.dense_input_grad(W, dy), dy @ W.T, rtol=1e-5)
        X, y = r.standard_normal((64, 200)), r.integers(0, 3, 64)
        weights = []
        for backend in ("numba", "numpy"):  # 200*100 weights: the compiled step's BLAS pass
            model = Model(backend=backend, seed=0, dtype="float64")
            model.add(Dense(200, 100)).add(ReLU()).add(Dense(100, 3)).add(Softmax())
            model.compile(loss="categorical_crossentropy", optimizer="adam").fit(X, y, epochs=3, verbose=0)
            weights.append(model.get_weights())
        print(max(float(np.abs(a - b).max()) for a, b in zip(*weights)))
    """
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    source, difference = done.stdout.split("\n")[:2]
    assert source.startswith("SciPy's BLAS through np.dot")
    assert float(difference) < 1e-10
