"""FLOPs and bytes of the benchmarked work (the cost model behind GFLOP/s and % peak)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.step_plan import step_plan


@dataclass(frozen=True)
class Cost:
    """Floating-point operations and bytes moved by one call or step."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other):
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


#: Nominal (flops, arrays of n·k touched) per element for an activation's forward + backward.
ELEMENTWISE = {
    "relu": (2, 5), "leaky_relu": (3, 5), "sigmoid": (7, 5), "tanh": (6, 5), "softmax": (8, 5),
    "linear": (0, 0),
    "softmax_cce": (7, 4),  # softmax forward, loss, fused gradient
}
#: Nominal (flops, arrays touched) per parameter element for one optimizer update.
#: Keyed by the optimizer's ``update_kernel``.
UPDATES = {"sgd_update": (2, 3), "sgd_momentum_update": (4, 5), "adagrad_update": (5, 5), "rmsprop_update": (7, 5),
           "adam_update": (13, 7)}


def dense_forward_cost(n, i, o, itemsize) -> Cost:
    return Cost(2 * n * i * o + n * o, itemsize * (n * i + i * o + o + n * o))


def dense_backward_cost(n, i, o, itemsize, need_dx=True) -> Cost:
    """dW = xᵀ·dy, db = Σ dy and, when needed, dx = dy·Wᵀ."""
    flops = 2 * n * i * o + n * o + (2 * n * i * o if need_dx else 0)
    moved = n * i + i * o + n * o + i * o + o + (n * i if need_dx else 0)
    return Cost(flops, itemsize * moved)


def elementwise_cost(kind, elements, itemsize) -> Cost:
    flops, arrays = ELEMENTWISE[kind]
    return Cost(flops * elements, arrays * elements * itemsize)


def update_cost(optimizer, elements, itemsize) -> Cost:
    flops, arrays = UPDATES[optimizer.update_kernel]
    return Cost(flops * elements, arrays * elements * itemsize)


def step_cost(model, batch) -> Cost:
    """FLOPs and bytes of one training step of ``model`` on ``batch`` samples, read from its ``StepPlan``
    (every benchmarked model is one a fused step runs)."""
    plan = step_plan(model, updates=tuple(UPDATES))
    if plan is None:
        raise ValueError("The cost model covers the models a fused step runs (Dense layers with fused "
                         "activations, a softmax or linear output, a known optimizer).")
    itemsize = np.dtype(model.dtype).itemsize
    total = Cost()
    for index, stage in enumerate(plan):
        d = stage.dense
        total += dense_forward_cost(batch, d.n_inputs, d.n_neurons, itemsize)
        total += dense_backward_cost(batch, d.n_inputs, d.n_neurons, itemsize, need_dx=index > 0)
        last = index == len(plan) - 1
        kind = "softmax_cce" if last and plan.classifies else stage.activation
        total += elementwise_cost(kind, batch * d.n_neurons, itemsize)
    width = plan[-1].dense.n_neurons
    total += Cost(batch * width, batch * width * itemsize)  # accuracy: a row-wise argmax
    for p in model.params():
        total += update_cost(model.optimizer, p.value.size, itemsize)
    return total
