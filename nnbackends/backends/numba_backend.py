"""The Numba backend: NumPy arrays, every kernel compiled with ``@njit``.

Each kernel of the table is one of this class's own methods calling its own
compiled code in ``numba_kernels`` (nothing is forwarded to the NumPy
backend); matrix products call BLAS from the compiled code (NumPy's own
OpenBLAS where it can be found, see ``numba_blas``). Compiled code is cached
on disk where Numba puts its cache (``NUMBA_CACHE_DIR`` when set).
``fused_step`` builds the fused training step of ``numba_step``, whose pass is
measured on the machine and remembered (``autotune``; ``describe`` shows its cache).
"""
from __future__ import annotations

import numpy as np

from .base import ArrayBackend

try:
    import numba
    import scipy.linalg.cython_blas  # noqa: F401  (np.dot inside @njit, numba_blas's fallback, needs it)
except ImportError as exc:  # the registry turns this into BackendUnavailableError
    raise ImportError(f"{exc.name or exc} is not installed") from exc

from . import autotune, numba_kernels as K
from .numba_step import fused_step, warm_step


def _flat(a):
    """A flat view of a contiguous array (in-place kernels write through it)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"in-place kernels need C-contiguous arrays, got strides {a.strides}")
    return a.reshape(-1)


def _flat_in(a):
    """A flat C-order view of an array a kernel only reads (a contiguous copy when it has other strides)."""
    return np.ascontiguousarray(a).reshape(-1)


class NumbaBackend(ArrayBackend):
    """ArrayBackend plumbing (allocation, transfers) with every numeric kernel its own ``@njit`` code."""

    name = "numba"

    # ------------------------------------------------------------------ dense
    def dense_forward(self, x, W, b):
        return K.dense_forward(x, W, b)

    def dense_backward(self, x, W, dy, need_dx=True):
        dW, db = K.dense_grads(x, dy)
        return (K.dense_input_grad(W, dy) if need_dx else None), dW, db

    # ------------------------------------------------------------------ activations
    def relu_forward(self, x):
        return K.activation_forward(K.RELU, 0.0, x)

    def relu_backward(self, x, dy):
        return K.activation_backward(K.RELU, 0.0, x, dy)

    def leaky_relu_forward(self, x, alpha):
        return K.activation_forward(K.LEAKY_RELU, float(alpha), x)

    def leaky_relu_backward(self, x, dy, alpha):
        return K.activation_backward(K.LEAKY_RELU, float(alpha), x, dy)

    def sigmoid_forward(self, x):
        return K.activation_forward(K.SIGMOID, 0.0, x)

    def sigmoid_backward(self, y, dy):
        return K.activation_backward(K.SIGMOID, 0.0, y, dy)

    def tanh_forward(self, x):
        return K.activation_forward(K.TANH, 0.0, x)

    def tanh_backward(self, y, dy):
        return K.activation_backward(K.TANH, 0.0, y, dy)

    def softmax_forward(self, x):
        return K.softmax_forward(x)

    def softmax_backward(self, y, dy):
        return K.softmax_backward(y, dy)

    def linear_forward(self, x):
        return K.linear_forward(x)

    def linear_backward(self, x, dy):
        return K.linear_backward(x, dy)

    # ------------------------------------------------------------------ losses
    def cce_loss(self, p, y):
        kernel = K.cce_loss_labels if y.ndim == 1 else K.cce_loss_onehot
        return p.dtype.type(kernel(p, y))

    def cce_backward(self, p, y):
        return (K.cce_backward_labels if y.ndim == 1 else K.cce_backward_onehot)(p, y)

    def softmax_cce_backward(self, p, y):
        return (K.softmax_cce_backward_labels if y.ndim == 1 else K.softmax_cce_backward_onehot)(p, y)

    def bce_loss(self, p, y):
        return p.dtype.type(K.bce_loss(p, y))

    def bce_backward(self, p, y):
        return K.bce_backward(p, y)

    def sigmoid_bce_backward(self, p, y):
        return K.sigmoid_bce_backward(p, y)

    def mse_loss(self, p, y):
        return p.dtype.type(K.mse_loss(p, y))

    def mse_backward(self, p, y):
        return K.mse_backward(p, y)

    def mae_loss(self, p, y):
        return p.dtype.type(K.mae_loss(p, y))

    def mae_backward(self, p, y):
        return K.mae_backward(p, y)

    def regularization_loss(self, w, l1, l2):
        return w.dtype.type(K.regularization_loss(w, float(l1), float(l2)))

    def regularization_backward(self, w, dw, l1, l2):
        if l1 or l2:
            K.regularization_backward(_flat_in(w), _flat(dw), float(l1), float(l2))

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, rate, rng, dtype):
        u = rng.random(shape)
        out = np.empty(shape, dtype=dtype)
        K.dropout_scale(u.reshape(-1), float(rate), out.reshape(-1))
        return out

    def multiply(self, a, b):
        return K.multiply(a, b)

    # ------------------------------------------------------------------ optimizers
    def sgd_update(self, param, grad, lr, momentum=0.0, velocity=None):
        if velocity is None:
            K.sgd_update(_flat(param), _flat_in(grad), float(lr))
        else:
            K.sgd_momentum_update(_flat(param), _flat_in(grad), _flat(velocity), float(lr), float(momentum))

    def adagrad_update(self, param, grad, cache, lr, epsilon):
        K.adagrad_update(_flat(param), _flat_in(grad), _flat(cache), float(lr), float(epsilon))

    def rmsprop_update(self, param, grad, cache, lr, rho, epsilon):
        K.rmsprop_update(_flat(param), _flat_in(grad), _flat(cache), float(lr), float(rho), float(epsilon))

    def adam_update(self, param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
        K.adam_update(_flat(param), _flat_in(grad), _flat(m), _flat(v), float(lr), float(beta_1), float(beta_2),
                      float(epsilon), int(step))

    # ------------------------------------------------------------------ metrics
    def argmax(self, x):
        return K.argmax(x)

    def categorical_accuracy(self, p, y):
        kernel = K.categorical_accuracy_labels if y.ndim == 1 else K.categorical_accuracy_onehot
        return np.float64(kernel(p, y))

    def binary_accuracy(self, p, y):
        return np.float64(K.binary_accuracy(p, y))

    def regression_accuracy(self, p, y, precision):
        return np.float64(K.regression_accuracy(p, y, float(precision)))

    def all_finite(self, arrays) -> bool:
        return all(bool(K.all_finite(_flat_in(a))) for a in arrays)

    # ------------------------------------------------------------------ compiled code
    def fused_step(self, model):
        return fused_step(model)

    def warmup(self, dtypes=("float32", "float64")) -> None:
        """Compile (or load from the cache) every kernel and the fused step for each dtype."""
        for dtype in dtypes:
            _warm_kernels(self, np.dtype(dtype))
            warm_step(np.dtype(dtype))

    def describe(self) -> dict:
        return {
            "device": "cpu",
            "numba": numba.__version__,
            "threading_layer": _threading_layer(),
            "threads": numba.config.NUMBA_NUM_THREADS,
            "cache_dir": numba.config.CACHE_DIR or "__pycache__ next to the source",
            "blas": K.BLAS,
            **autotune.describe(),
        }


def _threading_layer() -> str:
    """The parallel layer in use; the kernels are serial, so normally none has started."""
    try:
        return numba.threading_layer()
    except ValueError:
        return f"none started: kernels are serial (Numba's setting: {numba.config.THREADING_LAYER})"


def _warm_kernels(be, dtype):
    """Call every kernel once on tiny arrays of ``dtype`` with every argument type the trainer passes."""
    r = np.random.default_rng(0)
    a, b, w = (r.standard_normal(s).astype(dtype) for s in ((4, 3), (4, 3), (3, 3)))
    p = be.softmax_forward(a)
    labels, onehot = np.array([0, 1, 2, 0]), np.eye(3, dtype=dtype)[[0, 1, 2, 0]]
    vec, state = np.zeros(3, dtype), np.abs(a)
    be.dense_backward(a, w, be.dense_forward(a, w, vec), need_dx=True)
    for kernel in ("relu", "sigmoid", "tanh", "softmax", "linear"):
        getattr(be, kernel + "_backward")(getattr(be, kernel + "_forward")(a), b)
    be.leaky_relu_backward(a, be.leaky_relu_forward(a, 0.1), 0.1)
    for y in (labels, onehot):
        be.cce_loss(p, y), be.cce_backward(p, y), be.softmax_cce_backward(p, y), be.categorical_accuracy(p, y)
    for kernel in ("bce", "mse", "mae"):
        getattr(be, kernel + "_loss")(p, onehot), getattr(be, kernel + "_backward")(p, onehot)
    be.sigmoid_bce_backward(p, onehot)
    be.regularization_backward(a, b, 0.1, 0.1), be.regularization_loss(a, 0.1, 0.1)
    be.multiply(a, be.dropout_mask(a.shape, 0.5, r, dtype))
    for x in (a, vec):  # weights and biases
        g = np.ones_like(x)
        be.sgd_update(x, g, 0.1), be.sgd_update(x, g, 0.1, 0.9, np.zeros_like(x))
        be.adagrad_update(x, g, np.ones_like(x), 0.1, 1e-7), be.rmsprop_update(x, g, np.ones_like(x), 0.1, 0.9, 1e-7)
        be.adam_update(x, g, np.zeros_like(x), np.ones_like(x), 0.1, 0.9, 0.999, 1e-7, 1)
    be.argmax(a), be.binary_accuracy(p, onehot), be.regression_accuracy(a, b, 0.5), be.all_finite([a, state])
