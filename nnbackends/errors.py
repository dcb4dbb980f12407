"""Exceptions raised by nnbackends."""
from __future__ import annotations


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that is unknown or cannot run on this machine."""


class UnknownBackendError(BackendUnavailableError, ValueError):
    """A backend name that is not registered: a bad argument as well as an unavailable backend."""


class TrainingDivergedError(FloatingPointError):
    """The loss or a gradient stopped being finite during ``fit``.

    The model keeps the weights of the last finite step; ``history`` holds the
    epochs completed before the failure.
    """

    def __init__(self, message, *, epoch, step, history):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.history = history


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``fit`` after its current step (``fit(on_interrupt="raise")``, the default).

    A ``KeyboardInterrupt``, so a script or a sweep of fits stops at one press; the model keeps
    the weights of the last completed step and ``history`` holds the epochs completed before it.
    """

    def __init__(self, message, *, history):
        super().__init__(message)
        self.history = history


class ModelFileError(ValueError):
    """A model file is not a valid nnbackends safetensors file."""


class ExportError(ValueError):
    """A model cannot be written in a target format (ONNX, a PyTorch state dict): a layer the
    target cannot express, or a target version the installed libraries do not support."""
