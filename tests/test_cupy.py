"""The CuPy backend: what can be shown without a GPU, and the GPU-only checks.

Without a GPU: the CUDA source compiles with NVRTC for sm_90 in both float
types and defines exactly the kernels the backend loads; every launch the
backend makes passes the argument list its kernel declares (checked against
the compiled PTX); the compiled step's array code matches the per-layer path
(on the ``cupy-numpy`` stand-in); detection errors say what is missing.
Tests marked ``gpu`` need a CUDA device and are skipped with a reason elsewhere.
"""
from __future__ import annotations

import ctypes
import importlib.util
import pathlib
import re
import subprocess
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
from nnbackends.layers import Dense, Dropout, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from nnbackends.optimizers import SGD, Adam, RMSprop
from test_conformance import CASES, VARIANTS, run

ROOT = pathlib.Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float64")


# ---------------------------------------------------------------------- NVRTC, through ctypes
class NvrtcError(RuntimeError):
    pass


def _nvrtc():
    spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    if spec is None:
        pytest.skip("the nvidia-cuda-nvrtc-cu12 wheel (in the [test] extra) is not installed")
    libdir = pathlib.Path(next(iter(spec.submodule_search_locations))) / "lib"
    return ctypes.CDLL(str(next(libdir.glob("libnvrtc.so*"))))


def _check(lib, status, what):
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def nvrtc_compile(source: str, options, arch="sm_90") -> str:
    """Compile CUDA source with NVRTC (no GPU, no toolkit); return its PTX or raise NvrtcError with the log."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernels.cu", 0, None, None), "create")
    try:
        opts = [f"--gpu-architecture={arch}", *options]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts)))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if status != 0:
            raise NvrtcError(f"NVRTC could not compile the kernels:\n{log.value.decode()}")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, ptx), "get PTX")
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


_PTX = {}


def ptx_for(dtype) -> str:
    if dtype not in _PTX:
        _PTX[dtype] = nvrtc_compile(cd.kernel_source(), cd.compile_options(dtype) + cd.CUPY_NVRTC_OPTIONS)
    return _PTX[dtype]


def entry_params(ptx: str) -> dict[str, list[str]]:
    """Kernel name -> PTX types of its parameters (``u64`` for pointers and 64-bit integers)."""
    return {name: re.findall(r"\.param\s+\.(\w+)", params)
            for name, params in re.findall(r"\.entry\s+(\w+)\(([^)]*)\)", ptx)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_compiles_for_sm90(dtype):
    entries = entry_params(ptx_for(dtype))
    assert sorted(entries) == sorted(cd.CUDA_FUNCTIONS)


def test_kernels_compute_in_their_own_float_type():
    """The float32 build uses no double arithmetic outside reductions, optimizers and dropout."""
    body = ptx_for("float32").split(".entry activation_forward(")[1].split(".entry")[0]
    assert ".f32" in body and ".f64" not in body


def test_a_syntax_error_fails_the_compile():
    broken = cd.kernel_source() + '\nextern "C" __global__ void broken(const real* x) { x[0] = ; }\n'
    with pytest.raises(NvrtcError, match="error"):
        nvrtc_compile(broken, cd.compile_options("float32"))


def test_python_and_cuda_agree_on_shared_constants():
    source = cd.kernel_source()
    assert int(re.search(r"#define REDUCE_THREADS (\d+)", source).group(1)) == cd.REDUCE_THREADS
    enum = dict(re.findall(r"(\w+) = (\d+)", re.search(r"enum \{([^}]*)\}", source).group(1)))
    assert {k.lower(): int(v) for k, v in enum.items()} == cd.ACTIVATION_CODES


def test_kernel_source_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = config["tool"]["setuptools"]["package-data"]["nnbackends.backends"]
    assert any(pathlib.PurePath(cd.KERNEL_FILE).match(pattern) for pattern in shipped)
    assert "__global__" in cd.kernel_source()


# ---------------------------------------------------------------------- every launch against its PTX signature
_SCALAR_PTX = {np.int32: "u32", np.int64: "u64", np.uint64: "u64", np.float32: "f32", np.float64: "f64"}


class LaunchChecker:
    """Stands in for compiled kernels: checks each launch's arguments against the PTX, runs nothing."""

    def __init__(self):
        self.launched = set()

    def function(self, name, dtype):
        params = entry_params(ptx_for(np.dtype(dtype).name))[name]

        def launch(grid, block, args):
            got = ["u64" if isinstance(a, np.ndarray) else _SCALAR_PTX[type(a)] for a in args]
            want = ["u64" if p == "b64" else p.replace("s", "u") for p in params]
            assert got == want, f"{name} ({dtype}): launched with {got}, declared {want}"
            assert all(g >= 1 for g in grid) and block[0] % 32 == 0
            self.launched.add(name)

        return launch


def checked_backend(checker):
    """A CupyBackend whose arrays are NumPy and whose kernels are the checker (no CuPy, no GPU)."""
    be = cb.CupyBackend.__new__(cb.CupyBackend)
    cb.CupyArrayCode.__init__(be)
    be.xp = np
    be.to_numpy = np.asarray
    be._address = lambda a: a.ctypes.data
    be._function = checker.function
    be._capture = lambda body: body
    be._upload = be._copy_into = lambda dst, src: dst.__setitem__(Ellipsis, src)
    return be


def spiral_model(backend, dtype="float32", hidden=(ReLU,), optimizer=None, seed=0):
    model = Model(backend=backend, seed=seed, dtype=dtype)
    width = 2
    for act in hidden:
        model.add(Dense(width, 16))
        model.add(act())
        width = 16
    model.add(Dense(width, 3))
    model.add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer=optimizer or Adam(0.05, decay=5e-3))
    return model


def test_every_launch_matches_its_kernel_signature():
    checker = LaunchChecker()
    be = checked_backend(checker)
    for name, builder in [*CASES.items(), *VARIANTS.items()]:
        if builder is not None:
            for dtype in DTYPES:
                args, inplace = builder(np.random.default_rng(0), 6, 4)
                run(be, name, args, dtype, inplace)
    for dtype in DTYPES:
        be.dropout_mask((5, 3), 0.5, np.random.default_rng(0), dtype)
        be.all_finite([be.asarray(np.ones(3), dtype)])
        big = be.asarray(np.ones((5000, 3)), dtype)
        be.mse_loss(big, big)  # a reduction over several blocks, then finish_mean
        be.dense_forward(*(be.asarray(np.ones(s), dtype) for s in ((1, 4), (4, 1), (1,))))  # a 1x1 product
        for opt in (Adam(0.01), SGD(0.1), SGD(0.1, momentum=0.9)):
            X, y = spiral_data(20, 3)
            spiral_model(be, dtype, (ReLU, LeakyReLU, Sigmoid, Tanh, Linear), opt).fit(X, y, epochs=2, verbose=0)
    assert checker.launched == set(cd.CUDA_FUNCTIONS)


# ---------------------------------------------------------------------- the compiled step's array code (stand-in)
def _train(backend, build, X, y, compiled, epochs=5, batch_size=None, dtype="float64"):
    model = build(backend, dtype)
    if compiled:
        assert model.backend.fused_step(model) is not None
    history = model.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=batch_size is not None,
                        verbose=0, fused=compiled)
    return model, history


STEP_MODELS = {
    "adam-relu": lambda be, dt: spiral_model(be, dt),
    "sgd-momentum-all-activations": lambda be, dt: spiral_model(
        be, dt, (LeakyReLU, Sigmoid, Tanh, Linear), SGD(0.5, decay=1e-2, momentum=0.9)),
    "sgd-regularized": lambda be, dt: _regularized(be, dt),
}


def _regularized(be, dt):
    model = Model(backend=be, seed=3, dtype=dt)
    model.add(Dense(2, 8, weight_regularizer_l1=1e-3, weight_regularizer_l2=5e-4, bias_regularizer_l2=1e-3))
    model.add(Tanh())
    model.add(Dense(8, 3))
    model.add(Softmax())
    return model.compile(loss="categorical_crossentropy", optimizer=SGD(0.3))


@pytest.mark.parametrize("batch_size", [None, 64])
@pytest.mark.parametrize("build", list(STEP_MODELS))
def test_fused_step_matches_per_layer_path(build, batch_size):
    X, y = spiral_data(50, 3)
    want, want_hist = _train("numpy", STEP_MODELS[build], X, y, compiled=False, batch_size=batch_size)
    got, got_hist = _train(cb.CupyArrayCode(), STEP_MODELS[build], X, y, compiled=True, batch_size=batch_size)
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, "float64")
    assert_close(got_hist["loss"], want_hist["loss"], "float64")
    assert_close(got_hist["accuracy"], want_hist["accuracy"], "float64")


def sine_data():
    X = np.random.default_rng(5).uniform(-1, 1, (64, 1))  # no symmetry: Adam would amplify rounding of cancelling gradients
    return X, np.sin(3 * X)


def sine_model(be, dt):
    """Regression ending in a one-output Dense layer (its bias gradient is a single column sum)."""
    model = Model(backend=be, seed=1, dtype=dt)
    for layer in (Dense(1, 16), Tanh(), Dense(16, 1), Linear()):
        model.add(layer)
    return model.compile(loss="mse", optimizer=Adam(0.01), metrics=["accuracy"])  # the book's, computed per step


def test_fused_step_regression():
    X, y = sine_data()
    want, want_hist = _train("numpy", sine_model, X, y, compiled=False, epochs=4)
    got, got_hist = _train(cb.CupyArrayCode(), sine_model, X, y, compiled=True, epochs=4)
    assert_close(got_hist["loss"], want_hist["loss"], "float64")
    assert_close(got_hist["accuracy"], want_hist["accuracy"], "float64")
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, "float64")


def test_fused_step_changes_nothing_when_not_finite():
    model = spiral_model(cb.CupyArrayCode(), "float64")
    step = model.backend.fused_step(model)
    X, y = spiral_data(10, 3)
    x, labels = model.backend.asarray(X, "float64"), model.backend.asarray(y.astype(np.int64))
    for bad in (np.nan, np.inf):
        for call in range(2):  # the first call per shape runs eagerly, the second replays
            before = model.get_weights()
            state = [a.copy() for p in model.params() for a in p.state.values()]
            x[0, 0] = bad
            with np.errstate(invalid="ignore"):  # NaN or Inf in, NaN out: the warning is expected
                loss, accuracy, finite = step(x, labels)
            assert finite is False, (bad, call)
            for b, a in zip(before, model.get_weights()):
                np.testing.assert_array_equal(b, a)
            for s, p in zip(state, [a for p in model.params() for a in p.state.values()]):
                np.testing.assert_array_equal(s, p)
            x[0, 0] = X[0, 0]
    assert step(x, labels)[2] is True


@pytest.mark.parametrize("build", [
    lambda be: Model(backend=be).add(Dense(2, 4)).add(ReLU()).add(Dropout(0.1)).add(Dense(4, 3)).add(Softmax())
    .compile(optimizer="adam"),
    lambda be: Model(backend=be).add(Dense(2, 4)).add(ReLU()).add(Dense(4, 3)).add(Softmax())
    .compile(optimizer=RMSprop()),
    lambda be: Model(backend=be).add(Dense(2, 4)).add(ReLU()).add(Dense(4, 1)).add(Sigmoid())
    .compile(loss="binary_crossentropy", optimizer="adam"),
    lambda be: Model(backend=be).add(Dense(2, 4)).add(Softmax()).compile(loss="mse", optimizer="adam"),
], ids=["dropout", "rmsprop", "bce", "softmax-mse"])
def test_models_outside_the_fused_step_get_none(build):
    model = build(cb.CupyArrayCode())
    assert model.backend.fused_step(model) is None


# ---------------------------------------------------------------------- detection
def _fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_instances", {})
    monkeypatch.setattr(registry, "_failures", {})


def _fake_cupy(device_count=None, error=None, context_error=None, nvrtc_error=None):
    """A module that looks like CuPy to the probe: ``error`` is raised by the device count,
    ``context_error`` when the probe creates a context on the device, ``nvrtc_error`` when it
    compiles its probe kernel (``compiled`` records the source and options it compiles)."""
    def count():
        if error:
            raise error
        return device_count

    def memory():
        if context_error:
            raise context_error
        return 80 << 30, 80 << 30

    compiled = []

    def compile_program(program, options):
        if nvrtc_error:
            raise nvrtc_error
        compiled.append((program, tuple(options)))

    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=count, memGetInfo=memory),
        Device=lambda: types.SimpleNamespace(compute_capability="90"),
        nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 9), createProgram=lambda src, name, h, i: src,
                                    compileProgram=compile_program, destroyProgram=lambda program: None),
    )
    return types.SimpleNamespace(__version__="99.0", cuda=cuda, compiled=compiled)


def test_missing_cupy_says_how_to_install(monkeypatch):
    _fresh_registry(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("cupy")
    message = str(info.value)
    assert "CuPy, which is not installed" in message
    assert 'pip install "nnbackends[cuda12]"' in message and 'pip install "nnbackends[cuda13]"' in message
    assert "never both" in message
    assert registry.resolve_backend("auto") != "cupy"


@pytest.mark.parametrize("count, error, text", [
    (None, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), "cudaErrorNoDevice"),
    (None, RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient"), "InsufficientDriver"),
    (0, None, "the CUDA runtime reports no device"),
])
def test_cupy_without_a_device_quotes_the_driver(monkeypatch, count, error, text):
    _fresh_registry(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count, error))
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("cupy")
    message = str(info.value)
    assert "CuPy 99.0 is installed but no CUDA device answers" in message
    assert text in message
    assert registry.resolve_backend("auto") != "cupy"


def test_a_device_that_cannot_take_a_context_is_not_picked(monkeypatch):
    _fresh_registry(monkeypatch)
    busy = RuntimeError("cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or unavailable")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count=1, context_error=busy))
    with pytest.raises(BackendUnavailableError, match="no CUDA device answers: RuntimeError: cudaErrorDevicesUnavailable"):
        get_backend("cupy")
    assert registry.resolve_backend("auto") != "cupy"


def test_a_cupy_that_fails_to_import_says_so(monkeypatch, tmp_path):
    _fresh_registry(monkeypatch)
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise RuntimeError('two CuPy builds are installed')\n")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("cupy")
    message = str(info.value)
    assert "CuPy is installed but fails to import: RuntimeError: two CuPy builds are installed" in message
    assert "never both" in message
    assert registry.resolve_backend("auto") != "cupy"


def test_auto_picks_cupy_when_a_device_answers(monkeypatch):
    _fresh_registry(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count=1))
    assert registry.resolve_backend("auto") == "cupy"


def test_real_cupy_without_gpu_reports_the_driver_error():
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed here")
    reason = registry.unavailable_reason("cupy")
    if reason is None:
        pytest.skip("a CUDA device answers here")
    assert "is installed but no CUDA device answers" in reason and "cudaError" in reason


def test_importing_nnbackends_touches_no_gpu():
    code = ("import sys, nnbackends, nnbackends.backends.cupy_backend; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- on a GPU
@pytest.fixture
def gpu():
    return get_backend("cupy")


@pytest.mark.gpu
def test_gpu_warmup_loads_every_kernel_and_describes_the_device(gpu):
    gpu.warmup()
    assert {name for name, _ in gpu._functions} == set(cd.CUDA_FUNCTIONS)
    facts = gpu.describe()
    assert facts["device"] and facts["compute_capability"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("build", list(STEP_MODELS))
def test_gpu_graph_step_matches_per_layer_path(gpu, build, dtype):
    X, y = spiral_data(50, 3)
    want, want_hist = _train(gpu, STEP_MODELS[build], X, y, compiled=False, batch_size=64, dtype=dtype)
    got, got_hist = _train(gpu, STEP_MODELS[build], X, y, compiled=True, batch_size=64, dtype=dtype)
    step = got._fused_step
    assert all(type(replay).__name__ != "function" for _, replay in step.shapes.values()), "no CUDA graph"
    assert len(step.shapes) == 2  # the full batches and the last partial one
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, dtype)
    assert_close(got_hist["loss"], want_hist["loss"], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_regression_graph_step_matches_per_layer_path(gpu, dtype):
    X, y = sine_data()
    want, want_hist = _train(gpu, sine_model, X, y, compiled=False, batch_size=16, dtype=dtype)
    got, got_hist = _train(gpu, sine_model, X, y, compiled=True, batch_size=16, dtype=dtype)
    assert all(type(replay).__name__ != "function" for _, replay in got._fused_step.shapes.values()), "no graph"
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, dtype)
    assert_close(got_hist["loss"], want_hist["loss"], dtype)


@pytest.mark.gpu
def test_gpu_graph_step_changes_nothing_when_not_finite(gpu):
    model = spiral_model(gpu, "float32")
    step = model.backend.fused_step(model)
    X, y = spiral_data(10, 3)
    x, labels = gpu.asarray(X, "float32"), gpu.asarray(y.astype(np.int64))
    step(x, labels), step(x, labels)  # eager, then the first replay
    before = model.get_weights()
    x[0, 0] = np.nan
    assert step(x, labels)[2] is False
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(b, a)


@pytest.mark.gpu
def test_gpu_graph_reads_the_learning_rate_from_device_memory(gpu):
    X, y = spiral_data(20, 3)
    models = [spiral_model(gpu, "float64", optimizer=SGD(1.0)) for _ in range(2)]
    steps = [m.backend.fused_step(m) for m in models]
    x, labels = gpu.asarray(X, "float64"), gpu.asarray(y.astype(np.int64))
    for model, step in zip(models, steps):
        step(x, labels), step(x, labels)  # captured from here on
    models[1].optimizer.current_learning_rate = 0.0
    moved = []
    for model, step in zip(models, steps):
        before = model.get_weights()[0]
        step(x, labels)
        moved.append(np.abs(model.get_weights()[0] - before).max())
    assert moved[0] > 0 and moved[1] == 0


def splitmix_mask(seed, n, rate, dtype):
    """Oracle of the device dropout generator (the CUDA source's splitmix64 stream)."""
    def mix(z):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    u = (mix(np.uint64(seed) ^ mix(np.arange(n, dtype=np.uint64))) >> np.uint64(11)) * 2.0**-53
    return np.where(u >= rate, np.asarray(1 / (1 - rate), dtype), 0).astype(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_dropout_mask_follows_its_generator(gpu, dtype):
    mask = gpu.to_numpy(gpu.dropout_mask((300, 7), 0.3, np.random.default_rng(4), dtype))
    seed = int(np.random.default_rng(4).integers(0, 2**63))  # what the backend draws from the host generator
    np.testing.assert_array_equal(mask.ravel(), splitmix_mask(seed, mask.size, 0.3, dtype))
