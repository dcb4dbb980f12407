"""Losses: the mean over samples of a per-sample loss, with its gradient.

A loss is bound to the model's backend by ``Model.compile``. ``prepare_targets``
checks host targets against the output layer and converts them to what the
kernels take (integer labels or float targets).
"""
from __future__ import annotations

from .backends.base import CLIP
from .validation import check_choice, check_class_labels, check_output_targets


class Loss:
    name: str
    kernel: str
    metric = "accuracy"  # the metric "accuracy" resolves to for this loss

    def bind(self, backend):
        self.backend = backend
        return self

    def forward(self, p, y):
        """Mean loss of predictions p against targets y, as a 0-d backend array."""
        return getattr(self.backend, self.kernel + "_loss")(p, y)

    def backward(self, p, y):
        """Gradient of ``forward`` with respect to p."""
        return getattr(self.backend, self.kernel + "_backward")(p, y)

    def row_losses(self, p, y):
        """The per-sample losses whose mean ``forward`` is, shape (n,) (for sample weights;
        written on the backend's array module, not a kernel of the table)."""
        raise NotImplementedError

    def prepare_targets(self, y, n_outputs, dtype, name="y"):
        return check_output_targets(name, y, n_outputs).astype(dtype, copy=False)

    def config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


class CategoricalCrossentropy(Loss):
    """Cross-entropy of class probabilities; targets are integer labels or one-hot rows."""

    name = "categorical_crossentropy"
    kernel = "cce"

    def prepare_targets(self, y, n_outputs, dtype, name="y"):
        y = check_class_labels(name, y, n_outputs)
        return y if y.ndim == 1 else y.astype(dtype, copy=False)

    def row_losses(self, p, y):
        xp = self.backend.xp
        picked = p[xp.arange(p.shape[0]), y] if y.ndim == 1 else (p * y).sum(axis=1)
        return -xp.log(xp.clip(picked, CLIP, 1 - CLIP))


class BinaryCrossentropy(Loss):
    """Cross-entropy of independent 0/1 outputs (after a Sigmoid)."""

    name = "binary_crossentropy"
    kernel = "bce"

    def row_losses(self, p, y):
        xp = self.backend.xp
        p = xp.clip(p, CLIP, 1 - CLIP)
        return -(y * xp.log(p) + (1 - y) * xp.log(1 - p)).mean(axis=1)


class MeanSquaredError(Loss):
    name = "mse"
    kernel = "mse"

    def row_losses(self, p, y):
        d = y - p
        return (d * d).mean(axis=1)


class MeanAbsoluteError(Loss):
    name = "mae"
    kernel = "mae"

    def row_losses(self, p, y):
        return self.backend.xp.abs(y - p).mean(axis=1)


LOSSES = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mse": MeanSquaredError,
    "mae": MeanAbsoluteError,
}
ALIASES = {"cce": "categorical_crossentropy", "bce": "binary_crossentropy",
           "mean_squared_error": "mse", "mean_absolute_error": "mae"}


def get_loss(loss) -> Loss:
    """A loss object from an instance or a name."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    if isinstance(loss, str):
        loss = ALIASES.get(loss.lower(), loss)
    return LOSSES[check_choice("loss", loss, tuple(LOSSES))]()
