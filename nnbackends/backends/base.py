"""The kernel table: the one interface every array backend implements.

Two classes hold it:

* ``Backend`` is the plumbing every backend has: its ``name``, host/device
  transfer (``asarray``, ``to_numpy``, ``to_float``), allocation,
  ``synchronize``, ``warmup``, ``describe``, ``native_kernels``, and the
  ``fused_step`` hook through which a backend offers a whole training step.
* ``ArrayBackend`` adds every numeric kernel of ``KERNELS``, each written once
  against the array module ``self.xp`` (NumPy by default) with its contract in
  its docstring. These are the reference defaults: the NumPy backend is
  exactly them, and another backend overrides the kernels it makes faster.

Conventions shared by every kernel:

* Arrays are backend arrays (``numpy.ndarray`` for the CPU backends,
  ``cupy.ndarray`` for CuPy). Float arguments share one dtype (float32 or
  float64); results have that dtype.
* "Batch" arrays are 2-D ``(n_samples, n_features)``.
* Labels ``y`` are either integer class indices of shape ``(n,)`` or one-hot
  rows of shape ``(n, n_classes)`` in the float dtype.
* Reductions (losses, accuracy) return 0-d backend arrays that stay on the
  device; ``to_float`` pulls one to the host.
* Optimizer updates write in place into ``param`` and their state arrays and
  return nothing. Learning rates and other hyperparameters are Python floats.
* Arrays a kernel writes in place (optimizer parameters and state,
  ``regularization_backward``'s ``dw``) are C-contiguous, as layers allocate
  them; an array a kernel only reads may be any view (transposed, strided,
  sliced) and is never written.
"""
from __future__ import annotations

import warnings

import numpy as np

#: Probability clipping used by the cross-entropy losses (the nnfs book's value).
CLIP = 1e-7

#: Every numeric kernel of the table, in the order ``nnbackends info`` lists them.
KERNELS = (
    "dense_forward",
    "dense_backward",
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "softmax_forward",
    "softmax_backward",
    "linear_forward",
    "linear_backward",
    "cce_loss",
    "cce_backward",
    "softmax_cce_backward",
    "bce_loss",
    "bce_backward",
    "sigmoid_bce_backward",
    "mse_loss",
    "mse_backward",
    "mae_loss",
    "mae_backward",
    "regularization_loss",
    "regularization_backward",
    "dropout_mask",
    "multiply",
    "sgd_update",
    "adagrad_update",
    "rmsprop_update",
    "adam_update",
    "argmax",
    "categorical_accuracy",
    "binary_accuracy",
    "regression_accuracy",
    "all_finite",
)


class Backend:
    """The plumbing of a backend and its ``fused_step`` hook; the kernels come from ``ArrayBackend``."""

    name: str = "abstract"
    #: Kernels this backend hands to a BLAS library (reported by ``nnbackends info``).
    blas_kernels: tuple[str, ...] = ()

    # ------------------------------------------------------------------ plumbing
    def asarray(self, x, dtype=None):
        """Host (or device) array -> backend array of ``dtype`` (copied only if needed)."""
        raise NotImplementedError

    def to_numpy(self, x) -> np.ndarray:
        """Backend array -> host ``numpy.ndarray``."""
        raise NotImplementedError

    def to_float(self, x) -> float:
        """0-d backend array -> Python float (the only place a reduction leaves the device)."""
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    def synchronize(self) -> None:
        """Block until queued device work is done (a no-op on the CPU)."""

    def warmup(self, dtypes=("float32", "float64")) -> None:
        """Compile or load every kernel ahead of time (a no-op where nothing compiles)."""

    def fused_step(self, model):
        """A fused training step for ``model``, or None when this backend has none for it.

        The returned callable ``step(x, y)`` does forward, loss, backward,
        regularization and the optimizer update for one batch, updating the
        model's parameter and optimizer-state arrays in place, and returns
        ``(data_loss, accuracy, finite)``: two 0-d backend arrays (or host scalars)
        and a host bool that is False when the loss or a gradient was not finite
        (in which case no parameter was changed). The trainer calls the optimizer's
        ``pre_update``/``post_update`` around it, exactly as on the per-layer path.

        A step whose ``defers_finite_check`` is True also runs without reading
        anything back: ``step.queue(x, y)`` per batch, and ``step.end_epoch()``
        once, which reads the epoch's means and the first non-finite step
        (``cupy_step.EpochTotals``; after that step no update changed anything).

        For data-parallel training (``nnbackends.data_parallel``) the step also has
        ``step.summed_step(x, y, rows, comm)``: the step of one rank's share ``x``
        of a global batch of ``rows`` rows, its gradients summed over the ranks
        with ``comm.sum_inplace`` before the update; it returns what a call does.
        """
        return None

    def compile_step(self, model):
        """Deprecated name of ``fused_step``."""
        warnings.warn("Backend.compile_step is deprecated; use Backend.fused_step.", DeprecationWarning, stacklevel=2)
        return self.fused_step(model)

    def describe(self) -> dict:
        """Facts for ``nnbackends info`` (device, versions, threads)."""
        return {}

    def native_kernels(self) -> list[str]:
        """Kernels whose implementation this backend's own class provides."""
        own = [c for c in type(self).__mro__ if c not in _SHARED_CLASSES]
        return [k for k in KERNELS if any(k in vars(c) for c in own)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ArrayBackend(Backend):
    """Every kernel written once against the array module ``self.xp``.

    This is the readable reference. A subclass that sets ``xp`` to another
    NumPy-compatible module (CuPy) runs all of it on that module's arrays.
    """

    xp = np
    #: ``dense_forward``/``dense_backward`` are ``xp``'s matrix products (BLAS, or cuBLAS under CuPy).
    blas_kernels = ("dense_forward", "dense_backward")

    # ------------------------------------------------------------------ plumbing
    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def to_float(self, x) -> float:
        return float(x)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    # ------------------------------------------------------------------ dense
    def dense_forward(self, x, W, b):
        """``x @ W + b`` for x (n, i), W (i, o), b (o,) -> (n, o)."""
        out = x @ W
        out += b
        return out

    def dense_backward(self, x, W, dy, need_dx=True):
        """Gradients of ``x @ W + b`` given dy (n, o): returns ``(dx, dW, db)``.

        ``dx`` is None when ``need_dx`` is False (the first layer needs none).
        """
        dW = x.T @ dy
        db = dy.sum(axis=0)
        dx = dy @ W.T if need_dx else None
        return dx, dW, db

    # ------------------------------------------------------------------ activations
    # Backward kernels take what the derivative is cheapest in: the input x for
    # ReLU-like activations, the output y for sigmoid, tanh and softmax.
    def relu_forward(self, x):
        return self.xp.maximum(x, 0)

    def relu_backward(self, x, dy):
        return dy * (x > 0)

    def leaky_relu_forward(self, x, alpha):
        # max/min of x and alpha*x equals where(x > 0, x, alpha*x) without np.where's
        # unpredictable branch per element (ten times slower on large arrays).
        scaled = x * x.dtype.type(alpha)
        return self.xp.maximum(x, scaled) if alpha <= 1 else self.xp.minimum(x, scaled)

    def leaky_relu_backward(self, x, dy, alpha):
        # Exactly where(x > 0, dy, alpha*dy): one of the two terms is always zero.
        return dy * (x > 0) + (dy * dy.dtype.type(alpha)) * (x <= 0)

    def sigmoid_forward(self, x):
        # 0.5 * (1 + tanh(x / 2)) is the logistic function without exp overflow.
        half = x.dtype.type(0.5)
        return half + half * self.xp.tanh(half * x)

    def sigmoid_backward(self, y, dy):
        return dy * y * (1 - y)

    def tanh_forward(self, x):
        return self.xp.tanh(x)

    def tanh_backward(self, y, dy):
        return dy * (1 - y * y)

    def softmax_forward(self, x):
        """Row-wise softmax, shifted by the row maximum so no exp overflows."""
        e = self.xp.exp(x - x.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e

    def softmax_backward(self, y, dy):
        """Jacobian-vector product of softmax: ``y * (dy - sum(dy * y, row))``."""
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))

    def linear_forward(self, x):
        return x

    def linear_backward(self, x, dy):
        return dy

    # ------------------------------------------------------------------ losses
    # Every loss is the mean over samples of a per-sample loss; per-sample
    # losses of multi-output targets are means over outputs (the nnfs book's
    # definitions). Gradients are with respect to y_pred of that mean.
    def _true_class_probability(self, p, y):
        xp = self.xp
        if y.ndim == 1:
            return p[xp.arange(p.shape[0]), y]
        return (p * y).sum(axis=1)

    def cce_loss(self, p, y):
        """Categorical cross-entropy of probabilities p (n, k), clipped to [1e-7, 1-1e-7]."""
        # Clipping commutes with picking the true class (labels or exact one-hot rows),
        # so only the n picked values are clipped.
        picked = self.xp.clip(self._true_class_probability(p, y), CLIP, 1 - CLIP)
        return -self.xp.log(picked).mean()

    def _one_hot(self, y, k, dtype):
        if y.ndim == 2:
            return y
        out = self.xp.zeros((y.shape[0], k), dtype=dtype)
        out[self.xp.arange(y.shape[0]), y] = 1
        return out

    def cce_backward(self, p, y):
        """Gradient of ``cce_loss`` (the clipping treated as the identity, as in nnfs).

        Probabilities below the clip value divide as the clip value, so a
        probability of exactly 0 gives a finite gradient instead of -inf or NaN.
        """
        n = p.shape[0]
        return -self._one_hot(y, p.shape[1], p.dtype) / (self.xp.maximum(p, p.dtype.type(CLIP)) * n)

    def softmax_cce_backward(self, p, y):
        """Gradient of cce_loss(softmax(z)) with respect to the logits z, given p = softmax(z)."""
        return (p - self._one_hot(y, p.shape[1], p.dtype)) / p.shape[0]

    def bce_loss(self, p, y):
        p = self.xp.clip(p, CLIP, 1 - CLIP)
        return -(y * self.xp.log(p) + (1 - y) * self.xp.log(1 - p)).mean()

    def bce_backward(self, p, y):
        p = self.xp.clip(p, CLIP, 1 - CLIP)
        return -(y / p - (1 - y) / (1 - p)) / p.size

    def sigmoid_bce_backward(self, p, y):
        """Gradient of bce_loss(sigmoid(z)) with respect to the logits z, given p = sigmoid(z)."""
        return (p - y) / p.size

    def mse_loss(self, p, y):
        d = y - p
        return (d * d).mean()

    def mse_backward(self, p, y):
        return (p - y) * p.dtype.type(2.0 / p.size)

    def mae_loss(self, p, y):
        return self.xp.abs(y - p).mean()

    def mae_backward(self, p, y):
        return self.xp.sign(p - y) / p.dtype.type(p.size)

    def regularization_loss(self, w, l1, l2):
        """``l1 * sum|w| + l2 * sum w**2`` as a 0-d array."""
        xp = self.xp
        loss = xp.zeros((), dtype=w.dtype)
        if l1:
            loss = loss + l1 * xp.abs(w).sum()
        if l2:
            loss = loss + l2 * (w * w).sum()
        return loss

    def regularization_backward(self, w, dw, l1, l2):
        """Add the gradient of ``regularization_loss`` to dw, in place."""
        if l1:
            dw += w.dtype.type(l1) * self.xp.sign(w)
        if l2:
            dw += w.dtype.type(2 * l2) * w

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, rate, rng, dtype):
        """Inverted-dropout mask: 0 with probability ``rate``, else ``1/(1-rate)``.

        ``rng`` is the model's host ``numpy.random.Generator``; every backend
        draws from it so that one seed gives one training run.
        """
        keep = rng.random(shape) >= rate
        return self.asarray(keep / (1.0 - rate), dtype=dtype)

    def multiply(self, a, b):
        """Elementwise product (dropout's forward and backward)."""
        return a * b

    # ------------------------------------------------------------------ optimizers
    def sgd_update(self, param, grad, lr, momentum=0.0, velocity=None):
        """Plain: ``param -= lr*grad``; with momentum: ``v = momentum*v - lr*grad; param += v``."""
        if velocity is None:
            param -= param.dtype.type(lr) * grad
        else:
            velocity *= velocity.dtype.type(momentum)
            velocity -= velocity.dtype.type(lr) * grad
            param += velocity

    def adagrad_update(self, param, grad, cache, lr, epsilon):
        cache += grad * grad
        param -= param.dtype.type(lr) * grad / (self.xp.sqrt(cache) + param.dtype.type(epsilon))

    def rmsprop_update(self, param, grad, cache, lr, rho, epsilon):
        cache *= cache.dtype.type(rho)
        cache += cache.dtype.type(1 - rho) * grad * grad
        param -= param.dtype.type(lr) * grad / (self.xp.sqrt(cache) + param.dtype.type(epsilon))

    def adam_update(self, param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
        """Adam with bias correction; ``step`` counts from 1."""
        t = param.dtype.type
        m *= t(beta_1)
        m += t(1 - beta_1) * grad
        v *= t(beta_2)
        v += t(1 - beta_2) * grad * grad
        m_hat = m / t(1 - beta_1**step)
        v_hat = v / t(1 - beta_2**step)
        param -= t(lr) * m_hat / (self.xp.sqrt(v_hat) + t(epsilon))

    # ------------------------------------------------------------------ metrics
    def argmax(self, x):
        """Row-wise argmax of (n, k) -> (n,) integer indices."""
        return x.argmax(axis=1)

    def categorical_accuracy(self, p, y):
        """Fraction of rows whose argmax matches the label (integer or one-hot)."""
        labels = y if y.ndim == 1 else y.argmax(axis=1)
        return (p.argmax(axis=1) == labels).mean()

    def binary_accuracy(self, p, y):
        """Fraction of outputs where ``p > 0.5`` matches the 0/1 target."""
        return ((p > 0.5) == (y > 0.5)).mean()

    def regression_accuracy(self, p, y, precision):
        """Fraction of outputs within ``precision`` of the target."""
        return (self.xp.abs(p - y) < precision).mean()

    def all_finite(self, arrays) -> bool:
        """True when no array holds NaN or Inf (a host bool: the trainer acts on it)."""
        xp = self.xp
        return all(bool(xp.isfinite(a).all()) for a in arrays)


#: Classes whose kernels are shared defaults, not a backend's own.
_SHARED_CLASSES = (Backend, ArrayBackend, object)
