"""The CuPy backend's array-module code: everything written against ``xp``, runnable with NumPy.

``CupyArrayCode`` holds allocation, contiguity and target handling, matrix
products (``xp.matmul`` into preallocated outputs) and the kernels of the
table, each reaching its fused kernel through a small ``_..._into`` hook that
writes into a given output. Here the hooks evaluate the reference array code
of ``ArrayBackend``; ``CupyBackend`` (``cupy_backend``) overrides each with a
launch of a kernel from ``cuda_kernels.cu``. With ``xp = numpy`` this class is
the stand-in the test suite registers as ``"cupy-numpy"``.

A kernel reads its operands as raw memory, so every kernel of the table checks
them before a hook runs: float operands share one float type (targets in
another type are cast to the predictions' type), elementwise operands one
shape, and what a kernel writes in place is C-contiguous.
"""
from __future__ import annotations

import numpy as np

from .base import ArrayBackend
from .cupy_step import SLOT, GraphStep
from .step_plan import step_plan


FLOAT_TYPES = ("float32", "float64")


def _reference(name):
    """The reference array code of kernel ``name`` (what the hooks below evaluate on NumPy)."""
    return getattr(ArrayBackend, name)


def _check_dtypes(kernel, first, *others):
    """``first`` is float32 or float64 and ``others`` have its dtype."""
    if first.dtype.name not in FLOAT_TYPES:
        raise TypeError(f"{kernel} takes float32 or float64 arrays, got {first.dtype}.")
    for a in others:
        if a.dtype != first.dtype:
            raise TypeError(f"{kernel}: the operands must share one float type, got {first.dtype} and {a.dtype}.")


def _check_like(kernel, first, *others):
    """The operands of an elementwise kernel: one float type and one shape (the kernel indexes them alike)."""
    _check_dtypes(kernel, first, *others)
    for a in others:
        if a.shape != first.shape:
            raise ValueError(f"{kernel}: the operands must have one shape, got {first.shape} and {a.shape}.")


def _check_in_place(kernel, *arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"{kernel} writes in place into C-contiguous arrays only, got one with strides "
                             f"{a.strides}.")


class CupyArrayCode(ArrayBackend):
    """The CuPy backend's array-module code; with ``xp = numpy`` it is the test suite's stand-in."""

    name = "cupy-numpy"

    # ------------------------------------------------------------------ plumbing
    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def _contiguous(self, a):
        return self.xp.ascontiguousarray(a)

    def _targets(self, kernel, p, y):
        """Float targets as kernels take them: p's shape and dtype (cast when they come in another type)."""
        if y.shape != p.shape:
            raise ValueError(f"{kernel}: targets of shape {y.shape} for predictions of shape {p.shape}.")
        return self._contiguous(y).astype(p.dtype, copy=False)

    def _class_targets(self, kernel, p, y):
        """Class targets as kernels take them: int64 labels, one per row of p, or one-hot rows (``_targets``)."""
        if y.ndim != 1:
            return self._targets(kernel, p, y)
        if y.shape[0] != p.shape[0]:
            raise ValueError(f"{kernel}: {y.shape[0]} labels for {p.shape[0]} rows of predictions.")
        return self._contiguous(y).astype(np.int64, copy=False)

    def _matmul(self, a, b, out=None, work=None):
        """``a @ b`` (2-D) written into ``out`` (allocated when None): cuBLAS on the GPU.

        ``work``: a reduction workspace (``REDUCE_WORKSPACE`` float64) for the products
        the GPU runs as reductions; None allocates one where needed.
        """
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
    # Reduction hooks take ``work`` as ``_matmul`` does.
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

    def _loss_into(self, kind, p, y, out, work=None):
        """Loss ``kind`` (cce, bce, mse, mae) of p against y into the 0-d ``out``."""
        out[...] = _reference(kind + "_loss")(self, p, y)

    def _loss_backward_into(self, kind, p, y, out):
        """Gradient ``kind`` (cce, softmax_cce, bce, sigmoid_bce, mse, mae) into ``out``."""
        out[...] = _reference(kind + "_backward")(self, p, y)

    def _accuracy_into(self, kind, p, y, out, precision=None, work=None):
        """Accuracy ``kind`` (categorical, binary, regression) into the 0-d ``out``."""
        args = (precision,) if kind == "regression" else ()
        out[...] = _reference(kind + "_accuracy")(self, p, y, *args)

    def _regularization_loss_into(self, w, out, l1, l2, work=None):
        out[...] = _reference("regularization_loss")(self, w, l1, l2)

    def _regularization_backward_into(self, w, dw, l1, l2):
        _reference("regularization_backward")(self, w, dw, l1, l2)

    def _dropout_into(self, out, rate, seed):
        """Inverted-dropout mask of ``rate`` from the generator stream ``seed``."""
        keep = np.random.default_rng(seed).random(out.shape) >= rate
        out[...] = keep / (1.0 - rate)

    def _multiply_into(self, a, b, out):
        out[...] = a * b

    def _argmax_into(self, x, out):
        out[...] = x.argmax(axis=1)

    def _update_into(self, kernel, arrays, hyper):
        """Update ``kernel`` (sgd_update, sgd_momentum_update, adagrad_update, rmsprop_update, adam_update)
        in place on ``arrays`` (param, grad, then the state arrays); ``hyper``: the kernel table's
        scalar arguments of that update, in its order."""
        if kernel == "sgd_momentum_update":
            param, grad, velocity = arrays
            _reference("sgd_update")(self, param, grad, *hyper, velocity)
        else:
            _reference(kernel)(self, *arrays, *hyper)

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

    def _step_bookkeeping(self, result, nonfinite, hyper, coeffs, totals, rows, betas):
        """What the host does between two fused steps, on the device (the CUDA source's ``step_bookkeeping``
        says what it writes into ``coeffs``, ``hyper`` and ``totals``)."""
        iterations = float(hyper[2])
        step = iterations + 1
        b1, b2 = betas
        coeffs[...] = (hyper[0] / (1.0 + hyper[1] * iterations), step, 1.0 - b1 ** step, 1.0 - b2 ** step)
        hyper[2] = step
        totals[SLOT["last_loss"]], totals[SLOT["last_accuracy"]] = result[0], result[1]
        if nonfinite:
            if not totals[SLOT["failed_step"]]:
                totals[SLOT["failed_step"]], totals[SLOT["failed_loss"]] = step, result[0]
            return
        totals[SLOT["loss"]] += rows * float(result[0])
        totals[SLOT["accuracy"]] += rows * float(result[1])
        totals[SLOT["regularization"]] += rows * float(np.sum(result[2:], dtype=np.float64))

    def _guarded_update_many(self, kind, tables, coeffs, nonfinite, consts):
        """Update ``kind`` (sgd_update, sgd_momentum_update, adam_update) of every parameter with the
        learning rate and step count of ``coeffs`` (device memory); nothing changes when ``nonfinite`` is set.

        ``tables``: parameters, gradients, then the state arrays (velocity; or m, v).
        """
        if nonfinite:
            return
        lr, step = float(coeffs[0]), int(coeffs[1])
        for arrays in zip(*tables):
            self._update_into(kind, arrays, (lr, *consts, step) if kind == "adam_update" else (lr, *consts))

    # ------------------------------------------------------------------ kernels of the table
    def dense_forward(self, x, W, b):
        _check_dtypes("dense_forward", x, W, b)
        if b.shape != W.shape[1:]:
            raise ValueError(f"dense_forward: a bias of shape {b.shape} for weights of shape {W.shape}.")
        out = self._matmul(self._contiguous(x), W)
        self._bias_activation_into(out, self._contiguous(b), out, "linear", 0.0)  # kernels index b flat
        return out

    def dense_backward(self, x, W, dy, need_dx=True):
        _check_dtypes("dense_backward", x, W, dy)
        dy = self._contiguous(dy)
        dW = self._matmul(x.T, dy)
        db = self._empty((dy.shape[1],), dy.dtype)
        self._column_sums_into(dy, db)
        dx = self._matmul(dy, W.T) if need_dx else None
        return dx, dW, db

    def _map(self, kernel, into, *arrays):
        """Check the operands of an elementwise kernel, then ``into(*arrays, out)`` into a fresh array like them."""
        _check_like(kernel, *arrays)
        arrays = [self._contiguous(a) for a in arrays]
        out = self._empty(arrays[0].shape, arrays[0].dtype)
        into(*arrays, out)
        return out

    def _activation(self, kind, x, alpha=0.0):
        return self._map(kind + "_forward", lambda x, out: self._activation_into(kind, x, out, alpha), x)

    def _activation_backward(self, kind, saved, dy, alpha=0.0):
        return self._map(kind + "_backward",
                         lambda saved, dy, out: self._activation_backward_into(kind, saved, dy, out, alpha), saved, dy)

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
        return self._map("softmax_forward", self._softmax_into, x)

    def softmax_backward(self, y, dy):
        return self._map("softmax_backward", self._softmax_backward_into, y, dy)

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

    def _class_operands(self, kernel, p, y):
        _check_dtypes(kernel, p)
        return self._class_targets(kernel, p, y)

    def _float_operands(self, kernel, p, y):
        _check_dtypes(kernel, p)
        return self._targets(kernel, p, y)

    def cce_loss(self, p, y):
        return self._reduce(self._loss_into, "cce", p, self._class_operands("cce_loss", p, y))

    def cce_backward(self, p, y):
        return self._gradient("cce", p, self._class_operands("cce_backward", p, y))

    def softmax_cce_backward(self, p, y):
        return self._gradient("softmax_cce", p, self._class_operands("softmax_cce_backward", p, y))

    def bce_loss(self, p, y):
        return self._reduce(self._loss_into, "bce", p, self._float_operands("bce_loss", p, y))

    def bce_backward(self, p, y):
        return self._gradient("bce", p, self._float_operands("bce_backward", p, y))

    def sigmoid_bce_backward(self, p, y):
        return self._gradient("sigmoid_bce", p, self._float_operands("sigmoid_bce_backward", p, y))

    def mse_loss(self, p, y):
        return self._reduce(self._loss_into, "mse", p, self._float_operands("mse_loss", p, y))

    def mse_backward(self, p, y):
        return self._gradient("mse", p, self._float_operands("mse_backward", p, y))

    def mae_loss(self, p, y):
        return self._reduce(self._loss_into, "mae", p, self._float_operands("mae_loss", p, y))

    def mae_backward(self, p, y):
        return self._gradient("mae", p, self._float_operands("mae_backward", p, y))

    def regularization_loss(self, w, l1, l2):
        _check_dtypes("regularization_loss", w)
        out = self._empty((), w.dtype)
        self._regularization_loss_into(self._contiguous(w), out, l1, l2)
        return out

    def regularization_backward(self, w, dw, l1, l2):
        _check_like("regularization_backward", w, dw)
        _check_in_place("regularization_backward", dw)
        self._regularization_backward_into(self._contiguous(w), dw, l1, l2)

    def dropout_mask(self, shape, rate, rng, dtype):
        """Mask from a device generator whose stream is drawn from the model's host ``rng``."""
        seed = int(rng.integers(0, 2**63))
        out = self._empty(tuple(shape), dtype)
        _check_dtypes("dropout_mask", out)
        self._dropout_into(out, rate, seed)
        return out

    def multiply(self, a, b):
        return self._map("multiply", self._multiply_into, a, b)

    def _update(self, kernel, arrays, hyper):
        """Check the operands of an update (param, grad, state arrays), then run its hook."""
        _check_like(kernel, *arrays)
        param, grad, *state = arrays
        _check_in_place(kernel, param, *state)
        self._update_into(kernel, (param, self._contiguous(grad), *state), hyper)

    def sgd_update(self, param, grad, lr, momentum=0.0, velocity=None):
        if velocity is None:
            self._update("sgd_update", (param, grad), (lr,))
        else:
            self._update("sgd_momentum_update", (param, grad, velocity), (lr, momentum))

    def adagrad_update(self, param, grad, cache, lr, epsilon):
        self._update("adagrad_update", (param, grad, cache), (lr, epsilon))

    def rmsprop_update(self, param, grad, cache, lr, rho, epsilon):
        self._update("rmsprop_update", (param, grad, cache), (lr, rho, epsilon))

    def adam_update(self, param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
        self._update("adam_update", (param, grad, m, v), (lr, beta_1, beta_2, epsilon, step))

    def argmax(self, x):
        _check_dtypes("argmax", x)
        out = self._empty((x.shape[0],), np.int64)
        self._argmax_into(self._contiguous(x), out)
        return out

    def categorical_accuracy(self, p, y):
        return self._reduce(self._accuracy_into, "categorical", p,
                            self._class_operands("categorical_accuracy", p, y))

    def binary_accuracy(self, p, y):
        return self._reduce(self._accuracy_into, "binary", p, self._float_operands("binary_accuracy", p, y))

    def regression_accuracy(self, p, y, precision):
        return self._reduce(self._accuracy_into, "regression", p, self._float_operands("regression_accuracy", p, y),
                            precision)

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
