"""What the CuPy backend needs from the machine: CuPy, a CUDA device, and our kernels compiled for it.

* ``import_cupy`` imports CuPy, probes a device and compiles a probe kernel
  with NVRTC, raising ``BackendUnavailableError`` that says what is missing.
* ``kernel_source``/``compile_options``: the CUDA source of ``cuda_kernels.cu``
  and the NVRTC options it is compiled with, once per float type;
  ``CUDA_FUNCTIONS`` names every function it defines.
* ``DeviceKernels``: one device's compiled modules, functions and capture
  stream (CuPy ties each to the device that was current when it was made).
* ``DeviceTable``: device arrays of the addresses and sizes of same-dtype
  arrays, for the kernels that cover many arrays in one launch.

Nothing here imports CuPy at import time.
"""
from __future__ import annotations

import importlib.resources
import os

import numpy as np

from ..errors import BackendUnavailableError

KERNEL_FILE = "cuda_kernels.cu"
#: Every CUDA function defined in ``cuda_kernels.cu`` (a test checks the list against the compiled code).
CUDA_FUNCTIONS = (
    "activation_forward", "activation_backward", "bias_activation_forward", "column_sums",
    "softmax_forward", "softmax_backward",
    "cce_loss_labels", "cce_loss_onehot", "cce_backward_labels", "cce_backward_onehot",
    "softmax_cce_backward_labels", "softmax_cce_backward_onehot",
    "categorical_accuracy_labels", "categorical_accuracy_onehot",
    "bce_loss", "bce_backward", "sigmoid_bce_backward", "mse_loss", "mse_backward", "mae_loss", "mae_backward",
    "binary_accuracy", "regression_accuracy", "regularization_loss", "regularization_backward",
    "dropout_mask", "multiply", "argmax_rows", "flag_nonfinite", "flag_nonfinite_many",
    "sgd_update", "sgd_momentum_update", "adagrad_update", "rmsprop_update", "adam_update",
    "sgd_update_guarded", "sgd_momentum_update_guarded", "adam_update_guarded",
    "finish_mean", "dot_product", "step_bookkeeping",
)
#: Activation codes shared with the CUDA source's enum.
ACTIVATION_CODES = {"linear": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
#: C type of each float dtype the kernels are compiled for.
C_TYPES = {"float32": "float", "float64": "double"}
REDUCE_THREADS = 512  # the CUDA source's REDUCE_THREADS
#: Elements a reduction gives each block at least; a reduction over more runs ``reduce_blocks`` blocks.
REDUCE_CHUNK = 8 * REDUCE_THREADS
#: The most blocks a reduction runs (its workspace holds one sum per block and the divisor).
MAX_REDUCE_BLOCKS = 1024
REDUCE_WORKSPACE = MAX_REDUCE_BLOCKS + 1
COLUMN_TILE = 32  # the CUDA source's COLUMN_TILE: columns per block of column_sums
BLOCK = 256
MAX_BLOCKS = 8192  # grid-stride loops cover the rest
INSTALL = ('pip install "nnbackends[cuda12]" (CUDA 12 driver) or pip install "nnbackends[cuda13]" '
           "(CUDA 13 driver); install one of the two, never both")
#: What CuPy's RawModule adds to the options of every NVRTC compile (the tests compile with them too).
CUPY_NVRTC_OPTIONS = ("--device-as-default-execution-space", "-ftz=true")


def kernel_source() -> str:
    """The CUDA source of every kernel the CuPy backend launches."""
    return importlib.resources.files(__package__).joinpath(KERNEL_FILE).read_text(encoding="utf-8")


def compile_options(dtype) -> tuple[str, ...]:
    """NVRTC options for the kernels of ``dtype``; CuPy adds ``CUPY_NVRTC_OPTIONS`` and the architecture.

    ``--fmad=false`` keeps every product and sum rounded as the NumPy reference rounds it.
    CuPy's ``-ftz=true`` flushes float32 subnormals (below 1.2e-38) to zero on the GPU,
    where NumPy keeps them; no result the tests compare is that small.
    """
    return ("--std=c++17", "--fmad=false", f"-DREAL={C_TYPES[np.dtype(dtype).name]}")


#: A kernel that ``import_cupy`` compiles with CuPy's NVRTC (a missing ``libnvrtc-builtins`` fails here).
PROBE_SOURCE = 'extern "C" __global__ void nnbackends_probe(float* x) { x[0] = tanhf(x[0]); }\n'
PROBE_OPTIONS = ("--std=c++17",)


def grid(n):
    """The grid of a grid-stride launch over ``n`` elements."""
    return (min(MAX_BLOCKS, max(1, -(-n // BLOCK))),)


def reduce_blocks(n) -> int:
    """Blocks of a reduction over ``n`` terms: fixed by ``n``, so its order of additions is too."""
    return min(MAX_REDUCE_BLOCKS, max(1, -(-n // REDUCE_CHUNK)))


def import_cupy():
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
    except Exception as exc:  # CUDARuntimeError, CUDADriverError ...
        raise BackendUnavailableError(
            f"CuPy {cupy.__version__} is installed but no CUDA device answers: {type(exc).__name__}: {exc}. "
            "The 'cupy' backend needs an NVIDIA GPU with a working driver "
            f"(check nvidia-smi) and the CuPy build that matches it: {INSTALL}."
        ) from exc
    try:
        probe_nvrtc(cupy.cuda.nvrtc)
    except Exception as exc:  # no libnvrtc CuPy can load, no libnvrtc-builtins, a broken NVRTC ...
        raise BackendUnavailableError(
            f"CuPy {cupy.__version__} found a CUDA device but cannot compile kernels with NVRTC: "
            f"{type(exc).__name__}: {exc}. The 'cupy' backend compiles its CUDA source at run time; "
            f"install the NVRTC of the CUDA version CuPy was built for: {INSTALL}."
        ) from exc
    return cupy


def probe_nvrtc(nvrtc):
    """Compile ``PROBE_SOURCE`` with CuPy's NVRTC bindings (not CuPy's kernel cache, which would skip NVRTC)."""
    nvrtc.getVersion()
    program = nvrtc.createProgram(PROBE_SOURCE, "nnbackends_probe.cu", (), ())
    try:
        nvrtc.compileProgram(program, PROBE_OPTIONS)
    finally:
        nvrtc.destroyProgram(program)


def tf32_products(cupy) -> bool:
    """Whether CuPy runs float32 matrix products on TF32 tensor cores (``CUPY_TF32=1``).

    TF32 keeps 10 bits of mantissa, so products are good to about 1e-3
    relative, far outside the float32 tolerance against the reference.
    """
    try:
        from cupy._core import _routines_linalg as linalg
    except ImportError:  # a CuPy without this module reads the variable the same way
        return int(os.environ.get("CUPY_TF32", "0") or 0) > 0
    return linalg.get_compute_type(np.float32) == getattr(linalg, "COMPUTE_TYPE_TF32", 7)


class DeviceKernels:
    """One device's kernel modules (one per float type), functions and graph-capture stream.

    CuPy loads a ``RawModule`` on the device current at its first use and a
    ``Stream`` belongs to the device current when it is made, so the backend
    keeps one of these per device.
    """

    def __init__(self, cupy):
        self.cupy = cupy
        self.modules = {}  # dtype name -> RawModule
        self.functions = {}  # (kernel name, dtype name) -> RawKernel
        self._capture_stream = None

    def function(self, name, dtype):
        key = (name, dtype.name)
        fn = self.functions.get(key)
        if fn is None:
            module = self.modules.get(dtype.name)
            if module is None:
                module = self.modules[dtype.name] = self.cupy.RawModule(code=kernel_source(),
                                                                        options=compile_options(dtype))
            fn = self.functions[key] = module.get_function(name)
        return fn

    def capture_stream(self):
        if self._capture_stream is None:
            self._capture_stream = self.cupy.cuda.Stream(non_blocking=True)
        return self._capture_stream


class DeviceTable:
    """Device tables of the addresses and sizes of same-dtype arrays (which it keeps alive)."""

    def __init__(self, xp, arrays, address):
        self.arrays = list(arrays)
        self.addresses = xp.asarray(np.array([address(a) for a in self.arrays], dtype=np.uint64))
        self.sizes = xp.asarray(np.array([a.size for a in self.arrays], dtype=np.int64))
        self.largest = max(a.size for a in self.arrays)
        self.dtype = self.arrays[0].dtype
