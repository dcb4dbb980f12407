"""Data as users have it: class names, logits, regression metrics, shapes and names kept in model files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

import nnbackends as nb
from nnbackends.datasets import sine_data, spiral_data
from nnbackends.layers import Dense, Linear, ReLU, Sigmoid, Softmax
from nnbackends.losses import BinaryCrossentropy, CategoricalCrossentropy
from nnbackends.preprocessing import Standardize

NAMES = np.array(["setosa", "versicolor", "virginica"])


def classifier(backend="numpy", outputs=3, loss="categorical_crossentropy", last=Softmax, seed=0):
    model = nb.Model(backend=backend, seed=seed).add(Dense(2, 16)).add(ReLU()).add(Dense(16, outputs))
    if last is not None:
        model.add(last())
    return model.compile(loss=loss, optimizer=nb.optimizers.Adam(learning_rate=0.02))


def named_spiral(samples=60):
    X, y = spiral_data(samples, 3, seed=1)
    return X, NAMES[y]


# ---------------------------------------------------------------------- class names
@pytest.mark.parametrize("as_type", [np.array, list, pd.Series], ids=["array", "list", "series"])
def test_fit_takes_string_labels_and_predicts_them(as_type, backend):
    X, y = named_spiral()
    model = classifier(backend)
    model.fit(X, as_type(list(y)), epochs=50, verbose=0)
    assert model.classes_ == ["setosa", "versicolor", "virginica"]
    predicted = model.predict_classes(X)
    assert predicted.dtype.kind == "U"
    by_index = classifier(backend)
    by_index.fit(X, np.searchsorted(NAMES, y), epochs=50, verbose=0)  # the same training on class indices
    np.testing.assert_array_equal(predicted, NAMES[by_index.predict(X).argmax(axis=1)])
    assert model.evaluate(X, y)["accuracy"] == pytest.approx(np.mean(predicted == y))


def test_boolean_labels_and_an_integer_label_column_are_labels():
    X, y = spiral_data(40, 2, seed=3)
    model = classifier(outputs=2)
    model.fit(X, y.astype(bool), epochs=50, verbose=0)
    assert model.classes_ == [False, True] and model.predict_classes(X).dtype == bool
    column = classifier(outputs=2).fit(X, y.reshape(-1, 1), epochs=5, verbose=0)
    assert column.history["loss"][0] > 0


def test_an_unknown_label_is_named_with_the_classes():
    X, y = named_spiral()
    model = classifier()
    model.fit(X, y, epochs=1, verbose=0)
    y[5] = "virgnica"
    with pytest.raises(ValueError, match=r"y holds the label 'virgnica', which is not one of the model's "
                                         r"classes \('setosa', 'versicolor', 'virginica'\)"):
        model.evaluate(X, y)


def test_more_class_names_than_outputs_say_how_to_fix_it():
    X, y = named_spiral()
    with pytest.raises(ValueError, match=r"y holds 3 classes .* but the output layer has 2 outputs; give the "
                                         r"output layer 3 units"):
        classifier(outputs=2).fit(X, y, epochs=1, verbose=0)


def test_integer_labels_that_are_not_indices_can_be_named():
    X, y = spiral_data(30, 3, seed=2)
    labels = np.array([10, 20, 30])[y]
    model = classifier()
    with pytest.raises(ValueError, match=r"set model.classes_ = \[10, 20, 30\] before fit"):
        model.fit(X, labels, epochs=1, verbose=0)
    model.classes_ = [10, 20, 30]
    model.fit(X, labels, epochs=100, verbose=0)
    assert set(model.predict_classes(X)) <= {10, 20, 30}


def test_class_and_feature_names_are_saved_with_the_model(tmp_path, backend):
    X, y = named_spiral()
    frame = pd.DataFrame(X, columns=["x1", "x2"])
    model = classifier(backend)
    model.fit(frame, y, epochs=20, verbose=0)
    model.label_name_ = "species"
    model.save(tmp_path / "m.safetensors")
    loaded = nb.load_model(tmp_path / "m.safetensors", backend=backend)
    assert (loaded.classes_, loaded.feature_names_, loaded.label_name_) == (
        ["setosa", "versicolor", "virginica"], ["x1", "x2"], "species")
    np.testing.assert_array_equal(loaded.predict_classes(X), model.predict_classes(X))


def test_a_data_frame_with_other_columns_is_refused_naming_them():
    X, y = named_spiral()
    model = classifier()
    model.fit(pd.DataFrame(X, columns=["x1", "x2"]), y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"missing \['x2'\], unexpected \['x3'\]"):
        model.predict(pd.DataFrame(X, columns=["x1", "x3"]))
    with pytest.raises(ValueError, match="the same names in another order"):
        model.evaluate(pd.DataFrame(X[:, ::-1], columns=["x2", "x1"]), y)


# ---------------------------------------------------------------------- logits
def test_a_cross_entropy_without_probabilities_names_both_fixes():
    with pytest.raises(ValueError, match=r"categorical_crossentropy expects probabilities, but the last layer is "
                                         r"Dense\(16, 3\).*add a Softmax\(\) layer.*from_logits=True"):
        classifier(last=None)
    with pytest.raises(ValueError, match=r"binary_crossentropy expects probabilities.*add a Sigmoid\(\) layer"):
        classifier(outputs=1, loss="binary_crossentropy", last=Linear)
    with pytest.raises(ValueError, match=r"from_logits=True\) applies the softmax itself.*remove that layer"):
        classifier(loss=CategoricalCrossentropy(from_logits=True))


@pytest.mark.parametrize("fused", [False, None], ids=["per-layer", "fused"])
def test_logits_train_exactly_like_a_softmax_layer(backend, fused):
    X, y = spiral_data(50, 3, seed=4)
    with_softmax = classifier(backend)
    logits = classifier(backend, loss=CategoricalCrossentropy(from_logits=True), last=None)
    a = with_softmax.fit(X, y, epochs=30, verbose=0, fused=fused)
    b = logits.fit(X, y, epochs=30, verbose=0, fused=fused)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    np.testing.assert_allclose(b["accuracy"], a["accuracy"])
    for got, want in zip(logits.get_weights(), with_softmax.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    scores = logits.predict(X)
    np.testing.assert_allclose(np.exp(scores) / np.exp(scores).sum(1, keepdims=True), with_softmax.predict(X),
                               rtol=1e-4, atol=1e-6)


def test_binary_logits_train_like_a_sigmoid_layer(backend, tmp_path):
    X, labels = spiral_data(40, 2, seed=5)
    y = labels.reshape(-1, 1).astype(float)
    sigmoid = classifier(backend, outputs=1, loss="binary_crossentropy", last=Sigmoid)
    logits = classifier(backend, outputs=1, loss=BinaryCrossentropy(from_logits=True), last=None)
    a = sigmoid.fit(X, y, epochs=25, verbose=0)
    b = logits.fit(X, y, epochs=25, verbose=0)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    np.testing.assert_allclose(b["accuracy"], a["accuracy"])
    logits.save(tmp_path / "logits.safetensors")
    loaded = nb.load_model(tmp_path / "logits.safetensors")
    assert loaded.loss.from_logits and loaded.evaluate(X, y) == pytest.approx(logits.evaluate(X, y))


# ---------------------------------------------------------------------- regression metrics
def regressor(metrics="auto", loss="mse", backend="numpy"):
    model = nb.Model(backend=backend, seed=0).add(Dense(1, 32)).add(ReLU()).add(Dense(32, 1)).add(Linear())
    return model.compile(loss=loss, optimizer=nb.optimizers.Adam(learning_rate=0.01), metrics=metrics)


def test_regression_reports_r2_by_default_and_keeps_the_compiled_step(backend):
    X, y = sine_data(300)
    model = regressor(backend=backend)
    history = model.fit(X, y, epochs=300, verbose=0)
    assert "r2" in history.history and "accuracy" not in history.history
    assert model.evaluate(X, y)["r2"] == pytest.approx(r2_score(y, model.predict(X)), abs=1e-5)
    assert history["r2"][-1] > 0.5
    assert model.batch_metric is None
    if backend.name == "numba":
        assert model._step_function(None) != model.train_step  # R² costs the fused step nothing


@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("metric, oracle", [
    ("mae", mean_absolute_error), ("mse", mean_squared_error),
    ("rmse", lambda y, p: np.sqrt(mean_squared_error(y, p))), ("r2", r2_score)])
def test_regression_metrics_agree_with_scikit_learn(metric, oracle, loss):
    X, y = sine_data(200)
    model = regressor(metric, loss)
    model.fit(X, y, epochs=50, verbose=0)
    assert model.evaluate(X, y)[metric] == pytest.approx(oracle(y, model.predict(X)), rel=1e-5, abs=1e-7)


def test_r2_on_validation_data_uses_their_own_variance():
    X, y = sine_data(200)
    model = regressor()
    history = model.fit(X[:150], y[:150], epochs=40, verbose=0, validation_data=(X[150:], y[150:]))
    assert history["val_r2"][-1] == pytest.approx(r2_score(y[150:], model.predict(X[150:])), abs=1e-5)


def test_the_books_regression_accuracy_stays_available_by_name():
    X, y = sine_data(100)
    assert "accuracy" in regressor(["accuracy"]).fit(X, y, epochs=2, verbose=0).history


def test_a_regression_metric_on_a_classifier_is_refused():
    with pytest.raises(ValueError, match="'r2' is a regression metric"):
        classifier().compile(metrics=["r2"])


# ---------------------------------------------------------------------- shapes
def test_a_single_sample_gets_the_reshape_that_fixes_it():
    model = classifier()
    with pytest.raises(ValueError, match=r"use X.reshape\(1, -1\) if it is one sample"):
        model.predict(np.array([0.1, 0.2]))


# ---------------------------------------------------------------------- standardizing
def test_standardize_is_fitted_by_fit_applied_everywhere_and_saved(tmp_path, backend):
    X, y = spiral_data(50, 3, seed=6)
    prices = X * 1e5 + 3e5  # features far from unit scale
    plain, standardized = classifier(backend), classifier(backend)
    standardized.preprocess = Standardize()
    plain.fit((prices - prices.mean(0)) / prices.std(0), y, epochs=20, verbose=0)
    standardized.fit(prices, y, epochs=20, verbose=0)
    np.testing.assert_allclose(standardized.preprocess.mean, prices.mean(0), rtol=1e-6)
    for got, want in zip(standardized.get_weights(), plain.get_weights()):  # it trains as on scaled data
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    standardized.save(tmp_path / "s.safetensors")
    loaded = nb.load_model(tmp_path / "s.safetensors", backend=backend)
    np.testing.assert_allclose(loaded.predict(prices), standardized.predict(prices), rtol=1e-6)
    assert loaded.evaluate(prices, y) == pytest.approx(standardized.evaluate(prices, y))


def test_the_onnx_file_standardizes_and_a_state_dict_says_it_cannot(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from nnbackends.errors import ExportError
    from nnbackends.export import to_onnx, to_torch_state_dict

    X, y = spiral_data(30, 3, seed=7)
    model = classifier()
    model.preprocess = Standardize()
    model.fit(X * 50 + 7, y, epochs=5, verbose=0)
    to_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {"input": (X * 50 + 7).astype(np.float32)})[0]
    np.testing.assert_allclose(got, model.predict(X * 50 + 7), rtol=1e-5, atol=1e-6)
    with pytest.raises(ExportError, match="has no place for the model's Standardize"):
        to_torch_state_dict(model)


def test_class_weight_takes_class_names():
    X, y = named_spiral()
    by_name, by_sample = classifier(), classifier()
    by_name.fit(X, y, epochs=3, verbose=0, class_weight={"virginica": 3.0, "setosa": 0.5})
    by_sample.fit(X, y, epochs=3, verbose=0, sample_weight=np.select([y == "virginica", y == "setosa"], [3.0, 0.5], 1.0))
    for a, b in zip(by_name.get_weights(), by_sample.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="class_weight names the class 'rose', which is not one of the model's"):
        by_name.fit(X, y, verbose=0, class_weight={"rose": 2.0})

