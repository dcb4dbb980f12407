"""Shared fixtures: one test body runs on every registered backend.

``backend`` is parametrized over ``registered_backends()``; a backend that
cannot run here is skipped with the reason its creation gives. Tests marked
``gpu`` are skipped with a reason where no CUDA device answers.

The Numba fused step measures its pass at first use and caches the decision
(``nnbackends.backends.autotune``): for the session, ``NNBACKENDS_AUTOTUNE_DIR``
points that cache at a temporary folder (subprocesses inherit it), so no test
reads a decision from the user's cache or writes one there. Measuring stays on.

The test suite registers one more backend, ``cupy-numpy``: the CuPy backend's
own array code (``CupyArrayCode``) with NumPy standing in for CuPy, so every
suite that runs on all backends also checks that code without a GPU.

``CUPY_TF32`` is removed from the environment before CuPy reads it: TF32
products (about 1e-3 relative) would fail every float32 tolerance.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from nnbackends.backends import autotune, get_backend, register_backend, registered_backends, unavailable_reason
from nnbackends.backends.cupy_backend import CupyArrayCode

os.environ.pop("CUPY_TF32", None)

#: The backends the package itself registers (what a CLI subprocess sees).
PACKAGE_BACKENDS = registered_backends()
register_backend(CupyArrayCode.name, CupyArrayCode)

#: Relative tolerance of each dtype against the float64 NumPy reference.
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}


def backend_param(name):
    return pytest.param(name, id=name, marks=[pytest.mark.gpu] if name == "cupy" else [])


def _runnable_backend(request):
    reason = unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    return get_backend(request.param)


backend = pytest.fixture(params=[backend_param(n) for n in registered_backends()])(_runnable_backend)
package_backend = pytest.fixture(params=[backend_param(n) for n in PACKAGE_BACKENDS])(_runnable_backend)


def pytest_configure(config):
    """The session's autotune cache folder, in place of the user's: set before any test module is imported,
    as some copy ``os.environ`` for their subprocesses at import."""
    config.autotune_saved = os.environ.get(autotune.DIR_ENV_VAR)
    config.autotune_folder = tempfile.mkdtemp(prefix="nnbackends-autotune-")
    os.environ[autotune.DIR_ENV_VAR] = config.autotune_folder


def pytest_unconfigure(config):
    shutil.rmtree(config.autotune_folder, ignore_errors=True)
    if config.autotune_saved is None:
        os.environ.pop(autotune.DIR_ENV_VAR, None)
    else:
        os.environ[autotune.DIR_ENV_VAR] = config.autotune_saved


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def reference():
    return get_backend("numpy")


def pytest_collection_modifyitems(config, items):
    if any(item.get_closest_marker("gpu") for item in items):
        reason = unavailable_reason("cupy")
        if reason:
            skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
            for item in items:
                if item.get_closest_marker("gpu"):
                    item.add_marker(skip)


def assert_close(got, want, dtype, what=""):
    """``got`` (any dtype) matches the float64 reference ``want`` within the dtype's tolerance."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    tol = TOLERANCE[dtype]
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)
