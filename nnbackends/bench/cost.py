"""FLOPs and bytes of the benchmarked work (the cost model behind GFLOP/s and % peak)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import Activation, Dense


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
    """FLOPs and bytes of one training step of a fused-step ``model`` on ``batch`` samples."""
    itemsize = np.dtype(model.dtype).itemsize
    total, width, first = Cost(), model.n_inputs, True
    for index, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            total += dense_forward_cost(batch, layer.n_inputs, layer.n_neurons, itemsize)
            total += dense_backward_cost(batch, layer.n_inputs, layer.n_neurons, itemsize, need_dx=not first)
            width, first = layer.n_neurons, False
        elif isinstance(layer, Activation):
            last = index == len(model.layers) - 1
            kind = "softmax_cce" if last and model.softmax_cce else layer.kernel
            total += elementwise_cost(kind, batch * width, itemsize)
    total += Cost(batch * width, batch * width * itemsize)  # accuracy: a row-wise argmax
    for p in model.params():
        total += update_cost(model.optimizer, p.value.size, itemsize)
    return total


