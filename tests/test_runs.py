"""Runs: the Numba fused step trains whole epochs in one compiled call, with the results of single steps."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

import nnbackends as nb
from nnbackends.callbacks import Callback
from nnbackends.layers import Dense, Linear, ReLU, Softmax, Tanh
from nnbackends.optimizers import SGD, Adam
from nnbackends.schedules import StepDecay
from nnbackends.trainer import RunLength

pytest.importorskip("numba", reason="runs are the Numba backend's")
from test_interrupt import READY, interrupt_when_ready  # noqa: E402


def classifier(dtype, optimizer, l2=0.0, width=16):
    model = nb.Model(backend="numba", seed=0, dtype=dtype)
    model.add(Dense(2, width, weight_regularizer_l2=l2)), model.add(Tanh())
    model.add(Dense(width, 3)), model.add(Softmax())
    return model.compile(optimizer=optimizer)


def regressor(dtype, optimizer, l2=0.0, width=16):
    model = nb.Model(backend="numba", seed=0, dtype=dtype)
    model.add(Dense(2, width, weight_regularizer_l2=l2)), model.add(ReLU())
    model.add(Dense(width, 1)), model.add(Linear())
    return model.compile(loss="mse", optimizer=optimizer)


class EachBatch(Callback):
    """A callback that sees every batch, so the trainer stays between steps (what it did before runs)."""

    def on_batch_end(self, batch, logs=None):
        pass


def step_by_step():
    return [EachBatch()]


CASES = {
    "full-batch": dict(build=classifier, optimizer=lambda: Adam(0.05, decay=1e-3), batch_size=None),
    "shuffled-minibatches": dict(build=classifier, optimizer=lambda: SGD(0.5, momentum=0.9), batch_size=64),
    "regularized-in-order": dict(build=classifier, optimizer=lambda: Adam(0.02), batch_size=50, l2=1e-3,
                                 shuffle=False),
    "scheduled-regression": dict(build=regressor, optimizer=lambda: SGD(StepDecay(0.05, 7, 0.5)), batch_size=40),
    "wide-on-blas": dict(build=classifier, optimizer=lambda: Adam(0.01), batch_size=128, width=256),
}


@pytest.mark.parametrize("case", list(CASES))
def test_runs_train_what_single_steps_train(case, dtype):
    c = CASES[case]
    X, labels = nb.datasets.spiral_data(100, 3)
    y = labels if c["build"] is classifier else np.sin(X[:, :1] * 3)
    trained = []
    for callbacks in ([], step_by_step()):
        model = c["build"](dtype, c["optimizer"](), c.get("l2", 0.0), c.get("width", 16))
        history = model.fit(X, y, epochs=30, batch_size=c["batch_size"], shuffle=c.get("shuffle", True),
                            verbose=0, callbacks=callbacks)
        trained.append((model, history))
    (run, run_history), (single, single_history) = trained
    for got, want in zip(run.get_weights(), single.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert run.optimizer.iterations == single.optimizer.iterations == run_history.steps
    assert run.optimizer.current_learning_rate == single.optimizer.current_learning_rate
    for key in single_history.history:
        got, want = np.asarray(run_history[key]), np.asarray(single_history[key])
        if key.endswith("r2"):  # 1 - loss / variance: its rounding is the loss's, relative to 1 - r2
            got, want = 1 - got, 1 - want
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == "float32" else 1e-12, err_msg=key)


def test_divergence_inside_a_run_reports_the_step_and_keeps_the_last_finite_weights():
    X, _ = nb.datasets.spiral_data(50, 3)
    y = X[:, :1].copy()
    X[7] = 1e30  # its squared error overflows float32: the step whose batch holds row 7 diverges
    errors, weights = [], []
    for callbacks in ([], step_by_step()):
        model = regressor("float32", SGD(0.01))
        with pytest.raises(nb.TrainingDivergedError) as info:
            model.fit(X, y, epochs=20, batch_size=32, verbose=0, callbacks=callbacks)
        errors.append((info.value.epoch, info.value.step, str(info.value), info.value.history.epochs))
        weights.append(model.get_weights())
    assert errors[0] == errors[1]
    for got, want in zip(*weights):
        np.testing.assert_array_equal(got, want)


def test_run_length_grows_while_runs_are_short_and_shrinks_when_long():
    runs = RunLength(shortest=0.02, longest=0.1, max_rows=1000)
    assert runs.next(50, 10) == 1
    runs.done(0.001), runs.done(0.002)
    assert runs.next(50, 10) == 4
    assert runs.next(3, 10) == 3  # never more than what is left
    assert runs.next(50, 400) == 2  # nor more orders than max_rows
    runs.done(0.5)
    assert runs.next(50, 10) == 2


RUN_SCRIPT = textwrap.dedent(f"""
    import json, sys
    import numpy as np
    import nnbackends as nb
    import nnbackends.progress as progress
    from nnbackends.layers import Dense, ReLU, Softmax

    shown = progress.format_logs  # each epoch's line says the parent may interrupt
    progress.format_logs = lambda logs: shown(logs) + " {READY}"

    X, y = nb.datasets.spiral_data(100, 3)
    model = nb.Model(backend="numba", seed=0)
    model.add(Dense(2, 32)).add(ReLU()).add(Dense(32, 3)).add(Softmax())
    model.compile(optimizer=nb.optimizers.Adam(0.01))
    history = model.fit(X, y, epochs=10**7, batch_size=50, verbose=2, on_interrupt="return")  # a line per epoch
    print(json.dumps({{"interrupted": history.interrupted, "epochs": history.epochs,
                      "losses": len(history["loss"]), "iterations": model.optimizer.iterations,
                      "steps": history.steps, "finite": all(bool(np.isfinite(w).all()) for w in model.get_weights()),
                      "ran": type(model._fused_step).__name__}}))
""")


def test_ctrl_c_ends_a_run_at_an_epoch_boundary():
    rc, out, err = interrupt_when_ready([sys.executable, "-c", RUN_SCRIPT], "stderr")
    assert rc == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["interrupted"] is True and result["ran"] == "FusedStep"
    assert result["epochs"] == result["losses"] < 10**7
    assert result["iterations"] == result["steps"] == 6 * result["epochs"]  # whole epochs of 6 steps
    assert result["finite"] is True
