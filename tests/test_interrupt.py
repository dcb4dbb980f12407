"""Ctrl-C (SIGINT) during fit leaves the model as it was after its last completed step and raises
TrainingInterrupted (a KeyboardInterrupt) with the history, or returns it with on_interrupt="return".

The subprocess tests send a real SIGINT to a training process once it reports
that steps are running (no sleeps, no races); the in-process tests raise the
signal from inside a step.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import nnbackends as nb
from nnbackends.layers import Dense, ReLU, Softmax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The child imports the suite's conftest too, so backends registered only for tests exist there as well.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
READY = "steps-are-running"

# Trains "forever"; after step 20 it tells the parent it is training. It records
# the weights after every completed step and finally reports how fit ended.
FIT_SCRIPT = textwrap.dedent(f"""
    import json, sys
    import numpy as np
    import conftest
    import nnbackends as nb
    from nnbackends.layers import Dense, ReLU, Softmax

    X, y = nb.datasets.spiral_data(100, 3)
    model = nb.Model(backend=sys.argv[1], seed=0)
    model.add(Dense(2, 32)).add(ReLU()).add(Dense(32, 3)).add(Softmax())

    class Recording(nb.optimizers.Adam):
        completed = None
        def post_update(self):
            super().post_update()
            self.completed = model.get_weights()
            if self.iterations == 20:
                print("{READY}", flush=True)

    model.compile(optimizer=Recording(0.01))
    try:
        model.fit(X, y, epochs=10**7, batch_size=50, verbose=0)
        raised = False
    except nb.TrainingInterrupted as exc:
        history, raised = exc.history, isinstance(exc, KeyboardInterrupt)
    same = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), model.optimizer.completed))
    after = model.fit(X, y, epochs=2, verbose=0)
    print(json.dumps({{
        "raised": raised, "interrupted": history.interrupted, "epochs": history.epochs, "losses": len(history["loss"]),
        "iterations": model.optimizer.iterations - 2, "weights_of_last_step": same,
        "finite": all(bool(np.isfinite(w).all()) for w in model.get_weights()),
        "evaluate_loss": model.evaluate(X, y)["loss"], "epochs_after": after.epochs,
        "handler_restored": __import__("signal").getsignal(2) is __import__("signal").default_int_handler,
    }}))
""")


def interrupt_when_ready(args, stream):
    """Start ``args``, wait for READY on ``stream`` ("stdout"/"stderr"), send SIGINT, return (rc, out, err)."""
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    watchdog = threading.Timer(300, proc.kill)  # a child that never gets ready must not hang the suite
    watchdog.start()
    try:
        for line in getattr(proc, stream):
            seen.append(line)
            if READY in line:
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if stream == "stdout":
        out = "".join(seen) + out
    else:
        err = "".join(seen) + err
    return proc.returncode, out, err


def test_sigint_during_fit_raises_with_a_consistent_model(backend):
    rc, out, err = interrupt_when_ready([sys.executable, "-c", FIT_SCRIPT, backend.name], "stdout")
    assert rc == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["raised"] is True and result["interrupted"] is True
    assert result["epochs"] == result["losses"] < 10**7
    assert result["iterations"] >= 20
    assert result["epochs"] * 6 <= result["iterations"] < (result["epochs"] + 1) * 6  # 6 steps per epoch
    assert result["weights_of_last_step"] is True
    assert result["finite"] is True
    assert np.isfinite(result["evaluate_loss"])
    assert result["epochs_after"] == 2
    assert result["handler_restored"] is True


CLI_SCRIPT = textwrap.dedent(f"""
    import sys
    import nnbackends.optimizers as opt
    from nnbackends.cli import main

    post_update = opt.Optimizer.post_update
    def announcing(self):
        post_update(self)
        if self.iterations == 20:
            print("{READY}", file=sys.stderr, flush=True)
    opt.Optimizer.post_update = announcing
    raise SystemExit(main(sys.argv[1:]))
""")


def test_cli_train_saves_when_interrupted(tmp_path):
    path = tmp_path / "model.safetensors"
    args = [sys.executable, "-c", CLI_SCRIPT, "train", "--backend", "numpy", "--epochs", "10000000",
            "--save", str(path)]
    rc, out, err = interrupt_when_ready(args, "stderr")
    assert rc == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err and "interrupted" in out
    assert "saved the model" in out and str(path) in out
    model = nb.load_model(path, backend="numpy")
    X, y = nb.datasets.spiral_data(100, 3)
    assert np.isfinite(model.evaluate(X, y)["loss"])
    assert all(np.isfinite(w).all() for w in model.get_weights())


# ---------------------------------------------------------------------- in process
def small_model(backend, signals_at):
    """A model whose optimizer raises SIGINT in this process after the steps in ``signals_at``."""
    model = nb.Model(backend=backend, seed=0)
    model.add(Dense(2, 8)).add(ReLU()).add(Dense(8, 3)).add(Softmax())

    class Signalling(nb.optimizers.Adam):
        def post_update(self):
            super().post_update()
            self.completed = model.get_weights()
            if self.iterations in signals_at:
                signal.raise_signal(signal.SIGINT)

    return model.compile(optimizer=Signalling(0.01))


def fit_until_interrupted(model, X, y, on_interrupt, **kwargs):
    """The History of a fit that Ctrl-C stops: raised with ``TrainingInterrupted``, or returned."""
    if on_interrupt == "return":
        return model.fit(X, y, epochs=100, verbose=0, on_interrupt="return", **kwargs)
    with pytest.raises(nb.TrainingInterrupted, match="Ctrl-C after") as info:
        model.fit(X, y, epochs=100, verbose=0, **kwargs)
    return info.value.history


@pytest.mark.parametrize("on_interrupt", ["raise", "return"])
@pytest.mark.parametrize("batch_size, signal_at, epochs", [(20, 8, 2), (20, 9, 3), (None, 5, 5)],
                         ids=["mid-epoch", "end-of-epoch", "full-batch"])
def test_interrupt_stops_after_the_current_step(backend, batch_size, signal_at, epochs, on_interrupt):
    """An epoch cut short is not reported; a completed one is, even when the signal came in its last step."""
    X, y = nb.datasets.spiral_data(20, 3)  # 60 samples: 3 steps of 20 per epoch, or 1 full batch
    model = small_model(backend, signals_at={signal_at})
    previous = signal.getsignal(signal.SIGINT)
    history = fit_until_interrupted(model, X, y, on_interrupt, batch_size=batch_size)
    assert signal.getsignal(signal.SIGINT) is previous
    assert history.interrupted is True
    assert history.epochs == epochs
    assert len(history["loss"]) == epochs
    assert model.optimizer.iterations == signal_at
    for got, want in zip(model.get_weights(), model.optimizer.completed):
        np.testing.assert_array_equal(got, want)


def test_second_interrupt_stops_at_once(backend):
    X, y = nb.datasets.spiral_data(20, 3)
    model = small_model(backend, signals_at=())

    def twice():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    model.optimizer.pre_update = twice
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=100, verbose=0)
    assert signal.getsignal(signal.SIGINT) is previous
