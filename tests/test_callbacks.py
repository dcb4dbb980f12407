"""Callbacks: early stopping with bit-equal best weights, checkpoints, CSV logs, plateau reduction."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from nnbackends import Model, load_model
from nnbackends.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, ReLU, Softmax
from nnbackends.optimizers import SGD, Adam


def spiral_model(backend="numpy", optimizer=None, dtype="float32"):
    model = Model(backend=backend, seed=0, dtype=dtype)
    model.add(Dense(2, 16)), model.add(ReLU()), model.add(Dense(16, 3)), model.add(Softmax())
    return model.compile(optimizer=optimizer or Adam(0.05))


class WeightsPerEpoch(Callback):
    def on_train_begin(self, logs=None):
        self.weights, self.logs = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch], self.logs[epoch] = self.model.get_weights(), dict(logs)


def data():
    X, y = spiral_data(40, 3)
    X_val, y_val = spiral_data(20, 3)
    return X, y, (X_val, y_val)


def _best_epoch(logs, key="val_loss"):
    return min(logs, key=lambda e: logs[e][key])


@pytest.mark.parametrize("ending", ["patience", "epochs"])
def test_restored_weights_are_bit_equal_to_the_best_epoch(backend, ending):
    X, y, val = data()
    model = spiral_model(backend, Adam(0.3))  # a rate high enough for val_loss to go up and down
    record = WeightsPerEpoch()
    stop = EarlyStopping(patience=3 if ending == "patience" else 1000, restore_best_weights=True)
    history = model.fit(X, y, epochs=40, batch_size=30, validation_data=val, verbose=0, callbacks=[record, stop])
    if ending == "patience":
        assert stop.stopped_epoch is not None and history.epochs < 40
        assert history.epochs - stop.best_epoch == 3
    else:
        assert stop.stopped_epoch is None and history.epochs == 40
    best = _best_epoch(record.logs)
    assert stop.best_epoch == best
    for got, want in zip(model.get_weights(), record.weights[best]):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("validation", [True, False], ids=["validation", "no-validation"])
def test_early_stopping_keeps_the_fused_step_and_its_runs(validation):
    """A callback that only needs epoch ends takes neither the fused step nor the runs of steps away:
    each epoch is one run (one compiled call), and the callback sees every epoch's end."""
    pytest.importorskip("numba")
    X, y, val = data()
    model = spiral_model("numba")
    model.fit(X, y, epochs=2, verbose=0, fused=True, validation_data=val, callbacks=[EarlyStopping()])
    step = model._fused_step
    calls = []

    class Counting(type(step)):
        def __call__(self, *a):
            calls.append("step")
            return super().__call__(*a)

        def run(self, X, y, orders, batch_size, rates):
            calls.append(("run", rates.size))
            return super().run(X, y, orders, batch_size, rates)

    step.__class__ = Counting
    stopper = EarlyStopping(monitor="val_loss" if validation else "loss", patience=10)
    history = model.fit(X, y, epochs=3, batch_size=100, verbose=0, validation_data=val if validation else None,
                        callbacks=[stopper])
    assert calls == [("run", 2)] * 3  # 120 rows in batches of 100: 2 steps an epoch, an epoch a run
    assert len(history["loss"]) == 3 and stopper.best == min(history["val_loss" if validation else "loss"])


def test_patience_zero_stops_at_the_first_epoch_without_improvement():
    X, y, val = data()
    model = spiral_model(optimizer=SGD(1e-9))
    stop = EarlyStopping(monitor="loss", patience=0, min_delta=10.0)  # only the first epoch counts as better
    history = model.fit(X, y, epochs=10, verbose=0, callbacks=[stop])
    assert history.epochs == 2 and stop.best_epoch == 1


def test_start_from_epoch_skips_early_epochs():
    X, y, val = data()
    stop = EarlyStopping(monitor="loss", patience=0, min_delta=10.0, start_from_epoch=4)
    history = spiral_model(optimizer=SGD(1e-9)).fit(X, y, epochs=10, verbose=0, callbacks=[stop])
    assert history.epochs == 6 and stop.best_epoch == 5


def test_a_missing_monitor_names_the_keys_there_are():
    X, y, _ = data()
    with pytest.raises(KeyError, match=r"'val_loss'.*validation_data.*accuracy, data_loss, loss"):
        spiral_model().fit(X, y, epochs=2, verbose=0, callbacks=[EarlyStopping()])


@pytest.mark.parametrize("bad", [lambda: EarlyStopping(patience=-1), lambda: EarlyStopping(mode="best"),
                                 lambda: ReduceLROnPlateau(factor=1.5), lambda: EarlyStopping(min_delta=-0.1)])
def test_bad_settings_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()


def test_checkpoint_saves_each_epoch_atomically_and_the_best_only(tmp_path, monkeypatch):
    X, y, val = data()
    model = spiral_model(optimizer=Adam(0.3))
    record = WeightsPerEpoch()
    every = ModelCheckpoint(tmp_path / "every-{epoch}.safetensors")
    best = ModelCheckpoint(tmp_path / "best.safetensors", save_best_only=True)
    model.fit(X, y, epochs=12, batch_size=30, validation_data=val, verbose=0, callbacks=[record, every, best])
    assert sorted(p.name for p in tmp_path.glob("every-*")) == sorted(f"every-{e}.safetensors" for e in range(1, 13))
    for got, want in zip(load_model(tmp_path / "every-7.safetensors").get_weights(), record.weights[7]):
        assert got.tobytes() == want.tobytes()
    for got, want in zip(load_model(tmp_path / "best.safetensors").get_weights(), record.weights[_best_epoch(record.logs)]):
        assert got.tobytes() == want.tobytes()
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    X, y, val = data()
    path = tmp_path / "log.csv"
    history = spiral_model().fit(X, y, epochs=4, validation_data=val, verbose=0, callbacks=[CSVLogger(path)])
    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val_loss"]) for r in rows] == history["val_loss"]
    assert [float(r["accuracy"]) for r in rows] == history["accuracy"]


def test_reduce_lr_on_plateau_lowers_the_rate_to_its_floor():
    X, y, _ = data()
    model = spiral_model(optimizer=SGD(1e-9))
    plateau = ReduceLROnPlateau("loss", factor=0.5, patience=1, min_lr=2e-10, min_delta=10.0)
    model.fit(X, y, epochs=8, verbose=0, callbacks=[plateau])
    model.optimizer.pre_update()
    assert model.optimizer.current_learning_rate == pytest.approx(2e-10)
    model = spiral_model(optimizer=SGD(1e-9))
    model.fit(X, y, epochs=4, verbose=0, callbacks=[ReduceLROnPlateau("loss", factor=0.5, patience=2, min_delta=10.0)])
    assert model.optimizer.lr_scale == 0.5  # epochs 2 and 3 without improvement; epoch 4 starts a new wait


def test_a_callback_can_stop_training_and_see_batches():
    class StopAfterFiveSteps(Callback):
        def on_train_begin(self, logs=None):
            self.losses = []

        def on_batch_end(self, batch, logs=None):
            self.losses.append(logs["loss"])
            if len(self.losses) == 5:
                self.model.stop_training = True

    X, y, _ = data()
    cb = StopAfterFiveSteps()
    history = spiral_model().fit(X, y, epochs=10, batch_size=40, verbose=0, callbacks=[cb])
    assert history.steps == 5 and len(cb.losses) == 5 and all(np.isfinite(cb.losses))
