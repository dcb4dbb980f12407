"""The training loop of ``Model.fit``, in parts with one job each.

* ``BatchSource``: which rows each step trains on (order, shuffling, gathering, each step's share).
* ``EpochSums``: the epoch's loss, regularization and metric sums, kept on the device.
* ``diverged``, ``interruption``: the errors raised when a step was not finite, or after Ctrl-C.
* ``Trainer``: runs epochs of steps, with Ctrl-C deferred to step boundaries
  (``interrupts.deferred_interrupt``), and reports each epoch to the progress
  display, the ``History`` and the callbacks; after a Ctrl-C it raises
  ``TrainingInterrupted`` or returns the ``History`` (``on_interrupt``).

A step is ``step(xb, yb[, wb]) -> (data_loss, accuracy, finite)``: the backend's fused
step or the model's per-layer ``train_step``; the trainer calls the optimizer's
``pre_update``/``post_update`` around it.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .callbacks import wants_batches
from .distributed import as_comm
from .errors import TrainingDivergedError, TrainingInterrupted
from .history import History
from .interrupts import deferred_interrupt
from .optimizers import Optimizer
from .validation import check_choice

#: What ``fit`` does after Ctrl-C stopped it: raise ``TrainingInterrupted``, or return the History.
ON_INTERRUPT = ("raise", "return")


class BatchSource:
    """The batches of one epoch of ``arrays`` (backend arrays of equal length: features, targets and
    optionally sample weights), in order or shuffled by ``rng``."""

    def __init__(self, backend, arrays, batch_size, shuffle, rng, rows=None):
        self.backend, self.arrays, self.rng = backend, tuple(arrays), rng
        self.n = self.arrays[0].shape[0] if rows is None else rows  # an epoch's rows (of all ranks, distributed)
        self.batch_size = self.n if batch_size is None else min(batch_size, self.n)
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        self.shuffle = shuffle and self.steps_per_epoch > 1
        weights = self.arrays[2] if len(self.arrays) > 2 else None
        self.total_weight = None if weights is None else weights.sum()

    def orders(self, epochs):
        """The row orders of the next ``epochs`` epochs, shape (epochs, n), or an empty array when
        not shuffling (the generator is drawn from exactly as ``batches`` draws from it)."""
        if not self.shuffle:
            return np.empty((0, 0), np.int64)
        return np.stack([self.rng.permutation(self.n) for _ in range(epochs)])

    def shares(self) -> np.ndarray:
        """Each step's part of an epoch's rows."""
        rows = np.full(self.steps_per_epoch, self.batch_size)
        rows[-1] = self.n - self.batch_size * (self.steps_per_epoch - 1)
        return rows / self.n

    def batches(self):
        """Yield ``(share, batch)`` for each step of an epoch (a new order each epoch when shuffling):
        ``batch`` a tuple like ``arrays``, ``share`` its part of the epoch's rows or sample weight."""
        if self.steps_per_epoch == 1:  # the full batch, as it is
            yield 1.0, self.arrays
            return
        order = self.backend.asarray(self.rng.permutation(self.n)) if self.shuffle else None
        for s in range(self.steps_per_epoch):
            rows = slice(s * self.batch_size, (s + 1) * self.batch_size)
            if order is not None:  # gather a batch at a time: no shuffled copy of the whole data
                rows = order[rows]
            batch = tuple([a[rows] for a in self.arrays])
            if self.total_weight is None:
                yield batch[0].shape[0] / self.n, batch
            else:
                yield batch[2].sum() / self.total_weight, batch


class RunLength:
    """How many epochs the next run takes: runs grow while they are short and shrink when long,
    so that Ctrl-C is seen within about ``longest`` seconds; a run's row orders (``max_rows``
    int64 entries, 128 KiB) stay small, so a long fit uses no more memory than a short one."""

    def __init__(self, shortest=0.02, longest=0.1, max_rows=1 << 14):
        self.shortest, self.longest, self.max_rows = shortest, longest, max_rows
        self.epochs, self.last = 1, 0.0

    def next(self, remaining, rows_per_epoch) -> int:
        return max(1, min(self.epochs, remaining, self.max_rows // max(1, rows_per_epoch)))

    def done(self, elapsed):
        seconds, self.last = elapsed - self.last, elapsed
        if seconds < self.shortest:
            self.epochs *= 2
        elif seconds > self.longest and self.epochs > 1:
            self.epochs //= 2


class EpochSums:
    """Sums of the per-step data loss, regularization loss and metric, each weighted by its step's share.

    Terms are added as backend 0-d arrays, so nothing leaves the device until ``logs``.
    """

    __slots__ = ("loss", "regularization", "accuracy")

    def __init__(self):
        self.loss = self.regularization = self.accuracy = 0.0

    def add(self, weight, data_loss, regularization=None, accuracy=None):
        self.loss = self.loss + data_loss * weight
        if regularization is not None:
            self.regularization = self.regularization + regularization * weight
        if accuracy is not None:
            self.accuracy = self.accuracy + accuracy * weight

    def logs(self, backend, metric) -> dict:
        """The epoch's logs; ``metric`` (or None) is reported under its name, from its own sum or the data loss."""
        def host(v):  # sums stay Python floats when nothing was added to them
            return v if isinstance(v, float) else backend.to_float(v)

        data_loss, reg_loss = host(self.loss), host(self.regularization)
        logs = {"loss": data_loss + reg_loss, "data_loss": data_loss, "regularization_loss": reg_loss}
        if metric is not None:
            logs[metric.name] = metric.value(data_loss if metric.kernel is None else host(self.accuracy))
        return logs


def diverged(model, epoch, step, history, data_loss) -> TrainingDivergedError:
    """The error for a step whose loss or gradients were not finite (its update was not applied);
    ``data_loss`` is the step's loss, a host number or a 0-d backend array."""
    loss = float(data_loss) if isinstance(data_loss, (int, float, np.floating)) else model.backend.to_float(data_loss)
    what = "the loss" if not math.isfinite(loss) else "a gradient"
    return TrainingDivergedError(
        f"Training diverged at epoch {epoch}, step {step}: {what} became NaN or Inf "
        f"(loss {loss}). The model keeps the weights of the last finite step; "
        f"try a lower learning rate (now {model.optimizer.current_learning_rate:g}).",
        epoch=epoch, step=step, history=history,
    )


def interruption(history) -> TrainingInterrupted:
    """The error raised after Ctrl-C stopped training (the callbacks have ended by then)."""
    return TrainingInterrupted(
        f"Training interrupted by Ctrl-C after {history.epochs} completed epochs ({history.steps} steps); "
        "the model keeps the weights of the last completed step. Pass fit(on_interrupt='return') to get "
        "the History back instead.", history=history)


class Trainer:
    """One ``fit`` call: trains ``model`` with ``step`` on the batches of ``source``.

    ``validation``: device arrays ``(x, y)`` evaluated after each epoch, or None;
    ``progress``: the display from ``progress.make_progress``; ``callbacks``: a list of
    ``callbacks.Callback``. Epochs given to callbacks count over the model's life
    (``model.epochs_trained``), so a resumed run goes on counting. ``comm``: the
    communicator of a distributed fit (Ctrl-C then stops every rank at the same step).
    ``on_interrupt``: after Ctrl-C, ``"raise"`` ``TrainingInterrupted`` or ``"return"`` the History
    (``history.interrupted`` set either way).
    """

    def __init__(self, model, step, source, progress, validation=None, callbacks=(), comm=None,
                 on_interrupt="raise"):
        self.on_interrupt = check_choice("on_interrupt", on_interrupt, ON_INTERRUPT)
        self.model, self.step, self.source, self.progress = model, step, source, progress
        self.validation = validation
        self.comm = as_comm(comm)
        self.callbacks = list(callbacks)
        self.batch_callbacks = [c for c in self.callbacks if wants_batches([c])]
        self.deferred = getattr(step, "defers_finite_check", False) and not self.batch_callbacks
        self.regularized = [p for p in model.params() if p.regularized]
        self.history = History()

    def run(self, epochs) -> History:
        model, history = self.model, self.history
        model.stop_training = False
        for c in self.callbacks:
            c.set_model(model)
            c.on_train_begin()
        runs = RunLength() if self.runs_epochs() else None
        per_epoch = bool(self.callbacks) or self.validation is not None  # then each run is one epoch
        self.start = time.perf_counter()
        # A step that overflows raises TrainingDivergedError; NumPy's warnings would only repeat it.
        with deferred_interrupt() as interrupted, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            interrupted = self.comm.agreed(interrupted)
            epoch = 1
            while epoch <= epochs:
                if runs is None:
                    for c in self.callbacks:
                        c.on_epoch_begin(model.epochs_trained + 1)
                    sums = self.train_epoch(epoch, interrupted)
                    if sums is not None:
                        self.end_epoch(epoch, sums)
                    epoch += 1
                else:
                    count = 1 if per_epoch else runs.next(epochs - epoch + 1, self.source.n)
                    for c in self.callbacks:
                        c.on_epoch_begin(model.epochs_trained + 1)
                    self.train_run(epoch, count)
                    epoch += count
                    runs.done(time.perf_counter() - self.start)
                if interrupted():
                    history.interrupted = True
                    self.progress.interrupted(epoch - 1 if runs else epoch)
                    break
                if model.stop_training:
                    break
        self.progress.close()
        for c in self.callbacks:
            c.on_train_end()
        if history.interrupted and self.on_interrupt == "raise":
            raise interruption(history)
        return history

    def runs_epochs(self) -> bool:
        """Whether whole epochs go to the step in one call: it can (``step.run``) and nothing needs
        Python between its steps (no callback with ``on_batch_end``, an optimizer whose
        ``pre_update`` and ``post_update`` are the base class's). With epoch-end callbacks or
        validation data, each run is one epoch."""
        opt = type(self.model.optimizer)
        hooks = opt.pre_update is Optimizer.pre_update and opt.post_update is Optimizer.post_update
        return hasattr(self.step, "run") and hooks and not self.batch_callbacks

    def train_run(self, first_epoch, count):
        """``count`` epochs in one call of ``step.run``; each completed epoch is reported as usual."""
        model, opt, source = self.model, self.model.optimizer, self.source
        steps = source.steps_per_epoch
        rates = opt.rates(count * steps)
        done, losses, accs, regs = self.step.run(*source.arrays[:2], source.orders(count), source.batch_size,
                                                 rates)
        opt.iterations += done
        opt.current_learning_rate = float(rates[min(done, rates.size - 1)])
        self.history.steps += done
        shares = source.shares()
        for e in range(done // steps):
            part = slice(e * steps, (e + 1) * steps)
            sums = EpochSums()  # the regularization losses are 0 where nothing is regularized
            sums.add(1.0, float(losses[part] @ shares), float(regs[part] @ shares), float(accs[part] @ shares))
            self.end_epoch(first_epoch + e, sums)
        if done < rates.size:
            epoch, step = first_epoch + done // steps, done % steps + 1
            raise diverged(model, epoch, step, self.history, losses[done])

    def train_epoch(self, epoch, interrupted) -> EpochSums | None:
        """Every step of one epoch; None when Ctrl-C cut it short."""
        if self.deferred:
            return self.train_epoch_deferred(epoch, interrupted)
        model, opt, history = self.model, self.model.optimizer, self.history
        sums = EpochSums()
        steps = 0
        for share, batch in self.source.batches():
            opt.pre_update()
            reg = model.regularization_loss(self.regularized) if self.regularized else None  # weights before
            data_loss, accuracy, finite = self.step(*batch)
            steps += 1
            if not finite:
                raise diverged(model, epoch, steps, history, data_loss)
            opt.post_update()
            history.steps += 1
            sums.add(share, data_loss, reg, accuracy)
            for c in self.batch_callbacks:
                c.on_batch_end(steps - 1, {"loss": model.backend.to_float(data_loss), "size": batch[0].shape[0]})
            if interrupted() or model.stop_training:
                break
        return sums if steps == self.source.steps_per_epoch else None

    def train_epoch_deferred(self, epoch, interrupted) -> EpochSums | None:
        """An epoch of a step that keeps its sums and non-finite flag on the device (``step.queue``
        per batch, one host read in ``step.end_epoch``). After a step that was not finite no
        update changes anything, so the error raised here keeps the weights of the last finite step."""
        model, opt, history, step = self.model, self.model.optimizer, self.history, self.step
        first = opt.iterations
        steps = 0
        for _, batch in self.source.batches():
            opt.pre_update()
            step.queue(*batch)
            opt.post_update()
            steps += 1
            if interrupted() or model.stop_training:
                break
        totals = step.end_epoch()
        if totals.failed_iteration is not None:
            bad = totals.failed_iteration - first + 1  # the step of this epoch, from 1
            opt.iterations = totals.failed_iteration  # neither the bad step nor the no-op ones after it count
            history.steps += bad - 1
            raise diverged(model, epoch, bad, history, totals.failed_loss)
        history.steps += steps
        if steps != self.source.steps_per_epoch:
            return None
        sums = EpochSums()
        sums.add(1.0, totals.data_loss, totals.regularization, totals.accuracy)
        return sums

    def end_epoch(self, epoch, sums):
        model, history = self.model, self.history
        seconds = time.perf_counter() - self.start
        logs = sums.logs(model.backend, model.metric)
        if self.validation is not None:
            logs.update({"val_" + k: v for k, v in model._evaluate_device(*self.validation).items()})
        history.append(logs)
        history.seconds = seconds
        if epoch == 1:
            history.first_epoch_seconds = seconds
        self.progress.epoch_end(epoch, logs)
        model.epochs_trained += 1
        for c in self.callbacks:
            c.on_epoch_end(model.epochs_trained, logs)
