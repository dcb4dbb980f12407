"""nnbackends: a small neural-network engine with interchangeable array backends.

    import nnbackends as nb
    X, y = nb.datasets.spiral_data(100, 3)
    model = nb.Model(backend="auto", seed=0)
    model.add(nb.layers.Dense(2, 64)); model.add(nb.layers.ReLU())
    model.add(nb.layers.Dense(64, 3)); model.add(nb.layers.Softmax())
    model.compile(loss="categorical_crossentropy", optimizer=nb.optimizers.Adam(0.05, decay=5e-7))
    history = model.fit(X, y, epochs=10_000)
"""
from . import datasets, layers, losses, metrics, optimizers
from .backends import (
    available_backends,
    current_backend,
    get_backend,
    register_backend,
    registered_backends,
    use_backend,
)
from .errors import (BackendUnavailableError, ModelFileError, TrainingDivergedError, TrainingInterrupted,
                     UnknownBackendError)
from .model import History, Model, load_model

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "History",
    "Model",
    "ModelFileError",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "UnknownBackendError",
    "available_backends",
    "current_backend",
    "datasets",
    "get_backend",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "optimizers",
    "register_backend",
    "registered_backends",
    "use_backend",
]
