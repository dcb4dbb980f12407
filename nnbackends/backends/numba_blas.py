"""The matrix multiply behind the Numba backend's compiled code: NumPy's own BLAS when it can be found.

``np.dot`` inside ``@njit`` calls SciPy's BLAS, a second OpenBLAS beside the
one NumPy ships: another thread pool that spins against NumPy's on a small
machine, and on this project's 2-core test machine one that ran the products
of a batch-128 step 8% slower than NumPy's (0.3.30 against 0.3.31). So the
compiled code calls two symbols, ``nnbackends_sgemm`` and ``nnbackends_dgemm``
(declared in ``numba_kernels`` with the ABI of ``cblas_?gemm`` with 64-bit
integers), and ``bind`` points them at NumPy's ``scipy_cblas_?gemm64_`` where
NumPy is a wheel that bundles scipy-openblas, or else at a small compiled
function that calls ``np.dot`` (SciPy's BLAS). Symbols are bound by name, so
Numba's disk cache stays valid whichever library they reach.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from llvmlite import binding as llvm
from numba import carray, cfunc, types

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
#: Where NumPy wheels keep their OpenBLAS (Linux, Windows; macOS), and its symbol for each float type.
NUMPY_LIBRARIES = ("../numpy.libs/libscipy_openblas64_*", ".dylibs/libscipy_openblas64_*")
NUMPY_SYMBOLS = {"float32": "scipy_cblas_sgemm64_", "float64": "scipy_cblas_dgemm64_"}


def _numpy_gemm_addresses():
    """``{dtype name: address}`` of NumPy's bundled gemm functions, or None where there are none."""
    root = os.path.dirname(np.__file__)
    for pattern in NUMPY_LIBRARIES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            try:
                lib = ctypes.CDLL(path)
                addresses = {t: ctypes.cast(getattr(lib, s), ctypes.c_void_p).value for t, s in NUMPY_SYMBOLS.items()}
            except (OSError, AttributeError):
                continue
            return addresses, os.path.realpath(path)
    return None, None


def gemm_with_np_dot(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The fallback behind the symbols: ``c = alpha * op(a) @ op(b) + beta * c``, row-major, for the
    calls the kernels make (contiguous operands: each leading dimension is its row length)."""
    A = carray(a, (k, m) if trans_a == TRANS else (m, k))
    B = carray(b, (n, k) if trans_b == TRANS else (k, n))
    C = carray(c, (m, n))
    before = C.copy() if beta != 0 else C
    if trans_a == TRANS and trans_b == TRANS:  # one call per layout, so each np.dot sees contiguous operands
        np.dot(A.T, B.T, C)
    elif trans_a == TRANS:
        np.dot(A.T, B, C)
    elif trans_b == TRANS:
        np.dot(A, B.T, C)
    else:
        np.dot(A, B, C)
    if beta != 0:
        C[:] = alpha * C + beta * before
    elif alpha != 1:
        C *= alpha


def fallback_gemm(signature):
    """``gemm_with_np_dot`` compiled as a C function of ``signature`` (its pointers typed by alpha's type)."""
    real = signature.args[6]
    typed = types.void(*(types.CPointer(real) if t == types.voidptr else t for t in signature.args))
    return cfunc(typed, cache=True)(gemm_with_np_dot)


def bind(signatures) -> str:
    """Point each symbol of ``signatures`` (``{dtype name: (symbol, numba signature)}``) at a gemm;
    return which BLAS that is, in words."""
    addresses, path = _numpy_gemm_addresses()
    if addresses is not None:
        source = f"NumPy's OpenBLAS ({path})"
    else:
        source = "SciPy's BLAS through np.dot (NumPy's own BLAS was not found)"
        addresses = {dtype: fallback_gemm(signature).address for dtype, (_, signature) in signatures.items()}
    for dtype, (symbol, _) in signatures.items():
        llvm.add_symbol(symbol, addresses[dtype])
    return source
