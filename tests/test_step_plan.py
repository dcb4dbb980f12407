"""The shared rule for which models a compiled training step can run (numba and cupy use it)."""
from __future__ import annotations

import pytest

from nnbackends import Model
from nnbackends.backends.step_plan import step_plan
from nnbackends.layers import Dense, Dropout, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from nnbackends.losses import CategoricalCrossentropy


def model(*layers, loss="categorical_crossentropy", optimizer="adam", metrics=("accuracy",)):
    m = Model(backend="numpy", seed=0)
    for layer in layers:
        m.add(layer)
    return m.compile(loss=loss, optimizer=optimizer, metrics=metrics)


def test_spiral_model_is_planned_stage_by_stage():
    first, second = Dense(2, 8), Dense(8, 3)
    plan = step_plan(model(first, LeakyReLU(0.2), second, Softmax()))
    assert [(s.dense, s.activation, s.alpha) for s in plan] == [(first, "leaky_relu", 0.2), (second, "softmax", 0.0)]


@pytest.mark.parametrize("layers, loss, optimizer, metrics", [
    ((Dense(2, 8), Tanh(), Dense(8, 8), Dense(8, 3), Softmax()), "categorical_crossentropy", "sgd", ()),
    ((Dense(2, 8), Sigmoid(), Dense(8, 1), Linear()), "mse", "sgd", ("accuracy",)),
    ((Dense(2, 8), ReLU(), Dense(8, 1)), "mse", "adam", ("accuracy",)),
])
def test_qualifying_models(layers, loss, optimizer, metrics):
    plan = step_plan(model(*layers, loss=loss, optimizer=optimizer, metrics=metrics))
    assert plan is not None and [s.dense for s in plan] == [l for l in layers if isinstance(l, Dense)]


@pytest.mark.parametrize("layers, loss, optimizer, metrics", [
    ((Dense(2, 8), ReLU(), Dropout(0.1), Dense(8, 3), Softmax()), "categorical_crossentropy", "adam", ()),
    ((Dense(2, 8), ReLU(), Dense(8, 3), Softmax()), "categorical_crossentropy", "rmsprop", ()),
    ((Dense(2, 8), ReLU(), Dense(8, 3), Softmax()), "categorical_crossentropy", "adagrad", ()),
    ((Dense(2, 8), ReLU(), Dense(8, 1), Sigmoid()), "binary_crossentropy", "adam", ()),
    ((Dense(2, 8), ReLU(), Dense(8, 3), Softmax()), "mse", "adam", ()),
    ((Dense(2, 8), Softmax(), Dense(8, 3), Softmax()), "categorical_crossentropy", "adam", ()),
    ((Dense(2, 8), ReLU(), Tanh(), Dense(8, 3), Softmax()), "categorical_crossentropy", "adam", ()),
    ((Dense(2, 8), ReLU(), Dense(8, 1), Linear()), "mae", "adam", ()),
    ((Dense(2, 8), ReLU(), Dense(8, 3), Softmax()), "categorical_crossentropy", "adam", ("binary_accuracy",)),
], ids=["dropout", "rmsprop", "adagrad", "bce", "softmax-mse", "hidden-softmax",
        "two-activations", "mae", "other-metric"])
def test_declined_models(layers, loss, optimizer, metrics):
    assert step_plan(model(*layers, loss=loss, optimizer=optimizer, metrics=metrics)) is None


@pytest.mark.parametrize("output", [(), (Linear(),)], ids=["dense", "linear"])
def test_logits_with_a_folded_softmax_are_planned_as_a_softmax_output(output):
    last = Dense(8, 3)
    m = model(Dense(2, 8), ReLU(), last, *output, loss=CategoricalCrossentropy(from_logits=True))
    plan = step_plan(m)
    assert plan is not None and plan.classifies and (plan[-1].dense, plan[-1].activation) == (last, "softmax")


@pytest.mark.parametrize("metric", ["r2", "mse", "rmse", "auto"])
def test_a_metric_read_from_the_loss_keeps_the_plan(metric):
    m = model(Dense(2, 8), ReLU(), Dense(8, 1), loss="mse", metrics=metric)
    assert m.batch_metric is None and step_plan(m) is not None


def test_a_metric_with_a_kernel_of_its_own_declines_the_plan():
    m = model(Dense(2, 8), ReLU(), Dense(8, 1), loss="mse", metrics="mae")
    assert m.batch_metric is m.metric and step_plan(m) is None


def test_activation_before_any_dense_is_declined():
    m = model(Dense(2, 3), Softmax())
    m.layers.insert(0, ReLU())
    assert step_plan(m) is None
