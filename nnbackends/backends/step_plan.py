"""Which models a backend's compiled training step can run, shared by every backend that has one.

Backends know no layer classes, so a model is read by what its parts carry: a
Dense layer has ``W`` and ``b``, an activation layer names its ``kernel``, and
the loss, optimizer and metric carry their ``name`` or ``kernel``.

A model qualifies when it is Dense layers, each followed by at most one of
ReLU, LeakyReLU, Sigmoid, Tanh or Linear, ending in Softmax with categorical
cross-entropy or in Linear (or no activation) with MSE; trains with one of the
optimizers the backend's step runs (every one runs SGD, with or without
momentum, and Adam); and reports no metric or the loss's accuracy.
"""
from __future__ import annotations

from typing import NamedTuple

#: Activations a compiled step fuses between Dense layers.
HIDDEN_ACTIVATIONS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh")
#: loss name -> (output activation, the accuracy kernel it reports)
OUTPUTS = {"categorical_crossentropy": ("softmax", "categorical_accuracy"), "mse": ("linear", "regression_accuracy")}
#: The optimizers every compiled step runs.
OPTIMIZERS = ("sgd", "adam")


class Stage(NamedTuple):
    """One Dense layer and the activation applied to its output."""

    dense: object
    activation: str
    alpha: float  # LeakyReLU's slope, 0 otherwise


def step_plan(model, optimizers=OPTIMIZERS) -> list[Stage] | None:
    """The model as a list of ``Stage``, or None when it does not qualify (``optimizers``: the names the step runs)."""
    loss, optimizer, metric = model.loss, model.optimizer, model.metric
    if loss is None or loss.name not in OUTPUTS or getattr(optimizer, "name", None) not in optimizers:
        return None
    output, accuracy = OUTPUTS[loss.name]
    if metric is not None and getattr(metric, "kernel", None) != accuracy:
        return None
    stages: list[Stage] = []
    for layer in model.layers:
        if hasattr(layer, "W") and hasattr(layer, "b"):
            stages.append(Stage(layer, "linear", 0.0))
            continue
        kind = getattr(layer, "kernel", None)
        if not stages or stages[-1].activation != "linear" or kind not in (*HIDDEN_ACTIVATIONS, output):
            return None  # an unknown layer (Dropout, ...), two activations in a row, or one before any Dense
        stages[-1] = Stage(stages[-1].dense, kind, float(getattr(layer, "alpha", 0.0)))
    if not stages or stages[-1].activation != output or any(s.activation == "softmax" for s in stages[:-1]):
        return None
    return stages
