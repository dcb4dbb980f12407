"""The CuPy backend's fused training step: one batch shape's whole step as a fixed sequence of launches.

``GraphStep`` is array code: it calls the backend's ``_..._into`` hooks on
preallocated ``_Buffers``, so with NumPy standing in for CuPy (``cupy-numpy``)
it runs without a GPU; on the GPU the backend's ``_capture`` records it as a
CUDA graph that later calls replay.
"""
from __future__ import annotations

import logging

import numpy as np

#: Batch shapes a fused step keeps a graph for; others run its kernels without a graph.
MAX_GRAPHS = 4
log = logging.getLogger("nnbackends")


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

