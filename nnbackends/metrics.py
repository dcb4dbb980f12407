"""Metrics: accuracies, and the regression errors MAE, MSE, RMSE and R².

Each step adds a metric's per-batch mean (weighted by the batch's share of the
epoch) on the device, pulled to the host only when an epoch is reported; the
reported figure is ``value(mean)``. A regression metric whose error is the
loss itself (MSE with an MSE loss, say) computes nothing per batch: it is read
from the epoch's data loss (``kernel`` None), so the fused steps run as with no metric.
"""
from __future__ import annotations

import math

import numpy as np

from .validation import check_choice, check_float


class Metric:
    name = "accuracy"  # its key in the logs and the History
    kernel: str | None  # the backend kernel of its per-batch mean (read by fused steps); None: the data loss

    def bind(self, backend, loss):
        self.backend = backend
        return self

    def adapt(self, y_host):
        """Learn anything the metric needs from the training targets (host array)."""

    def __call__(self, p, y):
        """The per-batch mean, a 0-d backend array."""
        return getattr(self.backend, self.kernel)(p, y)

    def target_variance(self, y):
        """What ``value`` needs of the targets ``y`` (a backend array) besides the mean: for R², their variance."""
        return None

    def value(self, mean, target_variance=None) -> float:
        """The reported figure from the epoch's (or data set's) mean of the per-batch values."""
        return mean

    def config(self):
        return {"class": type(self).__name__}


class CategoricalAccuracy(Metric):
    """Fraction of samples whose highest output is the true class."""

    kernel = "categorical_accuracy"


class BinaryAccuracy(Metric):
    """Fraction of outputs on the right side of 0.5."""

    kernel = "binary_accuracy"


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


class RegressionError(Metric):
    """A figure of the mean absolute (``error = "mae"``) or squared (``"mse"``) error of the outputs."""

    error: str

    def bind(self, backend, loss):
        super().bind(backend, loss)
        self.kernel = None if loss.name == self.error else self.error + "_loss"
        return self


class MAE(RegressionError):
    """Mean absolute error."""

    name, error = "mae", "mae"


class MSE(RegressionError):
    """Mean squared error."""

    name, error = "mse", "mse"


class RMSE(RegressionError):
    """Root of the mean squared error."""

    name, error = "rmse", "mse"

    def value(self, mean, target_variance=None):
        return math.sqrt(max(mean, 0.0))


class R2(RegressionError):
    """Coefficient of determination, ``1 - MSE / variance of the targets`` (over several outputs, the
    ratio of the sums: scikit-learn's ``r2_score(multioutput="variance_weighted")``). Constant targets
    give 1.0 when predicted exactly and 0.0 otherwise, as scikit-learn's ``force_finite`` does."""

    name, error = "r2", "mse"
    variance = None  # of the training targets, from adapt

    def target_variance(self, y):
        return float(self.backend.to_float(y.var(axis=0).mean()))

    def adapt(self, y_host):
        y = np.asarray(y_host, np.float64)
        self.variance = float(y.reshape(len(y), -1).var(axis=0).mean())

    def value(self, mean, target_variance=None):
        variance = self.variance if target_variance is None else target_variance
        if variance == 0.0:
            return 1.0 if mean == 0.0 else 0.0
        return 1.0 - mean / variance


METRICS = {cls.__name__: cls for cls in (CategoricalAccuracy, BinaryAccuracy, RegressionAccuracy, MAE, MSE, RMSE, R2)}
#: What ``"accuracy"`` means for each loss, and what a model reports when compile is given no metric.
_ACCURACY_FOR_LOSS = {
    "categorical_crossentropy": CategoricalAccuracy,
    "binary_crossentropy": BinaryAccuracy,
    "mse": RegressionAccuracy,
    "mae": RegressionAccuracy,
}
_DEFAULT_FOR_LOSS = {**_ACCURACY_FOR_LOSS, "mse": R2, "mae": R2}
NAMES = {"accuracy": None, "categorical_accuracy": CategoricalAccuracy, "binary_accuracy": BinaryAccuracy,
         "regression_accuracy": RegressionAccuracy, "mae": MAE, "mean_absolute_error": MAE, "mse": MSE,
         "mean_squared_error": MSE, "rmse": RMSE, "r2": R2}


def get_metric(metric, loss) -> Metric:
    """A metric from an instance or a name; ``"accuracy"`` picks the accuracy that fits ``loss`` (for
    regression the nnfs book's share within a precision), ``"auto"`` the loss's default (R² for regression)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str) and metric.lower() == "auto":
        return _DEFAULT_FOR_LOSS[loss.name]()
    cls = NAMES[check_choice("metric", metric, tuple(NAMES))] or _ACCURACY_FOR_LOSS[loss.name]
    if issubclass(cls, RegressionError) and loss.classifies:
        raise ValueError(f"metric {metric!r} is a regression metric, but the loss {loss.name} classifies; "
                         "use 'accuracy'.")
    return cls()


def metric_from_config(config: dict) -> Metric:
    config = dict(config)
    cls = METRICS[check_choice("metric class", config.pop("class"), tuple(METRICS))]
    return cls(**config)
