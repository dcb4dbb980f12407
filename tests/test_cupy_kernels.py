"""What a review of the CuPy backend found, each fix checked without a GPU where that can tell.

Without a GPU: the compiled PTX (NVRTC), the launches the backend makes (the
launch checker of ``test_cupy``), the NumPy stand-in, and fake CuPy modules
for device switching, capture and detection. Tests marked ``gpu`` check on a
device what only a device can tell: edge sizes of the kernels, a batch of one
row that keeps its graph, two devices, CuPy arrays given to ``fit``.
"""
from __future__ import annotations

import contextlib
import gc
import re
import sys
import types

import numpy as np
import pytest

import nnbackends.backends as registry
from conftest import assert_close
from nnbackends import Model
from nnbackends.backends import BackendUnavailableError, get_backend
from nnbackends.backends import cupy_backend as cb
from nnbackends.backends import cupy_device as cd
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, Linear, Tanh
from nnbackends.optimizers import Adam
from test_cupy import (STEP_MODELS, LaunchChecker, _fake_cupy, _fresh_registry, checked_backend, gpu,  # noqa: F401
                       nvrtc_compile, ptx_for)


class RecordingChecker(LaunchChecker):
    """The launch checker, keeping each launch's kernel name, grid and block."""

    def __init__(self):
        super().__init__()
        self.launches = []

    def function(self, name, dtype):
        check = super().function(name, dtype)

        def launch(grid, block, args):
            check(grid, block, args)
            self.launches.append((name, tuple(grid), tuple(block)))

        return launch


def kernel_ptx(name, dtype="float32"):
    return ptx_for(dtype).split(f".entry {name}(")[1].split(".entry")[0]


# ---------------------------------------------------------------------- 1x1 products (item 3)
class NoSmallProducts:
    """NumPy, except the products CuPy computes as a reduction that allocates (a 1 x 1 result)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def matmul(a, b, out=None):
        assert not (a.shape[0] == 1 and b.shape[1] == 1), "a 1x1 product reached xp.matmul"
        return np.matmul(a, b, out=out)


def one_output_model(be, dtype="float32"):
    model = Model(backend=be, seed=1, dtype=dtype)
    for layer in (Dense(1, 8), Tanh(), Dense(8, 1), Linear()):
        model.add(layer)
    return model.compile(loss="mse", optimizer=Adam(0.01))


def test_a_one_row_batch_through_a_one_output_layer_runs_our_dot_product():
    checker = RecordingChecker()
    be = checked_backend(checker)
    be.xp = NoSmallProducts()
    X = np.linspace(-1, 1, 33).reshape(-1, 1)  # batches of 16, 16 and 1 row
    with np.errstate(all="ignore"):  # the checked kernels compute nothing
        one_output_model(be).fit(X, np.sin(X), epochs=2, batch_size=16, verbose=0, fused=True)
    assert "dot_product" in checker.launched


# ---------------------------------------------------------------------- per-device caches (item 5)
class FakeDevices:
    """The parts of CuPy the backend's per-device state touches, with a current device to switch."""

    def __init__(self):
        self.current = 0
        self.modules, self.streams = [], []
        fake = self

        class RawModule:
            def __init__(self, code, options):
                self.device = fake.current
                fake.modules.append(self)

            def get_function(self, name):
                return (name, self.device)

        class Stream:
            def __init__(self, non_blocking):
                self.device = fake.current
                fake.streams.append(self)

        self.RawModule = RawModule
        self.cuda = types.SimpleNamespace(Stream=Stream, runtime=types.SimpleNamespace(getDevice=lambda: fake.current))


def backend_on(fake):
    be = cb.CupyBackend.__new__(cb.CupyBackend)
    cb.CupyArrayCode.__init__(be)
    be.xp = be.cupy = fake
    be._devices = {}
    return be


def test_each_device_launches_its_own_kernels():
    fake = FakeDevices()
    be = backend_on(fake)
    f32 = np.dtype("float32")
    on_first = be._function("multiply", f32)
    fake.current = 1
    assert be._function("multiply", f32) == ("multiply", 1)
    assert be._kernels().capture_stream().device == 1
    fake.current = 0
    assert be._function("multiply", f32) is on_first == ("multiply", 0)
    assert be._kernels().capture_stream().device == 0
    assert [m.device for m in fake.modules] == [0, 1] and len(fake.streams) == 2
    assert set(be._functions) == {("multiply", "float32")}


# ---------------------------------------------------------------------- capture (gc, allocation)
class FakeCapture(FakeDevices):
    """Adds stream capture and the allocator switch; records what the captured body saw."""

    def __init__(self):
        super().__init__()
        self.allocator = None
        fake = self
        stream_type = self.cuda.Stream

        class Stream(stream_type):
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def begin_capture(self):
                pass

            def end_capture(self):
                return types.SimpleNamespace(launch=lambda: None)

        @contextlib.contextmanager
        def using_allocator(allocator):
            fake.allocator = allocator
            try:
                yield
            finally:
                fake.allocator = None

        self.cuda.Stream = Stream
        self.cuda.using_allocator = using_allocator


@pytest.mark.parametrize("enabled", [True, False])
def test_capture_pauses_garbage_collection_and_forbids_allocation(enabled):
    fake = FakeCapture()
    be = backend_on(fake)
    seen = {}

    def body():
        seen["collecting"] = gc.isenabled()
        with pytest.raises(RuntimeError, match="allocated 64 bytes during CUDA graph capture"):
            fake.allocator(64)

    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        replay = be._capture(body)
        after = gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == {"collecting": False}
    assert after is enabled
    assert callable(replay)


# ---------------------------------------------------------------------- detection of NVRTC (item 6)
def test_the_nvrtc_probe_kernel_compiles():
    ptx = nvrtc_compile(cd.PROBE_SOURCE, cd.PROBE_OPTIONS)
    assert ".entry nnbackends_probe(" in ptx


def test_detection_compiles_the_probe(monkeypatch):
    _fresh_registry(monkeypatch)
    fake = _fake_cupy(device_count=1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert registry.resolve_backend("auto") == "cupy"
    assert fake.compiled == [(cd.PROBE_SOURCE, cd.PROBE_OPTIONS)]


def test_an_nvrtc_that_cannot_compile_is_reported_as_such(monkeypatch):
    _fresh_registry(monkeypatch)
    missing = RuntimeError("NVRTC_ERROR_BUILTIN_OPERATION_FAILURE (7): libnvrtc-builtins.so.12.9 not found")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count=1, nvrtc_error=missing))
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("cupy")
    message = str(info.value)
    assert "found a CUDA device but cannot compile kernels with NVRTC" in message
    assert "libnvrtc-builtins" in message and "no CUDA device answers" not in message
    assert registry.resolve_backend("auto") != "cupy"


# ---------------------------------------------------------------------- operands checked before launches (item 7)
@pytest.mark.parametrize("kernel, args", [
    ("mse_loss", (np.ones((4, 3), np.float32), np.ones((4, 3), np.float64))),  # float64 targets, float32 predictions
    ("cce_loss", (np.full((4, 3), 1 / 3, np.float32), np.eye(3, dtype=np.int64)[[0, 1, 2, 0]])),  # integer one-hot
    ("categorical_accuracy", (np.eye(3, dtype=np.float64)[[0, 1, 2, 0]], np.eye(3, dtype=np.int32)[[0, 1, 2, 1]])),
    ("bce_backward", (np.full((4, 2), 0.25, np.float64), np.ones((4, 2), np.float32))),
])
def test_targets_of_another_type_are_cast_to_the_predictions_type(kernel, args):
    be, reference = cb.CupyArrayCode(), get_backend("numpy")
    got = getattr(be, kernel)(*args)
    assert got.dtype == args[0].dtype
    want = getattr(reference, kernel)(*(a.astype(np.float64) for a in args))
    assert_close(got, want, args[0].dtype.name)


def _array(shape=(4, 3), dtype=np.float32):
    return np.ones(shape, dtype)


@pytest.mark.parametrize("kernel, args, error", [
    ("sgd_update", (_array(), _array(dtype=np.float64), 0.1), TypeError),
    ("adam_update", (_array(), _array(), _array(), _array((3, 4)), 0.1, 0.9, 0.999, 1e-7, 1), ValueError),
    ("adagrad_update", (_array((3, 4)).T, _array(), _array(), 0.1, 1e-7), ValueError),  # param not contiguous
    ("relu_forward", (np.ones((4, 3), np.int64),), TypeError),
    ("tanh_backward", (_array(), _array((4, 2))), ValueError),
    ("multiply", (_array(), _array(dtype=np.float64)), TypeError),
    ("dense_forward", (_array(), _array((3, 2)), _array((3,))), ValueError),
    ("mse_loss", (_array(), _array((3, 4))), ValueError),
    ("cce_loss", (_array(), np.array([0, 1, 2])), ValueError),
    ("regularization_backward", (_array(), _array(dtype=np.float64), 0.1, 0.0), TypeError),
])
def test_operands_a_kernel_would_misread_raise_before_any_launch(kernel, args, error):
    checker = LaunchChecker()
    be = checked_backend(checker)
    with pytest.raises(error, match=kernel):
        getattr(be, kernel)(*args)
    assert not checker.launched
    with pytest.raises(error, match=kernel):
        getattr(cb.CupyArrayCode(), kernel)(*args)


# ---------------------------------------------------------------------- the smaller items (item 9)
def test_column_sums_reads_rows_with_a_warp_per_tile_of_columns():
    checker = RecordingChecker()
    be = checked_backend(checker)
    dy = np.ones((1000, 70), np.float32)
    be.dense_backward(np.ones((1000, 5), np.float32), np.ones((5, 70), np.float32), dy)
    (launch,) = [launch for launch in checker.launches if launch[0] == "column_sums"]
    assert launch == ("column_sums", (3,), (cd.COLUMN_TILE, cd.REDUCE_THREADS // cd.COLUMN_TILE))


@pytest.mark.parametrize("kernel", ["bias_activation_forward", "cce_backward_labels", "softmax_cce_backward_labels"])
def test_row_and_column_kernels_divide_once_per_thread(kernel):
    """The loops are unrolled, so a 64-bit % or / per element shows up several times (the old code had 6-8)."""
    body = kernel_ptx(kernel)
    assert len(re.findall(r"\b(?:rem|div)\.[su]64", body)) <= 4


def test_adam_threads_do_not_compute_powers():
    """CUDA's pow is a call in the PTX: the bias corrections are computed once per step, not per thread."""
    for kernel in ("adam_update", "adam_update_guarded"):
        assert not re.findall(r"\bcall", kernel_ptx(kernel, "float64")), kernel
    assert re.findall(r"\bcall", kernel_ptx("step_bookkeeping", "float64"))  # where the powers are


@pytest.mark.parametrize("n, blocks", [(1, 1), (cd.REDUCE_CHUNK, 1), (cd.REDUCE_CHUNK + 1, 2), (10**6, 245),
                                       (10**9, cd.MAX_REDUCE_BLOCKS)])
def test_large_reductions_run_on_several_blocks_then_add_their_sums(n, blocks):
    assert cd.reduce_blocks(n) == blocks
    if n > 10**6:
        return
    checker = RecordingChecker()
    be = checked_backend(checker)
    p = np.ones((n, 1), np.float32)
    be.mse_loss(p, p)
    launches = [(name, grid) for name, grid, _ in checker.launches]
    assert launches == [("mse_loss", (blocks,))] + ([("finish_mean", (1,))] if blocks > 1 else [])


def test_tf32_products_are_detected_and_warned_about(monkeypatch):
    _fresh_registry(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count=1))
    monkeypatch.setenv("CUPY_TF32", "1")
    with pytest.warns(RuntimeWarning, match="CUPY_TF32"):
        assert cb.CupyBackend().tf32
    monkeypatch.setenv("CUPY_TF32", "0")
    assert not cd.tf32_products(sys.modules["cupy"])


def test_the_test_suite_runs_without_tf32():
    import os

    assert "CUPY_TF32" not in os.environ  # conftest removes it before CuPy reads it


# ---------------------------------------------------------------------- on a GPU
def _host(gpu, x):
    return gpu.to_numpy(x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cols", [1, 31, 33, 1000])
def test_gpu_softmax_edge_widths(gpu, dtype, cols):
    r = np.random.default_rng(cols)
    x, dy = r.standard_normal((37, cols)) * 3, r.standard_normal((37, cols))
    reference = get_backend("numpy")
    y = gpu.softmax_forward(gpu.asarray(x, dtype))
    assert_close(_host(gpu, y), reference.softmax_forward(x), dtype, "softmax_forward")
    y_ref = reference.softmax_forward(x)
    got = gpu.softmax_backward(gpu.asarray(y_ref, dtype), gpu.asarray(dy, dtype))
    assert_close(_host(gpu, got), reference.softmax_backward(y_ref, dy), dtype, "softmax_backward")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 511, 513, 10**6])
def test_gpu_reductions_over_edge_sizes(gpu, dtype, n):
    r = np.random.default_rng(n)
    reference = get_backend("numpy")
    p, y = r.uniform(0.05, 0.95, (n, 3)), r.integers(0, 3, n)
    w, t = r.standard_normal((n, 1)), r.standard_normal((n, 1))
    dev = {k: gpu.asarray(v, dtype) for k, v in dict(p=p, w=w, t=t).items()}
    labels = gpu.asarray(y)
    for kernel, args, dev_args in [
        ("cce_loss", (p, y), (dev["p"], labels)),
        ("categorical_accuracy", (p, y), (dev["p"], labels)),
        ("mse_loss", (w, t), (dev["w"], dev["t"])),
        ("regularization_loss", (w, 0.01, 0.02), (dev["w"], 0.01, 0.02)),
    ]:
        assert_close(gpu.to_float(getattr(gpu, kernel)(*dev_args)), getattr(reference, kernel)(*args), dtype, kernel)
    _, dW, db = gpu.dense_backward(dev["w"], gpu.asarray(np.ones((1, 1)), dtype), dev["t"])  # dW: a 1x1 product
    _, want_dW, want_db = reference.dense_backward(w, np.ones((1, 1)), t)
    assert_close(_host(gpu, dW), want_dW, dtype, "1x1 product")
    assert_close(_host(gpu, db), want_db, dtype, "column sums")


@pytest.mark.gpu
def test_gpu_elementwise_kernels_past_two_to_the_31_elements(gpu):
    cp = gpu.cupy
    n = 2**31 + 5
    x = cp.full(n, -1.0, dtype=cp.float32)
    x[-3:] = cp.asarray([1.0, 2.0, -5.0], dtype=cp.float32)
    y = gpu.relu_forward(x)
    assert _host(gpu, y[-3:]).tolist() == [1.0, 2.0, 0.0]
    assert int(cp.count_nonzero(y)) == 2
    del x, y
    rows = 2**31 // 1000 + 3  # a rows x 1000 product past 2^31 elements: the bias kernel's row and column
    z = gpu.dense_forward(gpu.asarray(np.arange(rows, dtype=np.float32).reshape(-1, 1) % 7),
                          gpu.asarray(np.ones((1, 1000)), "float32"), gpu.asarray(np.arange(1000), "float32"))
    last = _host(gpu, z[-2:])
    np.testing.assert_array_equal(last, ((np.arange(rows - 2, rows) % 7)[:, None] + np.arange(1000)).astype(np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_a_one_row_last_batch_keeps_its_graph(gpu, dtype):
    X = np.linspace(-1, 1, 33).reshape(-1, 1)  # batches of 16, 16 and 1 row into a one-output layer
    want = one_output_model(gpu, dtype)
    want.fit(X, np.sin(X), epochs=3, batch_size=16, shuffle=False, verbose=0, fused=False)
    got = one_output_model(gpu, dtype)
    got.fit(X, np.sin(X), epochs=3, batch_size=16, shuffle=False, verbose=0, fused=True)
    shapes = got._fused_step.shapes
    assert len(shapes) == 2 and all(type(replay).__name__ != "function" for _, replay in shapes.values())
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, dtype)


@pytest.mark.gpu
def test_gpu_two_devices_train_alike(gpu):
    cp = gpu.cupy
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices; this machine has one")
    X, y = spiral_data(50, 3)
    weights = []
    for device in (1, 0):
        with cp.cuda.Device(device):
            model = STEP_MODELS["adam-relu"](gpu, "float32")
            model.fit(X, y, epochs=3, batch_size=64, verbose=0, fused=True)
            weights.append(model.get_weights())
    assert {1, 0} <= set(gpu._devices)
    for a, b in zip(*weights):
        assert_close(a, b, "float32")


@pytest.mark.gpu
def test_gpu_fit_and_predict_take_cupy_arrays(gpu):
    cp = gpu.cupy
    X, y = spiral_data(20, 3)
    host = STEP_MODELS["adam-relu"](gpu, "float32")
    host.fit(X, y, epochs=2, verbose=0)
    device = STEP_MODELS["adam-relu"](gpu, "float32")
    device.fit(cp.asarray(X), cp.asarray(y), epochs=2, verbose=0)
    np.testing.assert_array_equal(device.predict(cp.asarray(X)), host.predict(X))


@pytest.mark.gpu
def test_gpu_products_are_ieee_float32(gpu):
    assert gpu.describe()["float32_products"] == "IEEE float32"
