"""Layers: Dense, Dropout and the activations. Backend-blind: every number goes through ``self.backend``.

A layer is created with its hyperparameters only; ``Model.add`` builds it for
the model's backend, dtype and random generator. Forward passes keep what the
backward pass needs (the input for Dense and ReLU-like activations, the output
for Sigmoid, Tanh and Softmax).
"""
from __future__ import annotations

import math

import numpy as np

from .validation import check_choice, check_nonnegative_float, check_positive_int, check_rate

INITIALIZERS = ("glorot_uniform", "he_normal", "nnfs")


class Param:
    """One trainable array with its gradient, regularization and optimizer state."""

    __slots__ = ("name", "value", "grad", "l1", "l2", "state")

    def __init__(self, name, value, l1=0.0, l2=0.0):
        self.name = name
        self.value = value
        self.grad = None
        self.l1 = l1
        self.l2 = l2
        self.state = {}  # filled by the optimizer

    @property
    def regularized(self) -> bool:
        return bool(self.l1 or self.l2)


class Layer:
    """Base layer: no parameters, shape-preserving."""

    backend = None

    def build(self, backend, dtype, rng, n_inputs):
        """Bind to a backend; return the number of output features (None: unchanged)."""
        self.backend = backend
        self.dtype = dtype
        self.rng = rng
        return n_inputs

    def params(self) -> list[Param]:
        return []

    def config(self) -> dict:
        """The constructor arguments, for saving; ``from_config`` inverts it."""
        return {}

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __str__(self):
        """A short form for tables and messages: ``LeakyReLU(0.1)``, ``Dense(2, 64)``."""
        return f"{type(self).__name__}({', '.join(map(repr, self.config().values()))})"


class Dense(Layer):
    """Fully connected layer ``x @ W + b`` with W of shape (n_inputs, n_neurons).

    ``Dense(2, 64)`` takes 2 inputs and gives 64 outputs; ``Dense(64)`` gives 64
    and takes what the layer before it gives (``Model.add`` fills in ``n_inputs``).
    ``activation`` (a name such as ``"relu"``): ``Model.add`` appends that
    activation layer after this one. Regularization (the nnfs book's): loss
    ``l1*sum|W| + l2*sum W**2`` per parameter, its gradient added to dW and db.
    """

    def __init__(
        self,
        n_inputs,
        n_neurons=None,
        initializer="glorot_uniform",
        weight_regularizer_l1=0.0,
        weight_regularizer_l2=0.0,
        bias_regularizer_l1=0.0,
        bias_regularizer_l2=0.0,
        activation=None,
    ):
        if n_neurons is None:  # Dense(64): the outputs alone
            n_inputs, n_neurons = None, n_inputs
        self.n_inputs = None if n_inputs is None else check_positive_int("n_inputs", n_inputs)
        self.n_neurons = check_positive_int("n_neurons", n_neurons)
        self.activation = None if activation is None else check_choice("activation", activation, tuple(ACTIVATIONS))
        self.initializer = check_choice("initializer", initializer, INITIALIZERS)
        self.weight_regularizer_l1 = check_nonnegative_float("weight_regularizer_l1", weight_regularizer_l1)
        self.weight_regularizer_l2 = check_nonnegative_float("weight_regularizer_l2", weight_regularizer_l2)
        self.bias_regularizer_l1 = check_nonnegative_float("bias_regularizer_l1", bias_regularizer_l1)
        self.bias_regularizer_l2 = check_nonnegative_float("bias_regularizer_l2", bias_regularizer_l2)

    def config(self):
        return {
            "n_inputs": self.n_inputs,
            "n_neurons": self.n_neurons,
            "initializer": self.initializer,
            "weight_regularizer_l1": self.weight_regularizer_l1,
            "weight_regularizer_l2": self.weight_regularizer_l2,
            "bias_regularizer_l1": self.bias_regularizer_l1,
            "bias_regularizer_l2": self.bias_regularizer_l2,
        }

    def __str__(self):
        return f"Dense({self.n_neurons})" if self.n_inputs is None else f"Dense({self.n_inputs}, {self.n_neurons})"

    def build(self, backend, dtype, rng, n_inputs):
        super().build(backend, dtype, rng, n_inputs)
        w = initial_weights(self.initializer, self.n_inputs, self.n_neurons, rng)
        self.W = Param("W", backend.asarray(w, dtype), self.weight_regularizer_l1, self.weight_regularizer_l2)
        self.b = Param("b", backend.zeros((self.n_neurons,), dtype), self.bias_regularizer_l1, self.bias_regularizer_l2)
        return self.n_neurons

    def params(self):
        return [self.W, self.b]

    def forward(self, x, training=False):
        self.inputs = x
        return self.backend.dense_forward(x, self.W.value, self.b.value)

    def backward(self, dy, need_dx=True):
        be = self.backend
        dx, self.W.grad, self.b.grad = be.dense_backward(self.inputs, self.W.value, dy, need_dx)
        for p in (self.W, self.b):
            if p.regularized:
                be.regularization_backward(p.value, p.grad, p.l1, p.l2)
        return dx


def initial_weights(initializer, n_inputs, n_neurons, rng) -> np.ndarray:
    """Host float64 initial weights drawn from the model's generator."""
    shape = (n_inputs, n_neurons)
    if initializer == "glorot_uniform":
        limit = math.sqrt(6.0 / (n_inputs + n_neurons))
        return rng.uniform(-limit, limit, shape)
    if initializer == "he_normal":
        return rng.normal(0.0, math.sqrt(2.0 / n_inputs), shape)
    return 0.01 * rng.standard_normal(shape)  # "nnfs"


class Dropout(Layer):
    """Inverted dropout: drops each input with probability ``rate`` in training only."""

    def __init__(self, rate):
        self.rate = check_rate("rate", rate)

    def config(self):
        return {"rate": self.rate}

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self.mask = None
            return x
        self.mask = self.backend.dropout_mask(x.shape, self.rate, self.rng, self.dtype)
        return self.backend.multiply(x, self.mask)

    def backward(self, dy, need_dx=True):
        return dy if self.mask is None else self.backend.multiply(dy, self.mask)


class Activation(Layer):
    """An elementwise or row-wise activation named by ``kernel`` in the backend's table.

    ``keeps`` says whether the backward kernel wants the forward "input" or "output".
    """

    kernel: str
    keeps = "input"

    def forward(self, x, training=False):
        y = getattr(self.backend, self.kernel + "_forward")(x, *self._args())
        self.saved = x if self.keeps == "input" else y
        return y

    def backward(self, dy, need_dx=True):
        return getattr(self.backend, self.kernel + "_backward")(self.saved, dy, *self._args())

    def _args(self):
        return ()


class ReLU(Activation):
    kernel = "relu"


class LeakyReLU(Activation):
    kernel = "leaky_relu"

    def __init__(self, alpha=0.01):
        self.alpha = check_nonnegative_float("alpha", alpha)

    def config(self):
        return {"alpha": self.alpha}

    def _args(self):
        return (self.alpha,)


class Sigmoid(Activation):
    kernel = "sigmoid"
    keeps = "output"


class Tanh(Activation):
    kernel = "tanh"
    keeps = "output"


class Softmax(Activation):
    kernel = "softmax"
    keeps = "output"


class Linear(Activation):
    kernel = "linear"


LAYERS = {cls.__name__: cls for cls in (Dense, Dropout, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Linear)}
ACTIVATIONS = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softmax": Softmax,
    "linear": Linear,
}


def activation(name) -> Activation:
    """An activation layer from its name (``"relu"``, ``"tanh"``, ...)."""
    return ACTIVATIONS[check_choice("activation", name, tuple(ACTIVATIONS))]()


def from_config(class_name: str, config: dict) -> Layer:
    """Rebuild a layer from ``config()`` output (used by ``load_model``)."""
    cls = LAYERS[check_choice("layer class", class_name, tuple(LAYERS))]
    return cls(**config)
