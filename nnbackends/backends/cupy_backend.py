"""The CuPy GPU backend: cuBLAS matrix products, fused kernels from our own CUDA source, CUDA graphs.

The work is split so that almost all of it runs without a GPU:

* ``cupy_arrays.CupyArrayCode``: everything written against the array module
  ``xp`` (allocation, contiguity and label handling, matrix products, every
  kernel of the table through small ``_..._into`` hooks); with ``xp = numpy``
  it is the stand-in the test suite registers as ``"cupy-numpy"``.
* ``cupy_step.GraphStep``: the fused training step, a fixed sequence of hook
  calls into preallocated buffers.
* ``cupy_device``: importing CuPy and probing the device, the CUDA source and
  its NVRTC options.
* ``CupyBackend`` (here) sets ``xp = cupy``, overrides every hook with a launch
  of a kernel from ``cuda_kernels.cu`` (compiled by NVRTC once per float type),
  and captures the fused step as a CUDA graph.

Importing this module imports neither CuPy nor anything that touches a GPU;
``CupyBackend()`` does, and raises ``BackendUnavailableError`` saying whether
CuPy is missing or no CUDA device answers.
"""
from __future__ import annotations

import gc
import warnings

import numpy as np

from .cupy_arrays import CupyArrayCode
from .cupy_device import (ACTIVATION_CODES, BLOCK, COLUMN_TILE, CUDA_FUNCTIONS, REDUCE_THREADS, DeviceKernels,
                          DeviceTable, grid, import_cupy, reduce_blocks, tf32_products)

__all__ = ["CupyArrayCode", "CupyBackend"]


def _no_allocation(size):
    raise RuntimeError(f"the step allocated {size} bytes during CUDA graph capture")


class CupyBackend(CupyArrayCode):
    """Arrays are ``cupy.ndarray`` on the current device; see the module docstring.

    Compiled kernels and the capture stream are kept per device (``DeviceKernels``),
    so one backend serves whichever ``cupy.cuda.Device`` is current.
    """

    name = "cupy"

    def __init__(self):
        super().__init__()
        self.xp = self.cupy = import_cupy()
        self._devices = {}  # device id -> DeviceKernels
        self.tf32 = tf32_products(self.cupy)
        if self.tf32:
            warnings.warn("CUPY_TF32 is set: CuPy runs float32 matrix products on TF32 tensor cores, good to "
                          "about 1e-3 relative, so float32 results will not match the NumPy reference within "
                          "float32 rounding. Unset CUPY_TF32 for IEEE float32 products.", RuntimeWarning,
                          stacklevel=2)

    # ------------------------------------------------------------------ plumbing
    def to_numpy(self, x) -> np.ndarray:
        return self.cupy.asnumpy(x)

    def synchronize(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def warmup(self, dtypes=("float32", "float64")) -> None:
        for dtype in dtypes:
            for name in CUDA_FUNCTIONS:
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
            "float32_products": "TF32 (CUPY_TF32 is set)" if self.tf32 else "IEEE float32",
        }

    def _kernels(self) -> DeviceKernels:
        """The compiled kernels and capture stream of the current device."""
        device = self.cupy.cuda.runtime.getDevice()
        kernels = self._devices.get(device)
        if kernels is None:
            kernels = self._devices[device] = DeviceKernels(self.cupy)
        return kernels

    @property
    def _functions(self) -> dict:
        """The current device's loaded kernels by (name, dtype name)."""
        return self._kernels().functions

    def _function(self, name, dtype):
        return self._kernels().function(name, dtype)

    def _elementwise(self, name, n, dtype, *args):
        """Launch a grid-stride kernel over ``n`` elements (nothing to do when n is 0)."""
        if n:
            self._function(name, np.dtype(dtype))(grid(n), (BLOCK,), args)

    def _rows(self, name, rows, dtype, *args):
        """Launch a one-warp-per-row kernel."""
        if rows:
            self._function(name, np.dtype(dtype))((-(-rows * 32 // BLOCK),), (BLOCK,), args)

    def _reduction(self, name, n, out, work, *args):
        """Launch reduction ``name`` over ``n`` terms into the 0-d ``out``.

        ``reduce_blocks(n)`` blocks; where that is more than one, each writes its sum
        to ``work`` (allocated when None) and ``finish_mean`` adds them up.
        """
        blocks = reduce_blocks(n)
        if work is None:
            work = self._empty((blocks + 1,), np.float64)
        self._function(name, out.dtype)((blocks,), (REDUCE_THREADS,), (*args, work))
        if blocks > 1:
            self._function("finish_mean", out.dtype)((1,), (REDUCE_THREADS,), (work, np.int32(blocks), out))

    def _matmul(self, a, b, out=None, work=None):
        """cuBLAS, except a 1 x 1 result: CuPy computes that as a reduction with a temporary array,
        which graph capture forbids, so ``dot_product`` computes it."""
        if a.shape[0] != 1 or b.shape[1] != 1 or a.shape[1] == 0:
            return super()._matmul(a, b, out)
        if out is None:
            out = self._empty((1, 1), a.dtype)
        k = a.shape[1]
        self._reduction("dot_product", k, out, work, a, np.int64(a.strides[1] // a.itemsize), b,
                        np.int64(b.strides[0] // b.itemsize), out, np.int64(k))
        return out

    def _upload(self, device, host):
        device.set(np.ascontiguousarray(host, dtype=device.dtype))

    def _copy_into(self, dst, src):
        dst.data.copy_from_device_async(src.data, src.nbytes)  # one memcpy node, no kernel

    def _capture(self, body):
        """Capture on the device's side stream kept by the backend, with allocation forbidden (memory the
        pool handed out during capture could be freed and reused while the graph still writes it) and
        the garbage collector paused (a collection could destroy an old graph mid-capture)."""
        cp = self.cupy
        stream = self._kernels().capture_stream()
        collecting = gc.isenabled()
        gc.disable()
        try:
            with stream, cp.cuda.using_allocator(_no_allocation):
                stream.begin_capture()
                try:
                    body()
                finally:
                    graph = stream.end_capture()
        finally:
            if collecting:
                gc.enable()
        return graph.launch  # replays on the current stream, in order with the trainer's work

    # ------------------------------------------------------------------ hooks as kernel launches
    def _activation_into(self, kind, x, out, alpha):
        t = x.dtype.type
        self._elementwise("activation_forward", x.size, x.dtype, x, out, np.int64(x.size),
                          np.int32(ACTIVATION_CODES[kind]), t(alpha))

    def _activation_backward_into(self, kind, saved, dy, out, alpha):
        t = dy.dtype.type
        self._elementwise("activation_backward", dy.size, dy.dtype, saved, dy, out, np.int64(dy.size),
                          np.int32(ACTIVATION_CODES[kind]), t(alpha))

    def _bias_activation_into(self, z, b, out, kind, alpha):
        self._elementwise("bias_activation_forward", z.size, z.dtype, z, b, out, np.int64(z.size),
                          np.int32(z.shape[1]), np.int32(ACTIVATION_CODES[kind]), z.dtype.type(alpha))

    def _softmax_into(self, x, out):
        self._rows("softmax_forward", x.shape[0], x.dtype, x, out, np.int32(x.shape[0]), np.int32(x.shape[1]))

    def _column_sums_into(self, a, out):
        if a.shape[1]:
            tiles = -(-a.shape[1] // COLUMN_TILE)
            self._function("column_sums", a.dtype)((tiles,), (COLUMN_TILE, REDUCE_THREADS // COLUMN_TILE),
                                                   (a, out, np.int32(a.shape[0]), np.int32(a.shape[1])))

    def _softmax_backward_into(self, y, dy, out):
        self._rows("softmax_backward", y.shape[0], y.dtype, y, dy, out, np.int32(y.shape[0]), np.int32(y.shape[1]))

    @staticmethod
    def _class_kernel(name, y):
        return name + ("_labels" if y.ndim == 1 else "_onehot")

    def _loss_into(self, kind, p, y, out, work=None):
        if kind == "cce":
            self._reduction(self._class_kernel("cce_loss", y), p.shape[0], out, work, p, y, out,
                            np.int32(p.shape[0]), np.int32(p.shape[1]))
        else:
            self._reduction(kind + "_loss", p.size, out, work, p, y, out, np.int64(p.size))

    def _loss_backward_into(self, kind, p, y, out):
        if kind in ("cce", "softmax_cce"):
            self._elementwise(self._class_kernel(kind + "_backward", y), p.size, p.dtype, p, y, out,
                              np.int32(p.shape[0]), np.int32(p.shape[1]))
        else:
            self._elementwise(kind + "_backward", p.size, p.dtype, p, y, out, np.int64(p.size))

    def _accuracy_into(self, kind, p, y, out, precision=None, work=None):
        if kind == "categorical":
            self._reduction(self._class_kernel("categorical_accuracy", y), p.shape[0], out, work, p, y, out,
                            np.int32(p.shape[0]), np.int32(p.shape[1]))
        elif kind == "binary":
            self._reduction("binary_accuracy", p.size, out, work, p, y, out, np.int64(p.size))
        else:
            self._reduction("regression_accuracy", p.size, out, work, p, y, out, np.int64(p.size),
                            p.dtype.type(precision))

    def _regularization_loss_into(self, w, out, l1, l2, work=None):
        self._reduction("regularization_loss", w.size, out, work, w, out, np.int64(w.size), np.float64(l1),
                        np.float64(l2))

    def _regularization_backward_into(self, w, dw, l1, l2):
        self._elementwise("regularization_backward", w.size, w.dtype, w, dw, np.int64(w.size),
                          np.float64(l1), np.float64(l2))

    def _dropout_into(self, out, rate, seed):
        self._elementwise("dropout_mask", out.size, out.dtype, out, np.int64(out.size), np.uint64(seed),
                          np.float64(rate), out.dtype.type(1.0 / (1.0 - rate)))

    def _multiply_into(self, a, b, out):
        self._elementwise("multiply", a.size, a.dtype, a, b, out, np.int64(a.size))

    def _argmax_into(self, x, out):
        self._elementwise("argmax_rows", x.shape[0], x.dtype, x, out, np.int32(x.shape[0]), np.int32(x.shape[1]))

    def _update_into(self, kernel, arrays, hyper):
        """The CUDA update ``kernel`` takes the table's scalars as doubles; Adam its two bias
        corrections, computed here once instead of by every thread."""
        if kernel == "adam_update":
            lr, beta_1, beta_2, epsilon, step = hyper
            hyper = (lr, beta_1, beta_2, epsilon, 1 - beta_1**step, 1 - beta_2**step)
        n = arrays[0].size
        self._elementwise(kernel, n, arrays[0].dtype, *arrays, np.int64(n), *map(np.float64, hyper))

    def _flag_nonfinite(self, a, flag):
        if a.dtype.kind != "f":
            return super()._flag_nonfinite(a, flag)
        self._elementwise("flag_nonfinite", a.size, a.dtype, a, np.int64(a.size), flag)

    def _address(self, a):
        return a.data.ptr

    def _array_table(self, arrays):
        return DeviceTable(self.xp, arrays, self._address)

    def _many(self, name, table, *args):
        """Launch a kernel over every array of ``table`` (grid row y = array y)."""
        self._function(name, table.dtype)((grid(table.largest)[0], len(table.arrays)), (BLOCK,), args)

    def _flag_nonfinite_many(self, table, flag):
        self._many("flag_nonfinite_many", table, table.addresses, table.sizes, flag)

    def _step_bookkeeping(self, result, nonfinite, hyper, coeffs, totals, rows, betas):
        self._function("step_bookkeeping", result.dtype)((1,), (32,), (
            result, np.int32(result.size), nonfinite, hyper, coeffs, totals, np.float64(rows),
            *map(np.float64, betas)))

    def _guarded_update_many(self, kind, tables, coeffs, nonfinite, consts):
        self._many(kind + "_guarded", tables[0], *(t.addresses for t in tables), tables[0].sizes, coeffs,
                   nonfinite, *map(np.float64, consts))
