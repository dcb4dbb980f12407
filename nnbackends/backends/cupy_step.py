"""The CuPy backend's fused training step: one batch shape's whole step as a fixed sequence of launches.

``GraphStep`` is array code: it calls the backend's ``_..._into`` hooks on
preallocated ``_Buffers``, so with NumPy standing in for CuPy (``cupy-numpy``)
it runs without a GPU; on the GPU the backend's ``_capture`` records it as a
CUDA graph that later calls replay.

Nothing in a step waits for the host. The learning rate, its decay and the
step count live in device memory and advance on the device; the loss, the
metric and the non-finite flag go to device totals; the host reads those
once, when it asks (``end_epoch``), or once per step through the classic
``step(x, y)`` call. The protocol a trainer follows to read once per epoch:

* ``step.defers_finite_check`` is True;
* ``step.queue(x, y)`` runs a step and returns nothing (call the optimizer's
  ``pre_update``/``post_update`` around it as around any step). Once a step is
  not finite, every later update of the epoch changes nothing, so the
  weights stay those of the last finite step;
* ``step.end_epoch()`` reads the totals (one host read), clears them, and
  returns ``EpochTotals``: the means of the data loss, accuracy and
  regularization loss over the queued rows, and, when a step was not finite,
  the optimizer's ``iterations`` at that step and its data loss.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from .cupy_device import REDUCE_WORKSPACE

#: Batch shapes a fused step keeps a graph for; others run its kernels without a graph.
MAX_GRAPHS = 4
#: Slots of the device totals (the CUDA source's ``enum Totals``): sums over the finite steps of
#: rows times the data loss, accuracy and regularization loss; the step count (from 1) and data loss
#: of the first step that was not finite (0 while there is none); the last step's data loss and accuracy.
TOTALS = ("loss", "accuracy", "regularization", "failed_step", "failed_loss", "last_loss", "last_accuracy")
SLOT = {name: i for i, name in enumerate(TOTALS)}
#: Update kernels with Adam's bias corrections: the hyperparameters whose powers the step computes.
BIAS_CORRECTIONS = {"adam_update": ("beta_1", "beta_2")}


class GraphCaptureWarning(RuntimeWarning):
    """A fused step's CUDA graph could not be captured or launched; that batch shape runs without a graph."""


class EpochTotals(NamedTuple):
    """What ``GraphStep.end_epoch`` reads: means over the rows queued since the last read."""

    data_loss: float
    accuracy: float | None  # None when the model reports no metric
    regularization: float
    failed_iteration: int | None  # the optimizer's ``iterations`` at the first step that was not finite
    failed_loss: float | None  # that step's data loss


class _Buffers:
    """Every array one batch shape's step touches, allocated once."""

    def __init__(self, be, plan, x_shape, y_shape, y_dtype, dtype, checked_grads, regularized):
        n = x_shape[0]
        self.rows = np.float64(n)
        self.x = be._empty(x_shape, dtype)
        self.y = be._empty(y_shape, y_dtype)
        self.z = [be._empty((n, d.n_neurons), dtype) for d, _, _ in plan]  # pre-activations
        self.h = [z if kind == "linear" else be._empty(z.shape, dtype) for z, (_, kind, _) in zip(self.z, plan)]
        self.g = [be._empty(z.shape, dtype) for z in self.z]  # loss gradient w.r.t. each z
        # data loss, accuracy, then each regularized parameter's regularization loss (weights before the update)
        self.result = be.zeros((2 + regularized,), dtype)
        self.work = be._empty((REDUCE_WORKSPACE,), np.float64)  # the reductions' partial sums
        self.checked = be._array_table([self.result[0, ...], *checked_grads])  # must stay finite


class GraphStep:
    """The fused step of ``Backend.fused_step`` for a qualifying model; see the module docstring.

    One batch shape's whole step (forward, loss, metric, regularization
    losses, backward, regularization gradients, non-finite check, bookkeeping,
    guarded optimizer updates) is a fixed sequence of launches into
    preallocated buffers. The backend's ``_capture`` turns it into a CUDA
    graph on the GPU, replayed on later calls. Graphs are kept for
    ``MAX_GRAPHS`` batch shapes (the full batch and the last partial one);
    further shapes run the same launches without a graph.
    """

    defers_finite_check = True

    def __init__(self, backend, model, plan):
        self.be, self.model, self.plan = backend, model, plan
        self.params = model.params()
        self.regularized = [p for p in self.params if p.regularized]
        opt = model.optimizer
        self.consts = tuple(getattr(opt, name) for name in plan.hyperparameters)
        self.betas = tuple(getattr(opt, name) for name in BIAS_CORRECTIONS.get(plan.update, ())) or (0.0, 0.0)
        self.hyper = backend.zeros((3,), np.float64)  # learning rate, decay, iterations: the schedule's state
        self.coeffs = backend.zeros((4,), np.float64)  # this step's lr, step count, bias corrections
        self.totals = backend.zeros((len(TOTALS),), np.float64)
        self.nonfinite = backend.zeros((), np.int32)  # set by a step that is not finite, cleared by a read
        self._device_hyper = None  # what ``hyper`` holds for the next step, as the host knows it
        self._rows = 0  # rows queued since the last read
        self.shapes = {}  # key -> (buffers, replay)
        self.shares = {}  # key -> buffers of a distributed step's shares (``summed_step``)
        self._untried = set()  # keys whose graph has not been launched yet
        # Gradients live in fixed buffers of this step (the per-layer path makes new ones).
        self.grads = [backend.zeros(p.value.shape, p.value.dtype) for p in self.params]
        states = [[p.state[name] for p in self.params] for name in plan.state_names]
        self.update_tables = [backend._array_table(t) for t in ([p.value for p in self.params], self.grads, *states)]

    # ------------------------------------------------------------------ the protocol
    def __call__(self, x, y):
        """``(data_loss, accuracy, finite)`` of one step: ``queue`` and one host read.

        The loss and accuracy come back as host scalars of the model's dtype, ``finite``
        as a host bool (False: no parameter or state was changed).
        """
        self.queue(x, y)
        return self._call_result(self._read())

    def _call_result(self, totals):
        """``(data_loss, accuracy, finite)`` of the one step whose ``totals`` were read."""
        t = np.dtype(self.model.dtype).type
        accuracy = t(totals[SLOT["last_accuracy"]]) if self.model.batch_metric is not None else None
        return t(totals[SLOT["last_loss"]]), accuracy, not totals[SLOT["failed_step"]]

    def queue(self, x, y):
        """Run one step on the batch ``(x, y)`` without reading anything back."""
        be = self.be
        x, y, key, precision = self._operands(x, y)
        self._sync_schedule()
        entry = self.shapes.get(key)
        if entry is None:
            buffers = self._new_buffers(x, y)
            body = self._body(buffers, precision)
            body()  # the first call per shape runs eagerly (it also loads every kernel and cuBLAS)
            self.shapes[key] = buffers, self._graph(key, body) if len(self.shapes) < MAX_GRAPHS else body
        else:
            buffers, replay = entry
            be._copy_into(buffers.x, x)
            be._copy_into(buffers.y, y)
            self._replay(key, buffers, replay, precision)
        self._rows += x.shape[0]

    def _operands(self, x, y):
        """``(x, y, key, precision)``: the batch as the buffers hold it (the model's dtype; class labels
        int64), the key of its buffers and the metric's precision. Binds the parameters' gradients."""
        be = self.be
        for p, g in zip(self.params, self.grads):
            p.grad = g
        dtype = self.model.dtype  # that of the graph's buffers
        x = be._contiguous(x).astype(dtype, copy=False)
        y = be._contiguous(y).astype(np.int64 if self.plan.classifies and y.ndim == 1 else dtype, copy=False)
        precision = getattr(self.model.batch_metric, "precision", None)
        return x, y, (x.shape, y.shape, y.dtype.str, precision), precision

    def _new_buffers(self, x, y) -> _Buffers:
        """Buffers for the shape of the batch ``(x, y)``, holding it."""
        buffers = _Buffers(self.be, self.plan, x.shape, y.shape, y.dtype, x.dtype, self.grads, len(self.regularized))
        self.be._copy_into(buffers.x, x)
        self.be._copy_into(buffers.y, y)
        return buffers

    def summed_step(self, x, y, rows, comm):
        """The step of one rank's share ``x`` of a global batch of ``rows`` rows (``nnbackends.data_parallel``),
        as ``(data_loss, accuracy, finite)`` like a call.

        Its launches run without a graph, since the sum over the ranks sits between the gradients and
        the update: the share's gradients, data loss and accuracy, weighted by its part of the batch,
        go to one flat buffer that ``comm.sum_inplace`` sums over the ranks, on the device where the MPI
        library is CUDA-aware (``comm.cuda_aware``), else through host memory. The regularization
        gradients, the non-finite check and the update then run on what is the same on every rank.
        """
        be = self.be
        x, y, key, precision = self._operands(x, y)
        b = self.shares.get(key)
        if b is None:
            b = self.shares[key] = self._new_buffers(x, y)
        else:
            be._copy_into(b.x, x)
            be._copy_into(b.y, y)
        self._sync_schedule()
        if x.shape[0]:
            self._gradients(b, precision)
            flat = be.xp.concatenate([*(g.reshape(-1) for g in self.grads), b.result[:2]]) * (x.shape[0] / rows)
        else:  # an empty share adds nothing
            flat = be.zeros((sum(g.size for g in self.grads) + 2,), self.model.dtype)
        if getattr(comm, "cuda_aware", False):
            be.synchronize()
            comm.sum_inplace(flat)
        else:
            host = be.to_numpy(flat)
            comm.sum_inplace(host)
            flat = be.asarray(host)
        start = 0
        for g in self.grads:
            g[...] = flat[start:start + g.size].reshape(g.shape)
            start += g.size
        b.result[:2] = flat[start:]
        self._update(b)
        return self._call_result(self._read())

    def end_epoch(self) -> EpochTotals:
        """Read the totals of the steps queued since the last read (one host read) and clear them."""
        totals, rows = self._read(), max(self._rows, 1)
        self._rows = 0
        failed = int(totals[SLOT["failed_step"]]) - 1 if totals[SLOT["failed_step"]] else None
        return EpochTotals(
            data_loss=totals[SLOT["loss"]] / rows,
            accuracy=totals[SLOT["accuracy"]] / rows if self.model.batch_metric is not None else None,
            regularization=totals[SLOT["regularization"]] / rows,
            failed_iteration=failed,
            failed_loss=None if failed is None else totals[SLOT["failed_loss"]],
        )

    def _read(self) -> list[float]:
        """The totals as host floats (the one read), then clear them and the non-finite flag on the device."""
        totals = self.be.to_numpy(self.totals).tolist()
        self.totals.fill(0)
        self.nonfinite.fill(0)
        return totals

    # ------------------------------------------------------------------ the schedule in device memory
    def _sync_schedule(self):
        """Write the optimizer's schedule to ``hyper`` where the device's copy differs from the host's.

        The device derives each step's learning rate from ``hyper`` with the book's
        rule (``InverseTimeDecay``), so while the host follows that rule nothing is
        written; any other schedule, a scaled rate or a rate set by hand is written
        as a constant (decay 0) before each step.
        """
        opt = self.model.optimizer
        rule = opt.schedule  # the device runs InverseTimeDecay (a Constant: decay 0); others come a rate a step
        lr, decay, iterations = getattr(rule, "learning_rate", None), getattr(rule, "decay", 0.0), float(opt.iterations)
        if not isinstance(lr, float) or opt.current_learning_rate != lr / (1.0 + decay * iterations):
            lr, decay = opt.current_learning_rate, 0.0
        if (lr, decay, iterations) != self._device_hyper:
            self.be._upload(self.hyper, np.array([lr, decay, iterations], dtype=np.float64))
        self._device_hyper = (lr, decay, iterations + 1.0)  # the bookkeeping kernel advances the count

    # ------------------------------------------------------------------ graphs
    def _body(self, buffers, precision):
        return lambda: self._run(buffers, precision)

    def _graph(self, key, body):
        """A replay of ``body`` (its CUDA graph), or ``body`` itself where capture fails."""
        try:
            replay = self.be._capture(body)
        except Exception as exc:  # a library that cannot be captured on this CUDA version
            _fallback_warning("captured", exc)
            return body
        if replay is not body:
            self._untried.add(key)
        return replay

    def _replay(self, key, buffers, replay, precision):
        """Replay a graph; its first launch (where newer CuPy instantiates the graph) may fail, and then this
        shape runs its launches without a graph from now on."""
        if key not in self._untried:
            replay()
            return
        self._untried.discard(key)
        try:
            replay()
        except Exception as exc:
            _fallback_warning("launched", exc)
            body = self._body(buffers, precision)
            self.shapes[key] = buffers, body
            body()

    def _run(self, b, precision):
        self._gradients(b, precision)
        self._update(b)

    def _gradients(self, b, precision):
        """Forward, loss, metric, the regularization losses (weights before the update) and backward:
        the data loss and accuracy in ``b.result``, the gradients in ``self.grads``."""
        be, plan = self.be, self.plan
        for k, p in enumerate(self.regularized):
            be._regularization_loss_into(p.value, b.result[2 + k, ...], p.l1, p.l2, b.work)
        a = b.x
        for (dense, kind, alpha), z, h in zip(plan, b.z, b.h):
            be._matmul(a, dense.W.value, z, b.work)
            if kind == "softmax":
                be._bias_activation_into(z, dense.b.value, z, "linear", 0.0)
                be._softmax_into(z, h)
            else:
                be._bias_activation_into(z, dense.b.value, h, kind, alpha)
            a = h
        out, y = a, b.y
        loss, accuracy = b.result[0, ...], b.result[1, ...]
        classes = plan.classifies
        be._loss_into("cce" if classes else "mse", out, y, loss, b.work)
        if self.model.batch_metric is not None:
            be._accuracy_into("categorical" if classes else "regression", out, y, accuracy, precision, b.work)
        be._loss_backward_into("softmax_cce" if classes else "mse", out, y, b.g[-1])
        for i in range(len(plan) - 1, -1, -1):
            dense = plan[i][0]
            be._matmul((b.x if i == 0 else b.h[i - 1]).T, b.g[i], dense.W.grad, b.work)
            be._column_sums_into(b.g[i], dense.b.grad)
            if i:
                _, kind, alpha = plan[i - 1]
                be._matmul(b.g[i], dense.W.value.T, b.g[i - 1], b.work)
                saved = b.z[i - 1] if kind in ("relu", "leaky_relu", "linear") else b.h[i - 1]
                be._activation_backward_into(kind, saved, b.g[i - 1], b.g[i - 1], alpha)

    def _update(self, b):
        """Regularization gradients, the non-finite check, the step's bookkeeping and the guarded updates."""
        be, plan = self.be, self.plan
        for p in self.regularized:
            be.regularization_backward(p.value, p.grad, p.l1, p.l2)
        be._flag_nonfinite_many(b.checked, self.nonfinite)
        be._step_bookkeeping(b.result, self.nonfinite, self.hyper, self.coeffs, self.totals, b.rows, self.betas)
        be._guarded_update_many(plan.update, self.update_tables, self.coeffs, self.nonfinite, self.consts)


def _fallback_warning(what, exc):
    warnings.warn(GraphCaptureWarning(
        f"a CUDA graph of the fused step could not be {what} ({type(exc).__name__}: {exc}); "
        "this batch shape runs its kernels without a graph"), stacklevel=4)
