"""What ``Model.fit(comm=...)`` does with a communicator of several ranks: data-parallel training.

``batch_size`` is the global batch. Every rank draws the same shuffled order
of all rows from one generator (rank 0's, broadcast), and each global batch is
split between the ranks (``ShareSource``):

* every rank passed the whole data set (``sharded=False``): rank ``r`` takes the
  ``r``-th of ``size`` near-equal contiguous parts of each batch;
* each rank passed only its own rows (``sharded=True``): the rows of all ranks,
  concatenated in rank order, are the data set; a rank takes the rows of each
  batch that it holds, so the parts may be of any sizes (even empty).

Each rank computes the gradient of its share's mean loss, weighted by
``share / batch`` rows, and one sum over the ranks (``comm.sum_inplace``) gives
every rank the gradient of the global batch's mean loss, with its loss and
accuracy in the same buffer. Regularization is added once: after the sum on the
fused step, or as part of each rank's weighted gradient (the weights sum to 1)
on the per-layer path. Every rank then applies the same update, so N ranks
train what one process trains with the same ``batch_size`` on the concatenated
data, up to the order of floating-point sums. Since the summed gradients are the
same on every rank, so is the finiteness check: every rank raises
``TrainingDivergedError`` at the same step with the same kept weights.

At the start of each ``fit`` the root's parameters, optimizer state and step
count are broadcast, and the arguments are checked to agree (``MismatchError``).
Dropout draws its masks from a generator of its own on each rank, so runs with
dropout are not equal to one process.
"""
from __future__ import annotations

import numpy as np

from .distributed import MismatchError
from .layers import Dropout
from .metrics import Metric
from .trainer import BatchSource


def prepare(model, comm, x, y, epochs, batch_size, shuffle, sharded, step, fused):
    """``(source, step)`` for a distributed fit of ``model``: checks, broadcasts, shares and the summed step."""
    check_agreement(model, comm, x, epochs, batch_size, shuffle, sharded, fused)
    broadcast_state(model, comm)
    if any(isinstance(layer, Dropout) and layer.rate for layer in model.layers):
        seed = model.rng.integers(2**63)  # the same on every rank; each rank then has its own mask stream
        for layer in model.layers:
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng([seed, comm.rank])
    source = ShareSource(model.backend, x, y, batch_size, shuffle, model.rng, comm, sharded)
    return source, summed_step(model, comm, source, step)


def summed_step(model, comm, source, step):
    """The step that sums gradients over the ranks: the fused step's own (``summed_step``), or the per-layer one."""
    if step != model.train_step:
        return lambda xb, yb: step.summed_step(xb, yb, source.rows_in_step, comm)
    return LayerStep(model, comm, source)


def adapt_metric(metric, y_host, comm, sharded):
    """``metric.adapt`` on the targets of all ranks (gathered only for a metric that learns from them)."""
    if sharded and comm.size > 1 and type(metric).adapt is not Metric.adapt:
        y_host = np.concatenate(comm.allgather(y_host))
    metric.adapt(y_host)


# ---------------------------------------------------------------------- agreement and the start state
def check_agreement(model, comm, x, epochs, batch_size, shuffle, sharded, fused):
    """``MismatchError`` on every rank when the ranks' models or ``fit`` arguments differ."""
    mine = {
        "backend": model.backend.name,
        "layers": [repr(layer) for layer in model.layers],
        "dtype": model.dtype,
        "loss": model.loss.name,
        "optimizer": repr(model.optimizer),
        "metric": repr(model.metric and model.metric.config()),
        "classes": model.classes_,
        "epochs": epochs,
        "batch_size": batch_size,
        "shuffle": bool(shuffle),
        "sharded": bool(sharded),
        "fused": fused,
        "features": tuple(x.shape[1:]),
    }
    if not sharded:
        mine["rows"] = int(x.shape[0])
    everyone = comm.allgather(mine)
    differing = [key for key in mine if any(other[key] != everyone[0][key] for other in everyone)]
    if differing:
        detail = "; ".join(f"{key}: " + ", ".join(f"rank {r} {other[key]!r}" for r, other in enumerate(everyone))
                           for key in differing)
        hint = " (each rank holding only its own rows? pass sharded=True)" if "rows" in differing else ""
        raise MismatchError(f"fit(comm=...) needs the same model and arguments on every rank, but they "
                            f"differ in {detail}{hint}.")


def broadcast_state(model, comm):
    """Give every rank the root's parameters, optimizer state, step count and generator state."""
    be = model.backend
    arrays = [a for p in model.params() for a in (p.value, *(p.state[k] for k in sorted(p.state)))]
    flat = np.concatenate([np.asarray(be.to_numpy(a)).reshape(-1) for a in arrays]).astype(model.dtype)
    comm.broadcast_inplace(flat)
    start = 0
    for a in arrays:
        a[...] = be.asarray(flat[start:start + a.size].reshape(a.shape), model.dtype)
        start += a.size
    opt = model.optimizer
    shared = comm.bcast({"iterations": opt.iterations, "rng": model.rng.bit_generator.state})
    opt.iterations = shared["iterations"]
    model.rng.bit_generator.state = shared["rng"]


# ---------------------------------------------------------------------- the batches
class ShareSource(BatchSource):
    """This rank's share of every global batch; ``rows_in_step``: the size of the global batch of the latest."""

    def __init__(self, backend, x, y, batch_size, shuffle, rng, comm, sharded):
        counts = comm.allgather(int(x.shape[0])) if sharded else [int(x.shape[0])] * comm.size
        self.comm, self.sharded = comm, sharded
        self.offset = sum(counts[:comm.rank]) if sharded else 0  # where this rank's rows start in the data set
        self.local_rows = int(x.shape[0])
        super().__init__(backend, (x, y), batch_size, shuffle, rng, rows=sum(counts) if sharded else None)
        self.rows_in_step = 0

    def batches(self):
        """Yield ``(share of the epoch, (xb, yb))``: the global batch's part of the epoch, this rank's rows of it."""
        order, spans = self._epoch()
        device_order = None if order is None else self.backend.asarray(order)
        x, y = self.arrays
        for rows, (lo, hi) in spans:
            self.rows_in_step = rows
            take = slice(lo, hi) if device_order is None else device_order[lo:hi]
            yield rows / self.n, (x[take], y[take])

    def _epoch(self):
        """``(order, spans)``: host indices of this rank's rows in the order it trains them (None: in
        order, take slices), and per step ``(rows of the global batch, (start, stop) in that order)``."""
        n, batch = self.n, self.batch_size
        bounds = list(range(0, n, batch)) + [n]
        order = self.rng.permutation(n) if self.shuffle else None  # the same on every rank
        if not self.sharded:
            r = self.comm.rank
            spans = []
            for lo, hi in zip(bounds, bounds[1:]):
                parts = share_bounds(hi - lo, self.comm.size)
                spans.append((hi - lo, (lo + parts[r], lo + parts[r + 1])))
            return order, spans
        lo, hi = self.offset, self.offset + self.local_rows
        if order is None:
            positions, local = np.arange(lo, hi), None
        else:
            positions = np.flatnonzero((order >= lo) & (order < hi))
            local = order[positions] - lo
        cuts = np.searchsorted(positions, bounds)
        return local, [(b - a, (int(c), int(d))) for a, b, c, d in zip(bounds, bounds[1:], cuts, cuts[1:])]


# ---------------------------------------------------------------------- the per-layer step
class LayerStep:
    """The per-layer path with the gradients summed across ranks, for any backend.

    The weighted gradients and the share's loss and accuracy go to one host buffer
    (``Backend.to_numpy``), are summed over the ranks, and come back as the
    parameters' gradients (``Backend.asarray``) before the finiteness check and update.
    """

    def __init__(self, model, comm, source):
        self.model, self.comm, self.source = model, comm, source
        self.params = model.params()
        self.bounds = np.cumsum([0] + [int(np.prod(p.value.shape)) for p in self.params])
        self.buffer = np.zeros(self.bounds[-1] + 2, model.dtype)  # the gradients, then loss and accuracy

    def __call__(self, xb, yb):
        model, be, buffer = self.model, self.model.backend, self.buffer
        rows = xb.shape[0]
        if rows:
            weight = rows / self.source.rows_in_step
            data_loss, accuracy = model.compute_gradients(xb, yb)
            for p, lo, hi in zip(self.params, self.bounds, self.bounds[1:]):
                np.multiply(np.asarray(be.to_numpy(p.grad)).reshape(-1), weight, out=buffer[lo:hi])
            buffer[-2] = be.to_float(data_loss) * weight
            buffer[-1] = be.to_float(accuracy) * weight if accuracy is not None else 0.0
        else:  # an empty share adds nothing
            buffer[:] = 0
        self.comm.sum_inplace(buffer)
        for p, lo, hi in zip(self.params, self.bounds, self.bounds[1:]):
            p.grad = be.asarray(buffer[lo:hi].reshape(p.value.shape), model.dtype)
        data_loss = be.asarray(np.asarray(buffer[-2]))
        accuracy = be.asarray(np.asarray(buffer[-1], np.float64)) if model.batch_metric else None
        if not np.isfinite(buffer).all():  # the same buffer, so the same answer, on every rank
            return data_loss, accuracy, False
        for p in self.params:
            model.optimizer.update(p)
        return data_loss, accuracy, True


def share_bounds(n, size):
    """The ``size + 1`` bounds of ``size`` near-equal contiguous parts of ``n`` rows."""
    return [n * r // size for r in range(size + 1)]
