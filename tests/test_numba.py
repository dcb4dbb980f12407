"""Numba infrastructure: native kernels, info, warmup, the disk cache, fork and threads, step selection.

Numerical agreement with the reference is shown by the generic suites
(conformance, gradient checks, equivalence); these tests cover what only the
Numba backend has.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from nnbackends import Model, TrainingDivergedError, datasets
from nnbackends.callbacks import Callback
from nnbackends.backends import KERNELS, get_backend, unavailable_reason
from nnbackends.layers import Dense, Dropout, ReLU, Softmax
from nnbackends.optimizers import SGD, Adagrad, Adam, RMSprop
from test_equivalence import CURVE, ONE_STEP, assert_weights_close, momentum_model, regression_model, sine, spiral

pytestmark = pytest.mark.skipif(unavailable_reason("numba") is not None, reason=str(unavailable_reason("numba")))

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, env=None, timeout=600):
    """Run ``code`` in a fresh interpreter with the repository importable; return the completed process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def spiral_model(dtype="float32", seed=0, dropout=False):
    model = Model(backend="numba", seed=seed, dtype=dtype)
    model.add(Dense(2, 64)).add(ReLU())
    if dropout:
        model.add(Dropout(0.1))
    model.add(Dense(64, 3)).add(Softmax())
    return model.compile(loss="categorical_crossentropy", optimizer=Adam(learning_rate=0.05, decay=5e-7))


@pytest.fixture(params=[False, True], ids=["loops", "blas"])
def on_blas(request, monkeypatch):
    """Every compiled step made during the test runs the loop pass (False) or the BLAS pass (True)."""
    from nnbackends.backends import numba_step

    monkeypatch.setattr(numba_step, "pick_pass", lambda step, x, y: (request.param, numba_step.K.BLOCK_COLS))
    return request.param


class Forbidden:
    """Stands in for the array module: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a kernel used the array-module default (xp.{name})")


def test_every_kernel_is_native_and_never_uses_the_array_module(monkeypatch):
    from nnbackends.backends import numba_backend

    backend = numba_backend.NumbaBackend()
    assert set(backend.native_kernels()) == set(KERNELS)
    assert all(k in vars(numba_backend.NumbaBackend) for k in KERNELS)
    monkeypatch.setattr(backend, "xp", Forbidden())
    for dtype in ("float32", "float64"):
        numba_backend._warm_kernels(backend, np.dtype(dtype))  # calls every kernel of the table


@pytest.mark.parametrize("missing", ["numba", "scipy"])
def test_missing_dependency_gives_the_install_command(missing):
    proc = run_python(f"""
        import sys
        sys.modules[{missing!r}] = None  # as if it were not installed
        from nnbackends.backends import get_backend, BackendUnavailableError
        try:
            get_backend("numba")
        except BackendUnavailableError as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert missing in proc.stdout and 'pip install "nnbackends[numba]"' in proc.stdout, proc.stdout


def test_info_reports_native_kernels_blas_and_threads():
    proc = run_python("import sys; from nnbackends.cli import main; sys.exit(main(['info', '--json']))")
    assert proc.returncode == 0, proc.stderr
    numba = json.loads(proc.stdout)["backends"]["numba"]
    assert numba["native_kernels"] == list(KERNELS)
    assert numba["blas_kernels"] == ["dense_forward", "dense_backward"]
    assert "threading_layer" in numba["facts"] and numba["facts"]["threads"] >= 1


def test_warmup_compiles_what_fit_needs():
    from nnbackends.backends import numba_kernels as K

    backend = get_backend("numba")
    backend.warmup()
    dispatchers = [f for f in vars(K).values() if hasattr(f, "signatures")]
    before = {f: len(f.signatures) for f in dispatchers}
    X, y = datasets.spiral_data(20, 3)
    for compiled in (None, False):
        for dtype in ("float32", "float64"):
            spiral_model(dtype).fit(X, y, epochs=2, verbose=0, fused=compiled)
    grown = [f.__name__ for f in dispatchers if len(f.signatures) != before[f]]
    assert grown == [], f"compiled during fit after warmup: {grown}"


def test_cache_follows_numba_cache_dir(tmp_path):
    proc = run_python("""
        import numpy as np
        from nnbackends.backends import get_backend
        get_backend("numba").relu_forward(np.ones((2, 2), np.float32))
    """, env={"NUMBA_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    names = [p.name for p in tmp_path.rglob("*")]
    assert any(n.startswith("numba_kernels.activation_forward") and n.endswith(".nbi") for n in names), names
    assert any(n.endswith(".nbc") for n in names), names


def test_stale_cache_cannot_hide_an_edited_callee(tmp_path):
    """A cached kernel that inlines a helper is recompiled when only the helper changes."""
    from nnbackends.backends import numba_kernels

    module = tmp_path / "kernels_copy.py"
    shutil.copy(numba_kernels.__file__, module)
    code = """
        import numpy as np, kernels_copy as K
        print(K.activation_forward(K.RELU, 0.0, np.array([[-1.0, 3.0]]))[0, 1])
    """
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    first = run_python(code, env)
    assert first.returncode == 0, first.stderr
    assert float(first.stdout) == 3.0
    source = module.read_text()
    relu_line = "            out[r, i] = 0 if x[r, i] <= 0 else x[r, i]\n"
    assert source.count(relu_line) == 1
    module.write_text(source.replace(relu_line, relu_line.replace("else x[r, i]", "else 2 * x[r, i]")))
    second = run_python(code, env)
    assert second.returncode == 0, second.stderr
    assert float(second.stdout) == 6.0


def test_fork_after_training_works_with_numbas_threading_layer():
    """Train, fork, train in the child: the child must finish and get the parent's numbers."""
    proc = run_python("""
        import os, numpy as np
        from nnbackends import Model, datasets
        from nnbackends.layers import Dense, ReLU, Softmax
        X, y = datasets.spiral_data(50, 3)
        def run(compiled):
            m = Model(backend="numba", seed=1)
            m.add(Dense(2, 32)).add(ReLU()).add(Dense(32, 3)).add(Softmax())
            m.compile(optimizer="adam")
            return m.fit(X, y, epochs=5, verbose=0, fused=compiled)["loss"][-1]
        parent = [run(None), run(False)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, repr([run(None), run(False)]).encode())
            os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        child = eval(os.read(r, 4096).decode() or "None")
        print(os.waitstatus_to_exitcode(status), child == parent)
    """, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True"], proc.stdout + proc.stderr


def test_threads_train_concurrently_with_the_same_results():
    X, y = datasets.spiral_data(50, 3)
    expected = spiral_model().fit(X, y, epochs=20, verbose=0)["loss"]
    results = [None] * 4

    def work(i):
        results[i] = spiral_model().fit(X, y, epochs=20, verbose=0, fused=None if i % 2 else False)["loss"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=1e-5)


class CountingModel:
    """Counts the per-layer steps a model takes."""

    def __init__(self, model):
        self.calls = 0
        original = model.train_step

        def counted(x, y):
            self.calls += 1
            return original(x, y)

        model.train_step = counted


def test_fused_step_is_used_unless_compiled_false():
    from nnbackends.backends.numba_step import FusedStep

    X, y = datasets.spiral_data(20, 3)
    model = spiral_model()
    counter = CountingModel(model)
    model.fit(X, y, epochs=3, verbose=0)
    assert counter.calls == 0 and isinstance(model._fused_step, FusedStep)
    model.fit(X, y, epochs=3, verbose=0, fused=False)
    assert counter.calls == 3


def test_dropout_falls_back_to_the_per_layer_path():
    X, y = datasets.spiral_data(20, 3)
    model = spiral_model(dropout=True)
    assert model.backend.fused_step(model) is None
    counter = CountingModel(model)
    model.fit(X, y, epochs=2, verbose=0)
    assert counter.calls == 2
    with pytest.raises(ValueError, match="no fused step"):
        model.fit(X, y, epochs=1, verbose=0, fused=True)


def regularized_spiral_model(optimizer):
    """A builder of a spiral model with L2 on its first layer, trained by ``optimizer()``."""
    def build(backend, dtype):
        model = Model(backend=backend, seed=0, dtype=dtype)
        model.add(Dense(2, 32, weight_regularizer_l2=5e-4)).add(ReLU()).add(Dense(32, 3)).add(Softmax())
        return model.compile(loss="categorical_crossentropy", optimizer=optimizer())
    return build


@pytest.mark.parametrize("build, data", [
    (momentum_model, spiral), (regression_model, sine),
    (regularized_spiral_model(lambda: Adagrad(learning_rate=0.5)), spiral),
    (regularized_spiral_model(lambda: RMSprop(learning_rate=0.01, rho=0.95)), spiral),
    (regularized_spiral_model(lambda: SGD(learning_rate=0.5, decay=1e-3)), spiral),
], ids=["sgd-momentum-cce", "adam-mse", "adagrad", "rmsprop", "sgd"])
def test_each_pass_trains_like_the_reference(on_blas, dtype, build, data):
    """Both passes of the compiled step, with either output and every optimizer, against the
    NumPy per-layer path. The generic equivalence suite reaches each pass only through the
    models it picks.
    """
    steps, rtol = 10, CURVE[dtype][1]
    runs = []
    for backend, compiled in (("numba", True), ("numpy", False)):
        model = build(backend, dtype)
        history = model.fit(*data(), epochs=steps, verbose=0, fused=compiled)
        runs.append((history, model.get_weights()))
    (got, got_w), (want, want_w) = runs
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=rtol, atol=1e-12)
    assert_weights_close(got_w, want_w, 10 * ONE_STEP[dtype], f"weights after {steps} steps")
    assert got.steps == steps


@pytest.mark.parametrize("widths, batch, blas", [
    ((2, 64, 3), 300, False),  # the spiral: thin layers, loops
    ((2, 1024, 3), 300, False),
    ((2, 64, 3), 32, True),  # a batch smaller than a loop block
    ((64, 128, 10), 300, True),  # digits-shaped
    ((784, 256, 256, 10), 128, True),
])
def test_the_step_picks_its_pass_by_shape_and_batch(widths, batch, blas):
    from nnbackends.backends.numba_step import runs_on_blas

    assert runs_on_blas(widths, batch) is blas


def test_the_pass_chosen_on_the_first_batch_is_kept(monkeypatch):
    """A short last batch does not switch passes (a switch would compile the other one mid-epoch)."""
    from nnbackends.backends import autotune, numba_kernels, numba_step

    monkeypatch.setenv(autotune.ENV_VAR, "0")  # the built-in rule picks loops here, and no trials are counted
    numba_step.warm_step("float32")  # compiled callers of the step kernels bind the real ones first
    calls = []
    for name in ("loops_step", "blas_step", "loops_run", "blas_run"):
        def counted(*args, _step=getattr(numba_kernels, name), _name=name):
            calls.append(_name)
            return _step(*args)
        monkeypatch.setattr(numba_kernels, name, counted)
    X, y = datasets.spiral_data(100, 3)
    class EachBatch(Callback):
        def on_batch_end(self, batch, logs=None):
            pass

    # batches of 128, 128 and 44, a step at a time (a callback of every batch keeps the trainer between steps) ...
    spiral_model().fit(X, y, epochs=1, batch_size=128, shuffle=False, verbose=0, callbacks=[EachBatch()])
    assert calls == ["loops_step"] * 3
    calls.clear()  # ... and as one run of the whole epoch
    spiral_model().fit(X, y, epochs=1, batch_size=128, shuffle=False, verbose=0)
    assert calls == ["loops_run"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fused_step_changes_nothing_when_not_finite(bad, on_blas):
    X, y = datasets.spiral_data(20, 3)
    model = spiral_model()
    model.fit(X, y, epochs=2, verbose=0)
    before = model.get_weights()
    states = [{k: v.copy() for k, v in p.state.items()} for p in model.params()]
    X = X.copy()
    X[5, 1] = bad  # the trainer refuses such data, so call the step itself
    data_loss, accuracy, finite = model._step_function(True)(X, y.astype(np.int64))  # as fit prepares them
    assert finite is False and not np.isfinite(data_loss)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    for p, saved in zip(model.params(), states):
        for k, v in saved.items():
            np.testing.assert_array_equal(p.state[k], v)


def test_divergence_is_reported_from_the_fused_step(on_blas):
    X, y = datasets.spiral_data(20, 3)
    model = spiral_model()
    model.layers[2].W.value[0, 0] = np.inf
    before = model.get_weights()
    with pytest.raises(TrainingDivergedError):
        model.fit(X, y, epochs=1, verbose=0, fused=True)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_kernel_constants_match_the_reference():
    """numba_kernels copies base.CLIP (an import would be frozen into cached kernels)."""
    from nnbackends.backends import base, numba_kernels

    assert numba_kernels.CLIP == base.CLIP


@pytest.mark.skipif(not __import__("platform").machine().lower() in ("x86_64", "amd64"), reason="x86's MXCSR")
def test_fused_steps_flush_subnormals_and_leave_the_thread_as_they_found_it():
    """Inside a fused step subnormals are flushed (they cost x86 a slow path); outside, IEEE as before."""
    from numba import njit

    from nnbackends.backends import numba_kernels as K

    @njit
    def halve_inside(x):
        saved = K.subnormals_off()
        y = x * np.float32(0.5)
        K.subnormals_restore(saved)
        return y, K.mxcsr_read() == saved

    tiny = np.float32(1e-38)  # below float32's smallest normal once halved
    halved, restored = halve_inside(tiny)
    assert halved == 0 and restored
    model = spiral_model()
    X, y = datasets.spiral_data(20, 3)
    model.fit(X, y, epochs=3, verbose=0, fused=True)
    assert tiny * np.float32(0.5) > 0  # NumPy after the step still sees subnormals
