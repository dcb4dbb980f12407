"""Accuracy metrics, computed on the device and pulled to the host only when reported."""
from __future__ import annotations

import numpy as np

from .validation import check_choice, check_float


class Metric:
    name = "accuracy"
    kernel: str  # the backend kernel that computes it (read by fused steps)

    def bind(self, backend):
        self.backend = backend
        return self

    def adapt(self, y_host):
        """Learn anything the metric needs from the training targets (host array)."""

    def __call__(self, p, y):
        raise NotImplementedError

    def config(self):
        return {"class": type(self).__name__}


class CategoricalAccuracy(Metric):
    """Fraction of samples whose highest output is the true class."""

    kernel = "categorical_accuracy"

    def __call__(self, p, y):
        return self.backend.categorical_accuracy(p, y)


class BinaryAccuracy(Metric):
    """Fraction of outputs on the right side of 0.5."""

    kernel = "binary_accuracy"

    def __call__(self, p, y):
        return self.backend.binary_accuracy(p, y)


class RegressionAccuracy(Metric):
    """Fraction of outputs within ``precision`` of the target.

    ``precision=None`` uses the nnfs book's choice, std(y_train) / 250.
    """

    kernel = "regression_accuracy"

    def __init__(self, precision=None):
        self.precision = None if precision is None else check_float("precision", precision, low=0.0, low_open=True)

    def adapt(self, y_host):
        if self.precision is None:
            self.precision = float(np.std(y_host)) / 250 or 1e-7

    def __call__(self, p, y):
        if self.precision is None:
            raise RuntimeError("RegressionAccuracy has no precision yet: pass precision=... or call "
                               "adapt(y_train) first (fit and evaluate do).")
        return self.backend.regression_accuracy(p, y, self.precision)

    def config(self):
        return {"class": type(self).__name__, "precision": self.precision}


METRICS = {cls.__name__: cls for cls in (CategoricalAccuracy, BinaryAccuracy, RegressionAccuracy)}
_FOR_LOSS = {
    "categorical_crossentropy": CategoricalAccuracy,
    "binary_crossentropy": BinaryAccuracy,
    "mse": RegressionAccuracy,
    "mae": RegressionAccuracy,
}


def get_metric(metric, loss) -> Metric:
    """A metric from an instance or a name; ``"accuracy"`` picks the one that fits ``loss``."""
    if isinstance(metric, Metric):
        return metric
    names = {"accuracy": None, "categorical_accuracy": CategoricalAccuracy,
             "binary_accuracy": BinaryAccuracy, "regression_accuracy": RegressionAccuracy}
    cls = names[check_choice("metric", metric, tuple(names))] or _FOR_LOSS[loss.name]
    return cls()


def metric_from_config(config: dict) -> Metric:
    config = dict(config)
    cls = METRICS[check_choice("metric class", config.pop("class"), tuple(METRICS))]
    return cls(**config)
