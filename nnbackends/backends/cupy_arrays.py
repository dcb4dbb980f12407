"""The CuPy backend's array-module code: everything written against ``xp``, runnable with NumPy.

``CupyArrayCode`` holds allocation, contiguity and label handling, matrix
products (``xp.matmul`` into preallocated outputs) and the kernels of the
table, each reaching its fused kernel through a small ``_..._into`` hook that
writes into a given output. Here the hooks evaluate the reference array code
of ``ArrayBackend``; ``CupyBackend`` (``cupy_backend``) overrides each with a
launch of a kernel from ``cuda_kernels.cu``. With ``xp = numpy`` this class is
the stand-in the test suite registers as ``"cupy-numpy"``.
"""
from __future__ import annotations

import numpy as np

from .base import ArrayBackend
from .cupy_step import GraphStep
from .step_plan import step_plan


def _reference(name):
    """The reference array code of kernel ``name`` (what the hooks below evaluate on NumPy)."""
    return getattr(ArrayBackend, name)


class CupyArrayCode(ArrayBackend):
    """The CuPy backend's array-module code; with ``xp = numpy`` it is the test suite's stand-in."""

    name = "cupy-numpy"

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

    # ------------------------------------------------------------------ fused step
    def fused_step(self, model):
        plan = step_plan(model)
        return None if plan is None else GraphStep(self, model, plan)

