"""Losses: the mean over samples of a per-sample loss, with its gradient.

A loss is bound to the model's backend by ``Model.compile``. ``prepare_targets``
checks host targets against the output layer and converts them to what the
kernels take (integer labels or float targets).

The cross-entropies read probabilities, or with ``from_logits=True`` the raw
scores of a last layer without an activation: the loss then applies the output
activation (its ``link``, softmax or sigmoid) itself, and its gradient with
respect to the scores is the fused kernel ``<link>_<kernel>_backward``.
"""
from __future__ import annotations

import numpy as np

from .backends.base import CLIP
from .validation import check_bool, check_choice, check_class_labels, check_output_targets


class Loss:
    name: str
    kernel: str
    link = None  # the output activation ``from_logits=True`` folds into the loss (None: it has none)
    from_logits = False
    classifies = False  # whether targets are class labels

    def bind(self, backend):
        self.backend = backend
        return self

    def probabilities(self, out):
        """What the loss kernels read: the model's outputs, with the link applied to logits."""
        return getattr(self.backend, self.link + "_forward")(out) if self.from_logits else out

    def metric_scores(self, out):
        """What a metric reads from the outputs (an argmax needs no softmax; a 0.5 threshold needs probabilities)."""
        return out

    def forward(self, out, y):
        """Mean loss of the outputs against targets y, as a 0-d backend array."""
        return getattr(self.backend, self.kernel + "_loss")(self.probabilities(out), y)

    def backward(self, out, y):
        """Gradient of ``forward`` with respect to the outputs (to the logits, fused, with ``from_logits``)."""
        if self.from_logits:
            return getattr(self.backend, f"{self.link}_{self.kernel}_backward")(self.probabilities(out), y)
        return getattr(self.backend, self.kernel + "_backward")(out, y)

    def row_losses(self, out, y):
        """The per-sample losses whose mean ``forward`` is, shape (n,) (for sample weights;
        written on the backend's array module, not a kernel of the table)."""
        return self._row_losses(self.probabilities(out), y)

    def _row_losses(self, p, y):
        raise NotImplementedError

    def prepare_targets(self, y, n_outputs, dtype, name="y"):
        return check_output_targets(name, y, n_outputs).astype(dtype, copy=False)

    def check_last_layer(self, last):
        """Nothing, if the last layer ``last`` gives what the loss reads; else a ValueError naming both fixes."""
        if self.link is None:
            return
        gives_link = getattr(last, "kernel", None) == self.link
        link, cls = self.link.capitalize(), type(self).__name__
        if self.from_logits and gives_link:
            raise ValueError(f"{cls}(from_logits=True) applies the {self.link} itself, but the last layer is "
                             f"already {link}: remove that layer, or use from_logits=False.")
        if not self.from_logits and not gives_link:
            raise ValueError(f"{self.name} expects probabilities, but the last layer is {last}, which gives "
                             f"unbounded scores: add a {link}() layer at the end, or compile with "
                             f"loss={cls}(from_logits=True) (from nnbackends.losses).")

    def config(self):
        return {"name": self.name, **({"from_logits": True} if self.from_logits else {})}

    def __repr__(self):
        return f"{type(self).__name__}({'from_logits=True' if self.from_logits else ''})"


class CrossEntropy(Loss):
    """A cross-entropy: of probabilities, or of logits with ``from_logits=True``."""

    def __init__(self, from_logits=False):
        self.from_logits = check_bool("from_logits", from_logits)


class CategoricalCrossentropy(CrossEntropy):
    """Cross-entropy of class probabilities (after a Softmax, or of logits with ``from_logits=True``);
    targets are class labels or one-hot rows."""

    name = "categorical_crossentropy"
    kernel = "cce"
    link = "softmax"
    classifies = True

    def prepare_targets(self, y, n_outputs, dtype, name="y"):
        y = check_class_labels(name, y, n_outputs)
        return y if y.ndim == 1 else y.astype(dtype, copy=False)

    def _row_losses(self, p, y):
        xp = self.backend.xp
        picked = p[xp.arange(p.shape[0]), y] if y.ndim == 1 else (p * y).sum(axis=1)
        return -xp.log(xp.clip(picked, CLIP, 1 - CLIP))


class BinaryCrossentropy(CrossEntropy):
    """Cross-entropy of independent 0/1 outputs (after a Sigmoid, or of logits with ``from_logits=True``)."""

    name = "binary_crossentropy"
    kernel = "bce"
    link = "sigmoid"

    def metric_scores(self, out):
        return self.probabilities(out)

    def _row_losses(self, p, y):
        xp = self.backend.xp
        p = xp.clip(p, CLIP, 1 - CLIP)
        return -(y * xp.log(p) + (1 - y) * xp.log(1 - p)).mean(axis=1)


class MeanSquaredError(Loss):
    name = "mse"
    kernel = "mse"

    def _row_losses(self, p, y):
        d = y - p
        return (d * d).mean(axis=1)


class MeanAbsoluteError(Loss):
    name = "mae"
    kernel = "mae"

    def _row_losses(self, p, y):
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
    """A loss object from an instance, a class, a name or a ``config()``."""
    if isinstance(loss, dict):
        config = dict(loss)
        return LOSSES[check_choice("loss", config.pop("name", None), tuple(LOSSES))](**config)
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    if isinstance(loss, str):
        loss = ALIASES.get(loss.lower(), loss)
    return LOSSES[check_choice("loss", loss, tuple(LOSSES))]()


def sample_shares(weights):
    """Each sample's part of the batch's total weight (all zero when the batch weighs nothing): the
    factors of the weighted objective ``sum(w * loss) / sum(w)``."""
    total = weights.sum()
    return weights / np.maximum(total, np.finfo(weights.dtype).tiny)
