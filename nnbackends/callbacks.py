"""Callbacks: code that runs at fixed points of ``Model.fit`` (Keras's shape).

A callback sees the model as ``self.model``; setting ``model.stop_training = True``
ends training after the current epoch. Only callbacks that override
``on_batch_end`` make the trainer report single steps (which reads each step's
loss back to the host); the others keep the fused step as it is. Callbacks that
write files check in ``on_train_begin`` that they can, before the first epoch.
"""
from __future__ import annotations

import csv
import math
import os

from .model_files import check_output_path
from .validation import check_choice, check_nonnegative_float, check_nonnegative_int

MODES = ("auto", "min", "max")


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        """``epoch`` counts from 1 over the model's life (a resumed run goes on counting)."""

    def on_batch_end(self, batch, logs=None):
        """``logs``: the step's ``loss`` (data loss) and ``size`` (rows)."""


def wants_batches(callbacks) -> bool:
    """Whether any callback overrides ``on_batch_end``."""
    return any(type(c).on_batch_end is not Callback.on_batch_end for c in callbacks)


def monitored(logs, monitor, who):
    """``logs[monitor]``; a KeyError naming the keys there are when it is missing."""
    if monitor not in logs:
        hint = " (val_ keys need validation_data or validation_split)" if monitor.startswith("val_") else ""
        raise KeyError(f"{who} monitors {monitor!r}, which the epoch logs do not have{hint}; "
                       f"they have: {', '.join(sorted(logs))}.")
    return logs[monitor]


class _Monitor(Callback):
    """Tracks the best value of a logged quantity; ``mode="auto"`` maximizes accuracies, minimizes the rest."""

    def __init__(self, monitor, mode, min_delta=0.0):
        self.monitor = monitor
        mode = check_choice("mode", mode, MODES)
        self.maximize = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.min_delta = check_nonnegative_float("min_delta", min_delta)
        self.forget_best()

    def forget_best(self):
        self.best = -math.inf if self.maximize else math.inf

    def improved(self, logs) -> bool:
        """Whether ``logs`` beat the best so far by more than ``min_delta`` (and if so, record it)."""
        value = monitored(logs, self.monitor, type(self).__name__)
        better = value - self.min_delta > self.best if self.maximize else value + self.min_delta < self.best
        if better:
            self.best = value
        return better


class EarlyStopping(_Monitor):
    """Stop after ``patience`` epochs in a row without an improvement of ``monitor`` (0: the first).

    With ``restore_best_weights`` the model ends with the weights of its best
    epoch whether patience or the epoch count ended training (bit-equal copies).
    Epochs before ``start_from_epoch`` (counted from 0, as in Keras) are not judged.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", restore_best_weights=False,
                 start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience = check_nonnegative_int("patience", patience)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = check_nonnegative_int("start_from_epoch", start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait, self.seen = 0, 0
        self.forget_best()
        self.best_epoch, self.best_weights, self.stopped_epoch = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        self.seen += 1
        if self.seen <= self.start_from_epoch:
            return
        if self.improved(logs):
            self.wait, self.best_epoch = 0, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def checkpoint_path(pattern, epoch, what="ModelCheckpoint path") -> str:
    """``pattern`` with ``{epoch}`` replaced by ``epoch``; a ValueError naming ``what`` for other braces."""
    try:
        return pattern.format(epoch=epoch)
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{what} {pattern!r} has braces other than {{epoch}}; write {{{{ and }}}} "
                         "for literal braces.") from None


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch to ``path`` (``{epoch}`` is replaced), each write atomic;
    with ``save_best_only``, only when ``monitor`` improved."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        super().__init__(monitor, mode)
        self.path = os.fspath(path)
        checkpoint_path(self.path, 1)
        self.save_best_only = bool(save_best_only)

    def on_train_begin(self, logs=None):
        if self.model.comm.is_root:  # in a distributed fit, the root writes (Model.save)
            check_output_path(checkpoint_path(self.path, self.model.epochs_trained + 1), "ModelCheckpoint path")

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only and not self.improved(logs):
            return
        self.model.save(checkpoint_path(self.path, epoch))


class CSVLogger(Callback):
    """One row per epoch (``epoch`` and every log) in ``path``; ``append`` goes on an existing file."""

    def __init__(self, path, append=False):
        self.path, self.append = os.fspath(path), bool(append)
        self.keys = None

    def on_train_begin(self, logs=None):
        self.keys = None
        self.writes = self.model.comm.is_root  # in a distributed fit, the root writes the one file
        if not self.writes:
            return
        check_output_path(self.path, "CSVLogger path", "log.csv")
        if not self.append:
            with open(self.path, "w", newline=""):
                pass

    def on_epoch_end(self, epoch, logs=None):
        if not self.writes:
            return
        new_file = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if self.keys is None:
            self.keys = list(logs)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["epoch", *self.keys])
            writer.writerow([epoch, *(repr(float(logs[k])) if k in logs else "" for k in self.keys)])


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs in a row without an improvement
    of ``monitor``, not below ``min_lr`` (through the optimizer's ``lr_scale``, so it works on schedules too)."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0.0, mode="auto", min_delta=0.0):
        super().__init__(monitor, mode, min_delta)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau factor must be in (0, 1), got {factor!r}.")
        self.factor = float(factor)
        self.patience = check_nonnegative_int("patience", patience)
        self.min_lr = check_nonnegative_float("min_lr", min_lr)

    def on_train_begin(self, logs=None):
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.improved(logs):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            opt = self.model.optimizer
            rate = opt.schedule(opt.iterations)
            lowest = self.min_lr / rate if rate > 0 else 0.0
            opt.lr_scale = max(opt.lr_scale * self.factor, min(lowest, opt.lr_scale))
            self.wait = 0
