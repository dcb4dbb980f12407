"""What the CuPy backend needs from the machine: CuPy, a CUDA device, and our kernels compiled for it.

* ``import_cupy`` imports CuPy and probes a device, raising
  ``BackendUnavailableError`` that says what is missing.
* ``kernel_source``/``compile_options``: the CUDA source of ``cuda_kernels.cu``
  and the NVRTC options it is compiled with, once per float type;
  ``CUDA_FUNCTIONS`` names every function it defines.
* ``DeviceTable``: device arrays of the addresses and sizes of same-dtype
  arrays, for the kernels that cover many arrays in one launch.

Nothing here imports CuPy at import time.
"""
from __future__ import annotations

import importlib.resources

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
    "bce_loss", "bce_backward", "mse_loss", "mse_backward", "mae_loss", "mae_backward",
    "binary_accuracy", "regression_accuracy", "regularization_loss", "regularization_backward",
    "dropout_mask", "multiply", "argmax_rows", "flag_nonfinite", "flag_nonfinite_many",
    "sgd_update", "sgd_momentum_update", "adagrad_update", "rmsprop_update", "adam_update",
    "sgd_update_guarded", "sgd_momentum_update_guarded", "adam_update_guarded",
)
#: Activation codes shared with the CUDA source's enum.
ACTIVATION_CODES = {"linear": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
#: C type of each float dtype the kernels are compiled for.
C_TYPES = {"float32": "float", "float64": "double"}
REDUCE_THREADS = 512  # the CUDA source's REDUCE_THREADS
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


def grid(n):
    """The grid of a grid-stride launch over ``n`` elements."""
    return (min(MAX_BLOCKS, max(1, -(-n // BLOCK))),)


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
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # CUDARuntimeError, CUDADriverError, a missing libnvrtc ...
        raise BackendUnavailableError(
            f"CuPy {cupy.__version__} is installed but no CUDA device answers: {type(exc).__name__}: {exc}. "
            "The 'cupy' backend needs an NVIDIA GPU with a working driver "
            f"(check nvidia-smi) and the CuPy build that matches it: {INSTALL}."
        ) from exc
    return cupy


class DeviceTable:
    """Device tables of the addresses and sizes of same-dtype arrays (which it keeps alive)."""

    def __init__(self, xp, arrays, address):
        self.arrays = list(arrays)
        self.addresses = xp.asarray(np.array([address(a) for a in self.arrays], dtype=np.uint64))
        self.sizes = xp.asarray(np.array([a.size for a in self.arrays], dtype=np.int64))
        self.largest = max(a.size for a in self.arrays)
        self.dtype = self.arrays[0].dtype
