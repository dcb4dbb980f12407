"""The training loop of ``Model.fit``, in parts with one job each.

* ``BatchSource``: which rows each step trains on (order, shuffling, gathering).
* ``EpochSums``: the epoch's loss, regularization and metric sums, kept on the device.
* ``diverged``: the error raised when a step was not finite.
* ``Trainer``: runs epochs of steps, with Ctrl-C deferred to step boundaries
  (``interrupts.deferred_interrupt``), and reports each epoch to the progress
  display and the ``History``.

A step is ``step(xb, yb) -> (data_loss, accuracy, finite)``: the backend's fused
step or the model's per-layer ``train_step``; the trainer calls the optimizer's
``pre_update``/``post_update`` around it.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .distributed import as_comm
from .errors import TrainingDivergedError
from .history import History
from .interrupts import deferred_interrupt


class BatchSource:
    """The batches of one epoch of ``(x, y)``, both backend arrays, in order or shuffled by ``rng``."""

    def __init__(self, backend, x, y, batch_size, shuffle, rng, rows=None):
        self.backend, self.x, self.y, self.rng = backend, x, y, rng
        self.n = x.shape[0] if rows is None else rows  # rows of an epoch (of all ranks, in a distributed fit)
        self.batch_size = self.n if batch_size is None else min(batch_size, self.n)
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        self.shuffle = shuffle and self.steps_per_epoch > 1

    def batches(self):
        """Yield ``(xb, yb)`` for each step of an epoch (a new order each epoch when shuffling)."""
        order = self.backend.asarray(self.rng.permutation(self.n)) if self.shuffle else None
        for s in range(self.steps_per_epoch):
            rows = slice(s * self.batch_size, (s + 1) * self.batch_size)
            if order is not None:  # gather a batch at a time: no shuffled copy of the whole data
                rows = order[rows]
            yield self.x[rows], self.y[rows]

    def rows_in(self, xb) -> int:
        """The rows of the step whose batch (on this rank: whose share) is ``xb``."""
        return xb.shape[0]


class EpochSums:
    """Sample-weighted sums of the per-step data loss, regularization loss and metric.

    Terms are added as backend 0-d arrays, so nothing leaves the device until ``logs``.
    """

    def __init__(self, n_samples):
        self.n = n_samples
        self.loss = self.regularization = self.accuracy = 0.0

    def add(self, rows, data_loss, regularization=None, accuracy=None):
        weight = rows / self.n
        self.loss = self.loss + data_loss * weight
        if regularization is not None:
            self.regularization = self.regularization + regularization * weight
        if accuracy is not None:
            self.accuracy = self.accuracy + accuracy * weight

    def logs(self, backend, with_accuracy) -> dict:
        def host(v):  # sums stay Python floats when nothing was added to them
            return v if isinstance(v, float) else backend.to_float(v)

        data_loss, reg_loss = host(self.loss), host(self.regularization)
        logs = {"loss": data_loss + reg_loss, "data_loss": data_loss, "regularization_loss": reg_loss}
        if with_accuracy:
            logs["accuracy"] = host(self.accuracy)
        return logs


def diverged(model, epoch, step, history, data_loss) -> TrainingDivergedError:
    """The error for a step whose loss or gradients were not finite (its update was not applied)."""
    loss = model.backend.to_float(data_loss)
    what = "the loss" if not math.isfinite(loss) else "a gradient"
    return TrainingDivergedError(
        f"Training diverged at epoch {epoch}, step {step}: {what} became NaN or Inf "
        f"(loss {loss}). The model keeps the weights of the last finite step; "
        f"try a lower learning rate (now {model.optimizer.current_learning_rate:g}).",
        epoch=epoch, step=step, history=history,
    )


class Trainer:
    """One ``fit`` call: trains ``model`` with ``step`` on the batches of ``source``.

    ``validation``: device arrays ``(x, y)`` evaluated after each epoch, or None;
    ``progress``: the display from ``progress.make_progress``; ``comm``: the
    communicator of a distributed fit (Ctrl-C then stops every rank at the same step).
    """

    def __init__(self, model, step, source, progress, validation=None, comm=None):
        self.model, self.step, self.source, self.progress = model, step, source, progress
        self.validation = validation
        self.comm = as_comm(comm)
        self.regularized = [p for p in model.params() if p.regularized]
        self.history = History()

    def run(self, epochs) -> History:
        history = self.history
        start = time.perf_counter()
        # A step that overflows raises TrainingDivergedError; NumPy's warnings would only repeat it.
        with deferred_interrupt() as interrupted, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            interrupted = self.comm.agreed(interrupted)
            for epoch in range(1, epochs + 1):
                sums = self.train_epoch(epoch, interrupted)
                if sums is not None:
                    self.end_epoch(epoch, sums, time.perf_counter() - start)
                if interrupted():
                    history.interrupted = True
                    self.progress.interrupted(epoch)
                    break
        self.progress.close()
        return history

    def train_epoch(self, epoch, interrupted) -> EpochSums | None:
        """Every step of one epoch; None when Ctrl-C cut it short."""
        model, opt, history = self.model, self.model.optimizer, self.history
        sums = EpochSums(self.source.n)
        steps = 0
        for xb, yb in self.source.batches():
            opt.pre_update()
            reg = model.regularization_loss(self.regularized) if self.regularized else None  # weights before
            data_loss, accuracy, finite = self.step(xb, yb)
            steps += 1
            if not finite:
                raise diverged(model, epoch, steps, history, data_loss)
            opt.post_update()
            history.steps += 1
            sums.add(self.source.rows_in(xb), data_loss, reg, accuracy)
            if interrupted():
                break
        return sums if steps == self.source.steps_per_epoch else None

    def end_epoch(self, epoch, sums, seconds):
        model, history = self.model, self.history
        logs = sums.logs(model.backend, model.metric is not None)
        if self.validation is not None:
            logs.update({"val_" + k: v for k, v in model._evaluate_device(*self.validation).items()})
        history.append(logs)
        history.seconds = seconds
        if epoch == 1:
            history.first_epoch_seconds = seconds
        self.progress.epoch_end(epoch, logs)
