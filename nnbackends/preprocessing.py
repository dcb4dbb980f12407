"""Steps applied to the features before the first layer, fitted on the training data and saved with the model.

``Model.preprocess`` holds one (or None). ``fit`` fits it on its training
features the first time (a resumed or second ``fit`` keeps the fitted values),
and ``fit``, ``evaluate`` and ``predict`` apply it on the host before the data
move to the backend, so the compiled steps train on the transformed data.
"""
from __future__ import annotations

import numpy as np


class Standardize:
    """Each feature centred on its training mean and divided by its training standard deviation
    (a constant feature is only centred)."""

    def __init__(self):
        self.mean = self.scale = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, X):
        X = np.asarray(X, np.float64)
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)
        return self

    def __call__(self, X) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("Standardize is not fitted: fit it on training features (Model.fit does).")
        if X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Standardize was fitted on {self.mean.shape[0]} features, got {X.shape[1]}.")
        return (X - self.mean) / self.scale

    def tensors(self) -> dict[str, np.ndarray]:
        """The fitted values, by name, for a model file."""
        return {"mean": self.mean, "scale": self.scale}

    def restore(self, tensors: dict):
        self.mean, self.scale = np.asarray(tensors["mean"], np.float64), np.asarray(tensors["scale"], np.float64)
        return self

    def config(self) -> dict:
        return {"class": type(self).__name__}

    def __repr__(self):
        return f"{type(self).__name__}({'fitted' if self.fitted else 'not fitted'})"


PREPROCESSORS = {cls.__name__: cls for cls in (Standardize,)}
