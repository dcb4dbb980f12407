"""The CuPy GPU backend: cuBLAS matrix products, fused kernels from our own CUDA source, CUDA graphs.

Two classes share the work so that almost all of it runs without a GPU:

* ``CupyArrayCode`` is everything written against the array module ``xp``:
  allocation, contiguity and label handling, matrix products
  (``xp.matmul`` into preallocated outputs), and the compiled training step
  (``GraphStep``). Each fused kernel is reached through a small ``_..._into``
  hook that writes into a given output; here the hooks evaluate the
  reference array code of ``ArrayBackend``. With ``xp = numpy`` this class is
  the NumPy stand-in the test suite registers as ``"cupy-numpy"``.
* ``CupyBackend`` sets ``xp = cupy`` and overrides every hook with a launch of
  a kernel from ``cuda_kernels.cu`` (compiled by NVRTC once per float type),
  and captures the compiled step as a CUDA graph.

Importing this module imports neither CuPy nor anything that touches a GPU;
``CupyBackend()`` does, and raises ``BackendUnavailableError`` saying whether
CuPy is missing or no CUDA device answers.
"""
from __future__ import annotations

import importlib.resources
import logging

import numpy as np

from ..errors import BackendUnavailableError
from .base import ArrayBackend
from .step_plan import step_plan

KERNEL_FILE = "cuda_kernels.cu"
#: Every kernel defined in ``cuda_kernels.cu`` (a test checks the list against the compiled code).
KERNEL_NAMES = (
    "activation_forward", "activation_backward", "bias_activation_forward", "column_sums",
    "softmax_forward", "softmax_backward",
    "cce_loss_labels", "cce_loss_onehot", "cce_backward_labels", "cce_backward_onehot",
    "softmax_cce_backward_labels", "softmax_cce_backward_onehot",
    "categorical_accuracy_labels", "categorical_accuracy_onehot",
    "bce_loss", "bce_backward", "mse_loss", "mse_backward", "mae_loss", "mae_backward",
    "binary_accuracy", "regression_accuracy", "regularization_loss", "regularization_backward",
    "dropout_mask", "multiply", "argmax_rows", "flag_nonfinite", "flag_nonfinite_many",
    "sgd_update", "sgd_momentum_update", "adagrad_update", "rmsprop_update", "adam_update",
    "sgd_update_guarded", "sgd_momentum_update_guarded", "adam_update_guarded",
)
#: Activation codes shared with the CUDA source's enum.
ACTIVATIONS = {"linear": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
#: C type of each float dtype the kernels are compiled for.
C_TYPES = {"float32": "float", "float64": "double"}
REDUCE_THREADS = 512  # the CUDA source's REDUCE_THREADS
BLOCK = 256
MAX_BLOCKS = 8192  # grid-stride loops cover the rest
INSTALL = ('pip install "nnbackends[cuda12]" (CUDA 12 driver) or pip install "nnbackends[cuda13]" '
           "(CUDA 13 driver); install one of the two, never both")
#: Batch shapes a compiled step keeps a graph for; others run its kernels without a graph.
MAX_GRAPHS = 4
log = logging.getLogger("nnbackends")


#: What CuPy's RawModule adds to the options of every NVRTC compile (the tests compile with them too).
CUPY_NVRTC_OPTIONS = ("--device-as-default-execution-space", "-ftz=true")


def kernel_source() -> str:
    """The CUDA source of every kernel this backend launches."""
    return importlib.resources.files(__package__).joinpath(KERNEL_FILE).read_text(encoding="utf-8")


def compile_options(dtype) -> tuple[str, ...]:
    """NVRTC options for the kernels of ``dtype``; CuPy adds ``CUPY_NVRTC_OPTIONS`` and the architecture.

    ``--fmad=false`` keeps every product and sum rounded as the NumPy reference rounds it.
    CuPy's ``-ftz=true`` flushes float32 subnormals (below 1.2e-38) to zero on the GPU,
    where NumPy keeps them; no result the tests compare is that small.
    """
    return ("--std=c++17", "--fmad=false", f"-DREAL={C_TYPES[np.dtype(dtype).name]}")


def _reference(name):
    """The reference array code of kernel ``name`` (what the hooks below evaluate on NumPy)."""
    return getattr(ArrayBackend, name)


class CupyArrayCode(ArrayBackend):
    """The CuPy backend's array-module code; with ``xp = numpy`` it is the test suite's stand-in."""

    name = "cupy-numpy"
    blas_kernels = ("dense_forward", "dense_backward")

    # ------------------------------------------------------------------ plumbing
    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def _contiguous(self, a):
        return self.xp.ascontiguousarray(a)

    def _labels(self, y):
        """Class targets as kernels take them: int64 labels, or one-hot rows as they are."""
        y = self._contiguous(y)
        return y.astype(np.int64, copy=False) if y.ndim == 1 else y

    def _matmul(self, a, b, out=None):
        """``a @ b`` (2-D) written into ``out`` (allocated when None): cuBLAS on the GPU."""
        if out is None:
            out = self._empty((a.shape[0], b.shape[1]), a.dtype)
        self.xp.matmul(a, b, out=out)
        return out

    def _upload(self, device, host):
        """Copy host values into an existing device array (no allocation)."""
        device[...] = host

    def _copy_into(self, dst, src):
        """Copy the contiguous ``src`` into ``dst`` of the same dtype and size."""
        dst[...] = src

    def _capture(self, body):
        """A callable replaying ``body``'s device work (here: ``body`` itself)."""
        return body

    # ------------------------------------------------------------------ hooks (one fused kernel each on the GPU)
    def _activation_into(self, kind, x, out, alpha):
        out[...] = _reference(kind + "_forward")(self, x, *([alpha] if kind == "leaky_relu" else []))

    def _activation_backward_into(self, kind, saved, dy, out, alpha):
        out[...] = _reference(kind + "_backward")(self, saved, dy, *([alpha] if kind == "leaky_relu" else []))

    def _bias_activation_into(self, z, b, out, kind, alpha):
        """``z += b`` in place, then ``out = kind(z)``; ``out`` may be ``z``."""
        z += b
        self._activation_into(kind, z, out, alpha)

    def _softmax_into(self, x, out):
        out[...] = _reference("softmax_forward")(self, x)

    def _column_sums_into(self, a, out):
        """``out = a.sum(axis=0)``: a Dense layer's bias gradient."""
        self.xp.sum(a, axis=0, out=out)

    def _softmax_backward_into(self, y, dy, out):
        out[...] = _reference("softmax_backward")(self, y, dy)

    def _loss_into(self, kind, p, y, out):
        """Loss ``kind`` (cce, bce, mse, mae) of p against y into the 0-d ``out``."""
        out[...] = _reference(kind + "_loss")(self, p, y)

    def _loss_backward_into(self, kind, p, y, out):
        """Gradient ``kind`` (cce, softmax_cce, bce, mse, mae) into ``out``."""
        out[...] = _reference(kind + "_backward")(self, p, y)

    def _accuracy_into(self, kind, p, y, out, precision=None):
        """Accuracy ``kind`` (categorical, binary, regression) into the 0-d ``out``."""
        args = (precision,) if kind == "regression" else ()
        out[...] = _reference(kind + "_accuracy")(self, p, y, *args)

    def _regularization_loss_into(self, w, out, l1, l2):
        out[...] = _reference("regularization_loss")(self, w, l1, l2)

    def _dropout_into(self, out, rate, seed):
        """Inverted-dropout mask of ``rate`` from the generator stream ``seed``."""
        keep = np.random.default_rng(seed).random(out.shape) >= rate
        out[...] = keep / (1.0 - rate)

    def _multiply_into(self, a, b, out):
        out[...] = a * b

    def _argmax_into(self, x, out):
        out[...] = x.argmax(axis=1)

    def _flag_nonfinite(self, a, flag):
        """Set the int32 0-d ``flag`` to 1 when ``a`` holds NaN or Inf (flag is never cleared here)."""
        if not self.xp.isfinite(a).all():
            flag[...] = 1

    def _array_table(self, arrays):
        """Same-dtype arrays as the ``..._many`` hooks take them (on the GPU: device tables of
        addresses and sizes, built once and reused by every replay)."""
        return list(arrays)

    def _flag_nonfinite_many(self, table, flag):
        for a in table:
            self._flag_nonfinite(a, flag)

    def _guarded_update_many(self, kind, tables, hyper, nonfinite, consts):
        """Update kernel ``kind`` (sgd_update, sgd_momentum_update, adam_update) of every parameter, reading
        ``hyper = [lr, step]`` from device memory; nothing changes when ``nonfinite`` is set.

        ``tables``: parameters, gradients, then the state arrays (velocity; or m, v).
        """
        if int(nonfinite):
            return
        lr, step = (float(v) for v in hyper)
        for arrays in zip(*tables):
            if kind == "adam_update":
                self.adam_update(*arrays, lr, *consts, step)
            else:
                param, grad, *velocity = arrays
                self.sgd_update(param, grad, lr, *consts, *velocity)

    # ------------------------------------------------------------------ kernels of the table
    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def dense_forward(self, x, W, b):
        out = self._matmul(self._contiguous(x), W)
        self._bias_activation_into(out, b, out, "linear", 0.0)
        return out

    def dense_backward(self, x, W, dy, need_dx=True):
        dy = self._contiguous(dy)
        dW = self._matmul(x.T, dy)
        db = self._empty((dy.shape[1],), dy.dtype)
        self._column_sums_into(dy, db)
        dx = self._matmul(dy, W.T) if need_dx else None
        return dx, dW, db

    def _activation(self, kind, x, alpha=0.0):
        x = self._contiguous(x)
        out = self._empty(x.shape, x.dtype)
        self._activation_into(kind, x, out, alpha)
        return out

    def _activation_backward(self, kind, saved, dy, alpha=0.0):
        saved, dy = self._contiguous(saved), self._contiguous(dy)
        out = self._empty(dy.shape, dy.dtype)
        self._activation_backward_into(kind, saved, dy, out, alpha)
        return out

    def relu_forward(self, x):
        return self._activation("relu", x)

    def relu_backward(self, x, dy):
        return self._activation_backward("relu", x, dy)

    def leaky_relu_forward(self, x, alpha):
        return self._activation("leaky_relu", x, alpha)

    def leaky_relu_backward(self, x, dy, alpha):
        return self._activation_backward("leaky_relu", x, dy, alpha)

    def sigmoid_forward(self, x):
        return self._activation("sigmoid", x)

    def sigmoid_backward(self, y, dy):
        return self._activation_backward("sigmoid", y, dy)

    def tanh_forward(self, x):
        return self._activation("tanh", x)

    def tanh_backward(self, y, dy):
        return self._activation_backward("tanh", y, dy)

    def softmax_forward(self, x):
        x = self._contiguous(x)
        out = self._empty(x.shape, x.dtype)
        self._softmax_into(x, out)
        return out

    def softmax_backward(self, y, dy):
        y, dy = self._contiguous(y), self._contiguous(dy)
        out = self._empty(y.shape, y.dtype)
        self._softmax_backward_into(y, dy, out)
        return out

    def _reduce(self, into, kind, p, y, *args):
        """Run a reduction hook into a fresh 0-d array of p's dtype."""
        out = self._empty((), p.dtype)
        into(kind, self._contiguous(p), y, out, *args)
        return out

    def _gradient(self, kind, p, y):
        p = self._contiguous(p)
        out = self._empty(p.shape, p.dtype)
        self._loss_backward_into(kind, p, y, out)
        return out

    def cce_loss(self, p, y):
        return self._reduce(self._loss_into, "cce", p, self._labels(y))

    def cce_backward(self, p, y):
        return self._gradient("cce", p, self._labels(y))

    def softmax_cce_backward(self, p, y):
        return self._gradient("softmax_cce", p, self._labels(y))

    def bce_loss(self, p, y):
        return self._reduce(self._loss_into, "bce", p, self._contiguous(y))

    def bce_backward(self, p, y):
        return self._gradient("bce", p, self._contiguous(y))

    def mse_loss(self, p, y):
        return self._reduce(self._loss_into, "mse", p, self._contiguous(y))

    def mse_backward(self, p, y):
        return self._gradient("mse", p, self._contiguous(y))

    def mae_loss(self, p, y):
        return self._reduce(self._loss_into, "mae", p, self._contiguous(y))

    def mae_backward(self, p, y):
        return self._gradient("mae", p, self._contiguous(y))

    def regularization_loss(self, w, l1, l2):
        out = self._empty((), w.dtype)
        self._regularization_loss_into(self._contiguous(w), out, l1, l2)
        return out

    def dropout_mask(self, shape, rate, rng, dtype):
        """Mask from a device generator whose stream is drawn from the model's host ``rng``."""
        seed = int(rng.integers(0, 2**63))
        out = self._empty(tuple(shape), dtype)
        self._dropout_into(out, rate, seed)
        return out

    def multiply(self, a, b):
        a, b = self._contiguous(a), self._contiguous(b)
        out = self._empty(a.shape, a.dtype)
        self._multiply_into(a, b, out)
        return out

    def argmax(self, x):
        out = self._empty((x.shape[0],), np.int64)
        self._argmax_into(self._contiguous(x), out)
        return out

    def categorical_accuracy(self, p, y):
        return self._reduce(self._accuracy_into, "categorical", p, self._labels(y))

    def binary_accuracy(self, p, y):
        return self._reduce(self._accuracy_into, "binary", p, self._contiguous(y))

    def regression_accuracy(self, p, y, precision):
        return self._reduce(self._accuracy_into, "regression", p, self._contiguous(y), precision)

    def all_finite(self, arrays) -> bool:
        """One device flag for all arrays, read back once."""
        flag = self.xp.zeros((), dtype=np.int32)
        for a in arrays:
            self._flag_nonfinite(self._contiguous(a), flag)
        return not int(self.to_numpy(flag))

    # ------------------------------------------------------------------ compiled step
    def fused_step(self, model):
        plan = step_plan(model)
        return None if plan is None else GraphStep(self, model, plan)


# ---------------------------------------------------------------------- the compiled step
class _Buffers:
    """Every array one batch shape's step touches, allocated once."""

    def __init__(self, be, plan, x_shape, y_shape, y_dtype, dtype, grads):
        n = x_shape[0]
        self.x = be._empty(x_shape, dtype)
        self.y = be._empty(y_shape, y_dtype)
        self.z = [be._empty((n, d.n_neurons), dtype) for d, _, _ in plan]  # pre-activations
        self.h = [z if kind == "linear" else be._empty(z.shape, dtype) for z, (_, kind, _) in zip(self.z, plan)]
        self.g = [be._empty(z.shape, dtype) for z in self.z]  # loss gradient w.r.t. each z
        self.result = be.zeros((2,), dtype)  # data loss, accuracy
        self.nonfinite = be.zeros((), np.int32)
        self.checked = be._array_table([self.result[0, ...], *grads])  # must stay finite


class GraphStep:
    """``step(x, y) -> (data_loss, accuracy, finite)`` for a qualifying model (``Backend.fused_step``).

    One batch shape's whole step (forward, loss, metric, backward,
    regularization gradients, non-finite check, guarded optimizer updates) is
    a fixed sequence of launches into preallocated buffers. The backend's
    ``_capture`` turns it into a CUDA graph on the GPU (replayed on later
    calls); the learning rate and step count reach it through the device
    array ``hyper``, written before every replay, never as baked-in constants.
    Graphs are kept for ``MAX_GRAPHS`` batch shapes (the full batch and the
    last partial one); further shapes run the same launches without a graph.
    """

    def __init__(self, backend, model, plan):
        self.be, self.model, self.plan = backend, model, plan
        self.params = model.params()
        self.hyper = backend.zeros((2,), np.float64)  # learning rate, step count
        self.shapes = {}  # key -> (buffers, replay)
        opt = model.optimizer
        self.consts = tuple(getattr(opt, name) for name in plan.hyperparameters)
        # Gradients live in fixed buffers of this step (the per-layer path makes new ones).
        self.grads = [backend.zeros(p.value.shape, p.value.dtype) for p in self.params]
        states = [[p.state[name] for p in self.params] for name in plan.state_names]
        self.update_tables = [backend._array_table(t) for t in ([p.value for p in self.params], self.grads, *states)]

    def __call__(self, x, y):
        be, opt = self.be, self.model.optimizer
        metric = self.model.metric
        for p, g in zip(self.params, self.grads):
            p.grad = g
        dtype = self.model.dtype  # that of the graph's buffers
        x = be._contiguous(x).astype(dtype, copy=False)
        y = be._labels(y) if self.plan.classifies else be._contiguous(y).astype(dtype, copy=False)
        precision = getattr(metric, "precision", None)
        key = (x.shape, y.shape, y.dtype.str, precision)
        entry = self.shapes.get(key)
        be._upload(self.hyper, np.array([opt.current_learning_rate, opt.iterations + 1], dtype=np.float64))
        if entry is None:
            buffers = _Buffers(be, self.plan, x.shape, y.shape, y.dtype, x.dtype, self.grads)
            body = lambda: self._run(buffers, precision)  # noqa: E731
            be._copy_into(buffers.x, x)
            be._copy_into(buffers.y, y)
            body()  # the first call per shape runs eagerly (it also loads every kernel and cuBLAS)
            replay = self._capture(body) if len(self.shapes) < MAX_GRAPHS else body
            self.shapes[key] = buffers, replay
        else:
            buffers, replay = entry
            be._copy_into(buffers.x, x)
            be._copy_into(buffers.y, y)
            replay()
        result = be._empty((2,), x.dtype)  # the buffers are overwritten by the next call
        be._copy_into(result, buffers.result)
        accuracy = result[1, ...] if metric is not None else None
        return result[0, ...], accuracy, not int(be.to_numpy(buffers.nonfinite))

    def _capture(self, body):
        """A graph of ``body``, or ``body`` itself (same launches, no graph) where capture fails."""
        try:
            return self.be._capture(body)
        except Exception as exc:  # a library that cannot be captured on this CUDA version
            log.warning("CUDA graph capture failed (%s: %s); the compiled step runs without a graph",
                        type(exc).__name__, exc)
            return body

    def _run(self, b, precision):
        be, plan = self.be, self.plan
        a = b.x
        for (dense, kind, alpha), z, h in zip(plan, b.z, b.h):
            be._matmul(a, dense.W.value, z)
            if kind == "softmax":
                be._bias_activation_into(z, dense.b.value, z, "linear", 0.0)
                be._softmax_into(z, h)
            else:
                be._bias_activation_into(z, dense.b.value, h, kind, alpha)
            a = h
        out, y = a, b.y
        loss, accuracy = b.result[0, ...], b.result[1, ...]
        classes = plan.classifies
        be._loss_into("cce" if classes else "mse", out, y, loss)
        if self.model.metric is not None:
            be._accuracy_into("categorical" if classes else "regression", out, y, accuracy, precision)
        be._loss_backward_into("softmax_cce" if classes else "mse", out, y, b.g[-1])
        for i in range(len(plan) - 1, -1, -1):
            dense = plan[i][0]
            be._matmul((b.x if i == 0 else b.h[i - 1]).T, b.g[i], dense.W.grad)
            be._column_sums_into(b.g[i], dense.b.grad)
            if i:
                _, kind, alpha = plan[i - 1]
                be._matmul(b.g[i], dense.W.value.T, b.g[i - 1])
                saved = b.z[i - 1] if kind in ("relu", "leaky_relu", "linear") else b.h[i - 1]
                be._activation_backward_into(kind, saved, b.g[i - 1], b.g[i - 1], alpha)
        for p in self.params:
            if p.regularized:
                be.regularization_backward(p.value, p.grad, p.l1, p.l2)
        b.nonfinite.fill(0)
        be._flag_nonfinite_many(b.checked, b.nonfinite)
        be._guarded_update_many(self.plan.update, self.update_tables, self.hyper, b.nonfinite, self.consts)


# ---------------------------------------------------------------------- the GPU
def _import_cupy():
    """CuPy, with a usable device and NVRTC; else BackendUnavailableError saying what is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The 'cupy' backend needs CuPy, which is not installed here ({exc}). Install it with: {INSTALL}."
        ) from exc
    except Exception as exc:  # a broken install, e.g. two CuPy builds at once
        raise BackendUnavailableError(
            f"CuPy is installed but fails to import: {type(exc).__name__}: {exc}. Reinstall one build: {INSTALL}."
        ) from exc
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("the CUDA runtime reports no device")
        cupy.cuda.Device().compute_capability  # noqa: B018 (asks the driver)
        cupy.cuda.runtime.memGetInfo()  # creates the context: a device that is busy or unusable fails here
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # CUDARuntimeError, CUDADriverError, a missing libnvrtc ...
        raise BackendUnavailableError(
            f"CuPy {cupy.__version__} is installed but no CUDA device answers: {type(exc).__name__}: {exc}. "
            "The 'cupy' backend needs an NVIDIA GPU with a working driver "
            f"(check nvidia-smi) and the CuPy build that matches it: {INSTALL}."
        ) from exc
    return cupy


def _no_allocation(size):
    raise RuntimeError(f"the step allocated {size} bytes during CUDA graph capture")


class _Table:
    """Device tables of the addresses and sizes of same-dtype arrays (which it keeps alive)."""

    def __init__(self, xp, arrays, address):
        self.arrays = list(arrays)
        self.addresses = xp.asarray(np.array([address(a) for a in self.arrays], dtype=np.uint64))
        self.sizes = xp.asarray(np.array([a.size for a in self.arrays], dtype=np.int64))
        self.largest = max(a.size for a in self.arrays)
        self.dtype = self.arrays[0].dtype


def _grid(n):
    return (min(MAX_BLOCKS, max(1, -(-n // BLOCK))),)


class CupyBackend(CupyArrayCode):
    """Arrays are ``cupy.ndarray`` on the current device; see the module docstring."""

    name = "cupy"

    def __init__(self):
        super().__init__()
        self.xp = self.cupy = _import_cupy()
        self._modules = {}
        self._functions = {}
        self._capture_stream = None

    # ------------------------------------------------------------------ plumbing
    def to_numpy(self, x) -> np.ndarray:
        return self.cupy.asnumpy(x)

    def synchronize(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def warmup(self, dtypes=("float32", "float64")) -> None:
        for dtype in dtypes:
            for name in KERNEL_NAMES:
                self._function(name, np.dtype(dtype))

    def describe(self) -> dict:
        cp = self.cupy
        device = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(device.id)
        return {
            "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "compute_capability": device.compute_capability,
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion(),
            "nvrtc": ".".join(map(str, cp.cuda.nvrtc.getVersion())),
        }

    def _function(self, name, dtype):
        key = (name, dtype.name)
        fn = self._functions.get(key)
        if fn is None:
            if dtype.name not in self._modules:
                self._modules[dtype.name] = self.cupy.RawModule(code=kernel_source(), options=compile_options(dtype))
            fn = self._functions[key] = self._modules[dtype.name].get_function(name)
        return fn

    def _elementwise(self, name, n, dtype, *args):
        """Launch a grid-stride kernel over ``n`` elements (nothing to do when n is 0)."""
        if n:
            self._function(name, np.dtype(dtype))(_grid(n), (BLOCK,), args)

    def _rows(self, name, rows, dtype, *args):
        """Launch a one-warp-per-row kernel."""
        if rows:
            self._function(name, np.dtype(dtype))((-(-rows * 32 // BLOCK),), (BLOCK,), args)

    def _reduction(self, name, dtype, *args):
        self._function(name, np.dtype(dtype))((1,), (REDUCE_THREADS,), args)

    def _upload(self, device, host):
        device.set(np.ascontiguousarray(host, dtype=device.dtype))

    def _copy_into(self, dst, src):
        dst.data.copy_from_device_async(src.data, src.nbytes)  # one memcpy node, no kernel

    def _capture(self, body):
        """Capture on one side stream kept by the backend, with allocation forbidden: memory the
        pool handed out during capture could be freed and reused while the graph still writes it."""
        cp = self.cupy
        if self._capture_stream is None:
            self._capture_stream = cp.cuda.Stream(non_blocking=True)
        stream = self._capture_stream
        with stream, cp.cuda.using_allocator(_no_allocation):
            stream.begin_capture()
            try:
                body()
            finally:
                graph = stream.end_capture()
        return graph.launch  # replays on the current stream, in order with the trainer's work

    # ------------------------------------------------------------------ hooks as kernel launches
    def _activation_into(self, kind, x, out, alpha):
        t = x.dtype.type
        self._elementwise("activation_forward", x.size, x.dtype, x, out, np.int64(x.size),
                          np.int32(ACTIVATIONS[kind]), t(alpha))

    def _activation_backward_into(self, kind, saved, dy, out, alpha):
        t = dy.dtype.type
        self._elementwise("activation_backward", dy.size, dy.dtype, saved, dy, out, np.int64(dy.size),
                          np.int32(ACTIVATIONS[kind]), t(alpha))

    def _bias_activation_into(self, z, b, out, kind, alpha):
        self._elementwise("bias_activation_forward", z.size, z.dtype, z, b, out, np.int64(z.size),
                          np.int32(z.shape[1]), np.int32(ACTIVATIONS[kind]), z.dtype.type(alpha))

    def _softmax_into(self, x, out):
        self._rows("softmax_forward", x.shape[0], x.dtype, x, out, np.int32(x.shape[0]), np.int32(x.shape[1]))

    def _column_sums_into(self, a, out):
        if a.shape[1]:
            self._function("column_sums", a.dtype)((a.shape[1],), (REDUCE_THREADS,),
                                                   (a, out, np.int32(a.shape[0]), np.int32(a.shape[1])))

    def _softmax_backward_into(self, y, dy, out):
        self._rows("softmax_backward", y.shape[0], y.dtype, y, dy, out, np.int32(y.shape[0]), np.int32(y.shape[1]))

    @staticmethod
    def _class_kernel(name, y):
        return name + ("_labels" if y.ndim == 1 else "_onehot")

    def _loss_into(self, kind, p, y, out):
        if kind == "cce":
            self._reduction(self._class_kernel("cce_loss", y), p.dtype, p, y, out,
                            np.int32(p.shape[0]), np.int32(p.shape[1]))
        else:
            self._reduction(kind + "_loss", p.dtype, p, y, out, np.int64(p.size))

    def _loss_backward_into(self, kind, p, y, out):
        if kind in ("cce", "softmax_cce"):
            self._elementwise(self._class_kernel(kind + "_backward", y), p.size, p.dtype, p, y, out,
                              np.int32(p.shape[0]), np.int32(p.shape[1]))
        else:
            self._elementwise(kind + "_backward", p.size, p.dtype, p, y, out, np.int64(p.size))

    def _accuracy_into(self, kind, p, y, out, precision=None):
        if kind == "categorical":
            self._reduction(self._class_kernel("categorical_accuracy", y), p.dtype, p, y, out,
                            np.int32(p.shape[0]), np.int32(p.shape[1]))
        elif kind == "binary":
            self._reduction("binary_accuracy", p.dtype, p, y, out, np.int64(p.size))
        else:
            self._reduction("regression_accuracy", p.dtype, p, y, out, np.int64(p.size), p.dtype.type(precision))

    def _regularization_loss_into(self, w, out, l1, l2):
        self._reduction("regularization_loss", w.dtype, w, out, np.int64(w.size), np.float64(l1), np.float64(l2))

    def regularization_backward(self, w, dw, l1, l2):
        self._elementwise("regularization_backward", w.size, w.dtype, w, dw, np.int64(w.size),
                          np.float64(l1), np.float64(l2))

    def _dropout_into(self, out, rate, seed):
        self._elementwise("dropout_mask", out.size, out.dtype, out, np.int64(out.size), np.uint64(seed),
                          np.float64(rate), out.dtype.type(1.0 / (1.0 - rate)))

    def _multiply_into(self, a, b, out):
        self._elementwise("multiply", a.size, a.dtype, a, b, out, np.int64(a.size))

    def _argmax_into(self, x, out):
        self._elementwise("argmax_rows", x.shape[0], x.dtype, x, out, np.int32(x.shape[0]), np.int32(x.shape[1]))

    def _flag_nonfinite(self, a, flag):
        if a.dtype.kind != "f":
            return super()._flag_nonfinite(a, flag)
        self._elementwise("flag_nonfinite", a.size, a.dtype, a, np.int64(a.size), flag)

    def _address(self, a):
        return a.data.ptr

    def _array_table(self, arrays):
        return _Table(self.xp, arrays, self._address)

    def _many(self, name, table, *args):
        """Launch a kernel over every array of ``table`` (grid row y = array y)."""
        self._function(name, table.dtype)((_grid(table.largest)[0], len(table.arrays)), (BLOCK,), args)

    def _flag_nonfinite_many(self, table, flag):
        self._many("flag_nonfinite_many", table, table.addresses, table.sizes, flag)

    def _guarded_update_many(self, kind, tables, hyper, nonfinite, consts):
        self._many(kind + "_guarded", tables[0], *(t.addresses for t in tables), tables[0].sizes, hyper,
                   nonfinite, *map(np.float64, consts))

    # ------------------------------------------------------------------ optimizer kernels (in place)
    def sgd_update(self, param, grad, lr, momentum=0.0, velocity=None):
        n = np.int64(param.size)
        if velocity is None:
            self._elementwise("sgd_update", param.size, param.dtype, param, grad, n, np.float64(lr))
        else:
            self._elementwise("sgd_momentum_update", param.size, param.dtype, param, grad, velocity, n,
                              np.float64(lr), np.float64(momentum))

    def adagrad_update(self, param, grad, cache, lr, epsilon):
        self._elementwise("adagrad_update", param.size, param.dtype, param, grad, cache, np.int64(param.size),
                          np.float64(lr), np.float64(epsilon))

    def rmsprop_update(self, param, grad, cache, lr, rho, epsilon):
        self._elementwise("rmsprop_update", param.size, param.dtype, param, grad, cache, np.int64(param.size),
                          np.float64(lr), np.float64(rho), np.float64(epsilon))

    def adam_update(self, param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
        self._elementwise("adam_update", param.size, param.dtype, param, grad, m, v, np.int64(param.size),
                          *map(np.float64, (lr, beta_1, beta_2, epsilon, step)))

