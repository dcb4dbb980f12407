"""What a backend's fused training step runs, described once for every backend that has one.

Backends know no layer classes, so a model is read by what its parts carry: a
Dense layer has ``W`` and ``b``, an activation layer names its ``kernel``, the
loss and metric carry their ``name`` and ``kernel``, and the optimizer names its
update kernel, the hyperparameters that kernel takes after the learning rate,
and its state arrays.

A model qualifies when it is Dense layers, each followed by at most one of
ReLU, LeakyReLU, Sigmoid, Tanh or Linear, ending in Softmax with categorical
cross-entropy (or in Linear, or no activation, with ``from_logits=True``: the
loss's softmax is the step's output stage) or in Linear (or no activation) with MSE; trains with an
optimizer whose update kernel the backend's step runs; and reports no metric
or the loss's accuracy.
"""
from __future__ import annotations

from typing import NamedTuple

#: Activations a fused step applies between Dense layers.
FUSED_ACTIVATIONS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh")
#: Output modes: loss name -> (mode, output activation, the accuracy kernel it reports).
OUTPUTS = {"categorical_crossentropy": ("softmax_cce", "softmax", "categorical_accuracy"),
           "mse": ("linear_mse", "linear", "regression_accuracy")}
#: The update kernels every fused step runs.
COMMON_UPDATES = ("sgd_update", "sgd_momentum_update", "adam_update")


class Stage(NamedTuple):
    """One Dense layer and the activation applied to its output."""

    dense: object
    activation: str
    alpha: float  # LeakyReLU's slope, 0 otherwise


class StepPlan(NamedTuple):
    """Everything a fused step needs to know about a model; iterating it gives its stages."""

    stages: tuple[Stage, ...]
    output: str  # "softmax_cce" (Softmax + categorical cross-entropy) or "linear_mse"
    update: str  # the optimizer's update kernel, a name of the kernel table
    hyperparameters: tuple[str, ...]  # optimizer attributes the kernel takes after the learning rate, in order
    state_names: tuple[str, ...]  # the optimizer's per-parameter state arrays, in the kernel's order

    def __iter__(self):
        return iter(self.stages)

    def __len__(self):
        return len(self.stages)

    def __getitem__(self, index):
        return self.stages[index]

    @property
    def classifies(self) -> bool:
        """Whether the output is Softmax with cross-entropy (class labels as targets)."""
        return self.output == "softmax_cce"


def step_plan(model, updates=COMMON_UPDATES) -> StepPlan | None:
    """The model's ``StepPlan``, or None when it does not qualify (``updates``: the update kernels the step runs)."""
    loss, optimizer, metric = model.loss, model.optimizer, model.batch_metric
    if loss is None or loss.name not in OUTPUTS or getattr(optimizer, "update_kernel", None) not in updates:
        return None
    mode, output, accuracy = OUTPUTS[loss.name]
    last = "linear" if loss.from_logits else output  # the activation of the model's last stage
    if metric is not None and getattr(metric, "kernel", None) != accuracy:
        return None
    stages: list[Stage] = []
    for layer in model.layers:
        if hasattr(layer, "W") and hasattr(layer, "b"):
            stages.append(Stage(layer, "linear", 0.0))
            continue
        kind = getattr(layer, "kernel", None)
        if not stages or stages[-1].activation != "linear" or kind not in (*FUSED_ACTIVATIONS, last):
            return None  # an unknown layer (Dropout, ...), two activations in a row, or one before any Dense
        stages[-1] = Stage(stages[-1].dense, kind, float(getattr(layer, "alpha", 0.0)))
    if not stages or stages[-1].activation != last or any(s.activation == "softmax" for s in stages[:-1]):
        return None
    stages[-1] = stages[-1]._replace(activation=output)
    return StepPlan(tuple(stages), mode, optimizer.update_kernel, optimizer.hyperparameters,
                    tuple(optimizer.state_names))
