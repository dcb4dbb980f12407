"""Sample and class weights, validation_split and weighted evaluation."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from nnbackends import Model
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, Linear, ReLU, Softmax
from nnbackends.optimizers import SGD


def classifier(backend, dtype="float64"):
    model = Model(backend=backend, seed=3, dtype=dtype)
    model.add(Dense(2, 8)), model.add(ReLU()), model.add(Dense(8, 3)), model.add(Softmax())
    return model.compile(optimizer=SGD(0.5, momentum=0.5))


def regressor(backend, dtype="float64"):
    model = Model(backend=backend, seed=3, dtype=dtype)
    model.add(Dense(2, 8)), model.add(ReLU()), model.add(Dense(8, 2)), model.add(Linear())
    return model.compile(loss="mse", optimizer=SGD(0.05), metrics=())


@pytest.mark.parametrize("build", [classifier, regressor])
def test_integer_weights_equal_duplicated_rows(backend, dtype, build):
    X, labels = spiral_data(10, 3)
    y = labels if build is classifier else np.stack([X.sum(axis=1), X[:, 0] * X[:, 1]], axis=1)
    weights = np.random.default_rng(0).integers(0, 4, len(X))
    weights[0] = 2
    weighted = build(backend, dtype)
    history = weighted.fit(X, y, epochs=5, sample_weight=weights, verbose=0)
    duplicated = build(backend, dtype)
    want = duplicated.fit(np.repeat(X, weights, axis=0), np.repeat(y, weights, axis=0), epochs=5, verbose=0)
    assert_close(history["loss"], want["loss"], dtype, "loss")
    for got, ref in zip(weighted.get_weights(), duplicated.get_weights()):
        assert_close(got, ref, dtype, "weights")


def test_class_weight_equals_the_matching_sample_weight(backend):
    X, y = spiral_data(20, 3)
    by_class = classifier(backend).fit(X, y, epochs=3, batch_size=16, class_weight={0: 2.0, 2: 0.5}, verbose=0)
    table = np.array([2.0, 1.0, 0.5])
    by_sample = classifier(backend).fit(X, y, epochs=3, batch_size=16, sample_weight=table[y], verbose=0)
    assert by_class["loss"] == by_sample["loss"]


def test_weighted_evaluate_matches_duplicates_and_batches_agree(backend):
    X, y = spiral_data(20, 3)
    model = classifier(backend)
    weights = np.arange(len(X)) % 3
    got = model.evaluate(X, y, batch_size=7, sample_weight=weights)
    want = model.evaluate(np.repeat(X, weights, axis=0), np.repeat(y, weights, axis=0))
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
    assert model.evaluate(X, y, batch_size=7)["loss"] == pytest.approx(model.evaluate(X, y)["loss"], rel=1e-12)


def test_validation_split_holds_out_the_last_rows():
    X, y = spiral_data(20, 3)
    split = classifier("numpy").fit(X, y, epochs=2, validation_split=0.25, verbose=0)
    explicit = classifier("numpy").fit(X[:45], y[:45], epochs=2, validation_data=(X[45:], y[45:]), verbose=0)
    assert split.history == explicit.history


@pytest.mark.parametrize("kwargs, message", [
    ({"sample_weight": np.ones(5)}, r"one weight per sample: expected shape \(60,\)"),
    ({"sample_weight": -np.ones(60)}, "negative weight at index 0"),
    ({"sample_weight": np.full(60, np.nan)}, "NaN or Inf"),
    ({"sample_weight": np.zeros(60)}, "all zero"),
    ({"class_weight": {5: 1.0}}, r"class 5, but the classes are 0..2"),
    ({"validation_split": 1.5}, r"validation_split must be a fraction in \(0, 1\)"),
    ({"validation_split": 0.99}, "leaves no training samples"),
    ({"validation_split": 0.2, "validation_data": (np.zeros((2, 2)), np.zeros(2))}, "not both"),
    ({"sample_weight": np.ones(60), "fused": True}, "fused steps take no sample or class weights"),
])
def test_bad_weights_and_splits_say_what_is_wrong(kwargs, message):
    X, y = spiral_data(20, 3)
    with pytest.raises(ValueError, match=message):
        classifier("numpy").fit(X, y, epochs=1, verbose=0, **kwargs)
