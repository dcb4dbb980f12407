"""Training equivalence: every backend trains like the NumPy reference from the same seed.

Runs on every registered backend except the reference itself, on its per-layer
path and on its compiled step (skipped where the backend has none for the model).
Full-batch Adam at this learning rate is chaotic: rounding differences grow
exponentially, so curves are compared over a few steps only and long runs by
the accuracy they reach.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnbackends import Model, datasets
from nnbackends.layers import Dense, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from nnbackends.optimizers import SGD, Adam

#: Relative tolerance of the weights after one step, per dtype.
ONE_STEP = {"float32": 1e-5, "float64": 1e-12}
#: (steps, relative tolerance) of the compared loss curve, per dtype.
CURVE = {"float32": (5, 1e-4), "float64": (50, 1e-8)}


def spiral():
    return datasets.spiral_data(100, 3)


def sine():
    return datasets.sine_data(200)


def spiral_model(backend, dtype, seed=0):
    model = Model(backend=backend, seed=seed, dtype=dtype)
    model.add(Dense(2, 64)).add(ReLU()).add(Dense(64, 3)).add(Softmax())
    return model.compile(loss="categorical_crossentropy", optimizer=Adam(learning_rate=0.05, decay=5e-7))


def momentum_model(backend, dtype, seed=0):
    """SGD with momentum and decay, LeakyReLU and every kind of regularization."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    model.add(Dense(2, 48, weight_regularizer_l1=1e-4, weight_regularizer_l2=5e-4,
                    bias_regularizer_l1=1e-4, bias_regularizer_l2=5e-4))
    model.add(LeakyReLU(0.1)).add(Dense(48, 3)).add(Softmax())
    return model.compile(loss="categorical_crossentropy", optimizer=SGD(learning_rate=0.5, decay=1e-3, momentum=0.9))


def regression_model(backend, dtype, seed=0):
    """Linear output with MSE, Sigmoid and Tanh hidden layers, L2 on the weights."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    model.add(Dense(1, 32, weight_regularizer_l2=1e-4)).add(Sigmoid())
    model.add(Dense(32, 32)).add(Tanh()).add(Dense(32, 1)).add(Linear())
    # "accuracy": the book's regression accuracy, which the compiled steps compute per step.
    return model.compile(loss="mse", optimizer=Adam(learning_rate=0.005, decay=1e-3), metrics=["accuracy"])


def wide_model(backend, dtype, seed=0):
    """Large enough for a backend to prefer BLAS products in its compiled step."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    model.add(Dense(2, 256)).add(ReLU()).add(Dense(256, 128)).add(ReLU()).add(Dense(128, 3)).add(Softmax())
    return model.compile(loss="categorical_crossentropy", optimizer=Adam(learning_rate=0.01))


@pytest.fixture
def candidate(backend):
    if backend.name == "numpy":
        pytest.skip("numpy is the reference")
    return backend


@pytest.fixture(params=[False, True], ids=["per-layer", "compiled"])
def compiled(request):
    return request.param


def train(build, data, backend, dtype, epochs, compiled):
    """Build a model, train it full batch; return (history, weights)."""
    model = build(backend, dtype)
    if compiled and not model.backend.fused_step(model):
        pytest.skip(f"the {model.backend.name!r} backend has no compiled step for this model")
    history = model.fit(*data, epochs=epochs, verbose=0, fused=compiled)
    return history, model.get_weights()


def assert_weights_close(got, want, rtol, what):
    for i, (g, w) in enumerate(zip(got, want)):
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: parameter {i}")


def test_one_step_matches_reference(candidate, dtype, compiled):
    _, got = train(spiral_model, spiral(), candidate, dtype, 1, compiled)
    _, want = train(spiral_model, spiral(), "numpy", dtype, 1, False)
    assert_weights_close(got, want, ONE_STEP[dtype], "weights after one step")


def test_loss_curve_matches_reference(candidate, dtype, compiled):
    steps, rtol = CURVE[dtype]
    got, _ = train(spiral_model, spiral(), candidate, dtype, steps, compiled)
    want, _ = train(spiral_model, spiral(), "numpy", dtype, steps, False)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=rtol)
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], atol=1 / 300 + 1e-12)


@pytest.mark.parametrize("build, data", [(momentum_model, spiral), (regression_model, sine), (wide_model, spiral)],
                         ids=["sgd-momentum", "linear-mse", "wide"])
def test_short_curve_matches_reference(candidate, dtype, compiled, build, data):
    steps, rtol = 10, CURVE[dtype][1]
    got, got_w = train(build, data(), candidate, dtype, steps, compiled)
    want, want_w = train(build, data(), "numpy", dtype, steps, False)
    for key in ("loss", "data_loss", "regularization_loss", "accuracy"):
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-12 if key != "accuracy" else 0.01,
                                   err_msg=key)
    assert_weights_close(got_w, want_w, 10 * ONE_STEP[dtype], f"weights after {steps} steps")


@pytest.mark.slow
def test_long_spiral_run_learns(candidate, compiled):
    history, _ = train(spiral_model, spiral(), candidate, "float32", 10_000, compiled)
    assert history["accuracy"][-1] >= 0.90
