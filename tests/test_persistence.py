"""Save/load round trip: weights, predictions and compile settings survive, on any backend."""
from __future__ import annotations

import numpy as np
import pytest

from nnbackends import Model, load_model
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, Dropout, LeakyReLU, Softmax, Tanh
from nnbackends.metrics import RegressionAccuracy
from nnbackends.optimizers import RMSprop


@pytest.fixture(scope="module")
def data():
    return spiral_data(20, 3, seed=1)


def trained_model(X, y, dtype="float32"):
    model = Model(backend="numpy", seed=3, dtype=dtype)
    model.add(Dense(2, 16, initializer="he_normal", weight_regularizer_l2=1e-4, bias_regularizer_l1=1e-5))
    model.add(LeakyReLU(0.05))
    model.add(Dropout(0.1))
    model.add(Dense(16, 8))
    model.add(Tanh())
    model.add(Dense(8, 3))
    model.add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer=RMSprop(learning_rate=0.01, decay=1e-4, rho=0.8))
    model.fit(X, y, epochs=20, verbose=0)
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_on_every_backend(tmp_path, data, backend, dtype):
    X, y = data
    model = trained_model(X, y, dtype)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = load_model(path, backend=backend.name)

    assert loaded.backend is backend
    assert loaded.dtype == dtype
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert [repr(layer) for layer in loaded.layers] == [repr(layer) for layer in model.layers]
    assert loaded.loss.config() == model.loss.config()
    assert loaded.optimizer.config() == model.optimizer.config()
    assert loaded.metric.config() == model.metric.config()
    if backend.name == "numpy":
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    else:  # another backend's kernels may round differently
        np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-5, atol=1e-6)
    assert loaded.evaluate(X, y) == pytest.approx(model.evaluate(X, y), rel=1e-5)


def test_loaded_model_keeps_training(tmp_path, data):
    X, y = data
    path = tmp_path / "m.safetensors"
    trained_model(X, y).save(path)
    loaded = load_model(path)
    before = loaded.evaluate(X, y)["loss"]
    loaded.fit(X, y, epochs=30, verbose=0)
    assert loaded.evaluate(X, y)["loss"] < before


def test_regression_metric_settings_survive(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    y = X @ rng.standard_normal((3, 2))
    model = Model(backend="numpy", seed=0)
    model.add(Dense(3, 2))
    model.compile(loss="mae", optimizer="sgd", metrics=[RegressionAccuracy(precision=0.25)])
    model.save(tmp_path / "r.safetensors")
    loaded = load_model(tmp_path / "r.safetensors", backend="numpy")
    assert loaded.loss.name == "mae"
    assert isinstance(loaded.metric, RegressionAccuracy) and loaded.metric.precision == 0.25
    assert loaded.evaluate(X, y) == model.evaluate(X, y)


def test_save_overwrites_an_existing_file(tmp_path, data):
    X, y = data
    path = tmp_path / "m.safetensors"
    first = trained_model(X, y)
    first.save(path)
    second = trained_model(X, y)
    second.fit(X, y, epochs=5, verbose=0)
    second.save(path)
    for got, want in zip(load_model(path).get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary file left behind
