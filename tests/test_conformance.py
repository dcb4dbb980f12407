"""Conformance: every kernel of every backend against the NumPy reference in float64.

Each entry of ``CASES`` builds host inputs for one kernel from a random
generator and sizes drawn by hypothesis. The kernel runs on the backend under
test in the test's dtype and on the NumPy reference in float64; returned
arrays and the arrays a kernel writes in place (``inplace``) must agree within
the dtype's tolerance. A new kernel needs a case here (``test_every_kernel_has_a_case``).

The same cases run again with the arrays a kernel only reads laid out as
transposed, strided and sliced views (``LAYOUTS``); those arrays, and the
buffers behind them, must come back unchanged. Every kernel a backend class
defines itself must keep the signature ``ArrayBackend`` declares.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_close
from nnbackends import backends as backends_package
from nnbackends.backends import KERNELS, ArrayBackend, Backend


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
    "sigmoid_bce_backward": lambda r, n, k: ((r.uniform(0.01, 0.99, (n, k)), r.integers(0, 2, (n, k)).astype(float)), ()),
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


def contiguous(a):
    """Layout of a host array as it is: the buffer sent to the backend is the kernel's argument."""
    return a, lambda buffer: buffer


def to_device(backend, args, dtype, inplace=(), layout=contiguous):
    """A case's arguments as backend arrays, and the device buffers of the arrays the kernel only reads.

    Float arrays go over in ``dtype``, integer arrays (labels) as they are. An array
    the kernel only reads is sent as ``layout``'s buffer and passed as its view of
    that buffer (see ``LAYOUTS``); the arrays at the ``inplace`` positions are sent as
    they are. Every buffer is a copy: where backend arrays are NumPy arrays, a kernel
    would otherwise write into the case's own arrays, and a later run (the reference's)
    would start from them. Returns ``(arguments, {position: buffer})`` for the arrays only read.
    """
    dev, buffers = [], {}
    for i, a in enumerate(args):
        if not isinstance(a, np.ndarray):
            dev.append(a)
            continue
        buffer, view = (contiguous if i in inplace else layout)(a)
        buffer = backend.asarray(buffer.copy(), dtype if a.dtype.kind == "f" else None)
        if i not in inplace:
            buffers[i] = buffer
        dev.append(view(buffer))
    return dev, buffers


def run(backend, name, args, dtype, inplace):
    """Run kernel ``name`` on ``backend``; return its outputs and in-place arguments as host arrays."""
    return call(backend, name, to_device(backend, args, dtype)[0], inplace)


def call(backend, name, dev, inplace):
    """Call kernel ``name`` with backend arguments; return its outputs and in-place arguments as host arrays."""
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
    assert_matches(name, got, want, dtype, f"(n={n}, k={k})")


def assert_matches(name, got, want, dtype, where):
    """What kernel ``name`` gave in ``dtype`` (``got``) matches the float64 reference's ``want``."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{name} output {i}: expected None"
            continue
        if name == "argmax":
            np.testing.assert_array_equal(g, w)
            continue
        assert_close(g, w, dtype, f"{name} output {i} {where}")
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


# ---------------------------------------------------------------------- memory layouts
# A layout turns a host array into ``(buffer, view)``: the buffer goes to the backend
# as it is, and ``view`` takes the array's values out of it there, so a kernel sees
# the same numbers as in the contiguous case in another memory layout. What the view
# leaves out of the buffer is padding (NaN, or label 0), which a kernel that ignores
# the strides or the offset would read instead.
#
# Only arrays a kernel reads are laid out. Arrays it writes in place (optimizer
# parameters and state, ``regularization_backward``'s ``dw``) stay C-contiguous, as
# the contract in ``backends/base.py`` requires. ``dropout_mask`` reads no array.
def _padding(a):
    return np.nan if a.dtype.kind == "f" else 0


def transposed(a):
    """``a`` as the transpose of a C-contiguous array (Fortran order for 2-D ``a``)."""
    return np.ascontiguousarray(a.T), lambda buffer: buffer.T


def strided(a):
    """``a`` as every other element along the last axis of a buffer twice as wide."""
    buffer = np.full((*a.shape[:-1], 2 * a.shape[-1]), _padding(a), a.dtype)
    buffer[..., ::2] = a
    return buffer, lambda buffer: buffer[..., ::2]


def sliced(a):
    """``a`` as the inside of a buffer one element larger at both ends of every axis."""
    inside = tuple(slice(1, 1 + s) for s in a.shape)
    buffer = np.full(tuple(s + 2 for s in a.shape), _padding(a), a.dtype)
    buffer[inside] = a
    return buffer, lambda buffer: buffer[inside]


LAYOUTS = {"contiguous": contiguous, "transposed": transposed, "strided": strided, "sliced": sliced}
LAYOUT_CASES = [pytest.param(name, builder, id=name) for name, builder in CASES.items() if builder is not None] + \
    [pytest.param(name, builder, id=f"{name}-variant") for name, builder in VARIANTS.items()]
# At least 2 rows and columns: every layout but "contiguous" then leaves a 2-D array non-contiguous.
layout_sizes = st.tuples(st.integers(2, 40), st.integers(2, 17), st.integers(0, 2**32 - 1))
layout_settings = settings(hypothesis_settings, max_examples=5)


def read_back(backend, buffers):
    """Host copies of device buffers (``to_numpy`` of a NumPy array is the array itself)."""
    return {i: backend.to_numpy(b).copy() for i, b in buffers.items()}


def assert_unchanged(backend, name, buffers, before):
    for i, buffer in buffers.items():
        np.testing.assert_array_equal(backend.to_numpy(buffer), before[i],
                                      err_msg=f"{name} changed argument {i}, which it only reads")


# The layouts are a loop, not a parametrization: hypothesis's pytest plugin nests one settings
# object per parametrized call of a test function, and with its "ci" profile (CI=true) some of
# its versions walk that whole chain on each run, overflowing the stack past ~900 calls.
@pytest.mark.parametrize("name, builder", LAYOUT_CASES)
@given(size=layout_sizes)
@layout_settings
def test_kernel_on_any_layout(backend, reference, dtype, name, builder, size):
    """Kernel ``name`` reading arrays in any layout matches the reference on contiguous arrays, and the
    buffers behind the arrays it only reads are unchanged (only its in-place arguments may change)."""
    n, k, seed = size
    args, inplace = builder(np.random.default_rng(seed), n, k)
    want = run(reference, name, args, "float64", inplace)
    for layout, place in LAYOUTS.items():
        dev, buffers = to_device(backend, args, dtype, inplace, place)
        if layout != "contiguous":
            assert any(not dev[i].flags.c_contiguous for i in buffers), f"{layout} left every input contiguous"
        before = read_back(backend, buffers)
        got = call(backend, name, dev, inplace)
        assert_unchanged(backend, name, buffers, before)
        assert_matches(name, got, want, dtype, f"(n={n}, k={k}, {layout} inputs)")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_all_finite_on_any_layout(backend, dtype, layout):
    """``all_finite`` looks at the views' elements only: NaN padding around them is not seen, a NaN inside is."""
    r = np.random.default_rng(0)
    arrays = [r.standard_normal((4, 3)), r.standard_normal(5)]
    dev, buffers = to_device(backend, arrays, dtype, layout=LAYOUTS[layout])
    before = read_back(backend, buffers)
    assert backend.all_finite(dev) is True
    assert_unchanged(backend, "all_finite", buffers, before)
    for i in range(len(arrays)):
        broken = [a.copy() for a in arrays]
        broken[i].flat[1] = np.nan
        assert backend.all_finite(to_device(backend, broken, dtype, layout=LAYOUTS[layout])[0]) is False, i


# ---------------------------------------------------------------------- signatures
# ``Backend`` declares only the plumbing; each kernel's contract and default lives on
# ``ArrayBackend``, so that is the declaration every override must repeat.
def package_backend_classes():
    """Every ``Backend`` subclass defined in ``nnbackends.backends`` other than ``ArrayBackend``."""
    for module in pkgutil.iter_modules(backends_package.__path__):
        try:
            importlib.import_module(f"{backends_package.__name__}.{module.name}")
        except ImportError:  # its optional library (numba) is missing here: its backend cannot run either
            continue
    found, todo = [], [Backend]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith(backends_package.__name__ + ".") and sub is not ArrayBackend:
                found.append(sub)
    return sorted(set(found), key=lambda c: c.__qualname__)


def parameters(function):
    """Names, kinds and defaults (with their types: 0 is not 0.0) of a function's parameters (annotations aside)."""
    return [(p.name, p.kind, p.default, type(p.default)) for p in inspect.signature(function).parameters.values()]


def test_array_backend_declares_every_kernel():
    assert [k for k in KERNELS if not callable(vars(ArrayBackend).get(k))] == []


@pytest.mark.parametrize("cls", package_backend_classes(), ids=lambda c: c.__name__)
def test_kernel_overrides_keep_the_declared_signature(cls):
    """Each kernel a backend class defines itself takes the parameters ``ArrayBackend`` declares."""
    differ = [f"{k}{inspect.signature(vars(cls)[k])} (declared: {k}{inspect.signature(vars(ArrayBackend)[k])})"
              for k in KERNELS if k in vars(cls)
              and parameters(vars(cls)[k]) != parameters(vars(ArrayBackend)[k])]
    assert not differ, f"{cls.__name__} overrides with other signatures: " + "; ".join(differ)
