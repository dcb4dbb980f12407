"""Model: a stack of layers, a loss, an optimizer and the shared trainer.

The trainer is backend-blind. Data moves to the backend once per ``fit``;
each step runs either the backend's compiled step (``Backend.compile_step``)
or the per-layer path below, and both give the same numbers. Losses and
accuracies stay on the device until an epoch is reported.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

import numpy as np

from . import io
from .backends import Backend, get_backend
from .errors import TrainingDivergedError
from .layers import Dense, Layer, Softmax
from .losses import CategoricalCrossentropy, get_loss
from .metrics import get_metric
from .optimizers import get_optimizer
from .progress import make_progress
from .validation import check_choice, check_features, check_positive_int, check_seed, check_targets

DTYPES = ("float32", "float64")


class History:
    """Per-epoch metrics: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``, ..."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epochs = 0
        self.steps = 0  # training steps completed
        self.seconds = 0.0  # wall-clock time of the training loop
        self.first_epoch_seconds = None  # includes compiling, where a backend compiles on first use
        self.interrupted = False

    @property
    def steps_per_second(self):
        """Steady-state speed: steps after the first epoch per second after it (None before a second epoch)."""
        if self.epochs < 2 or self.seconds <= self.first_epoch_seconds:
            return None
        return (self.steps - self.steps / self.epochs) / (self.seconds - self.first_epoch_seconds)

    def append(self, logs: dict):
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self.epochs += 1

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = {k: round(v[-1], 6) for k, v in self.history.items()}
        return f"History(epochs={self.epochs}, last={last})"


class Model:
    """A sequential network trained with explicit forward and backward passes.

    ``backend``: a name, a Backend, or None for the current one (see
    ``nnbackends.use_backend``); ``seed`` seeds the one host generator behind
    weight initialization, shuffling and dropout; ``dtype`` is float32 or float64.
    """

    def __init__(self, backend=None, seed=None, dtype="float32"):
        self.backend = get_backend(_check_backend_type(backend))
        self.dtype = check_choice("dtype", str(np.dtype(dtype)) if _is_dtype(dtype) else dtype, DTYPES)
        self.seed = check_seed("seed", seed)
        self.rng = np.random.default_rng(self.seed)
        self.layers: list[Layer] = []
        self.loss = self.optimizer = self.metric = None
        self._n_features = None  # output width of the stack so far
        self._compiled_step = None

    # ------------------------------------------------------------------ building
    def add(self, layer: Layer):
        """Append a layer; its input size must match the current output size."""
        if not isinstance(layer, Layer):
            raise TypeError(f"add() takes a Layer, got {layer!r} ({type(layer).__name__}).")
        if isinstance(layer, Dense) and self._n_features is not None and layer.n_inputs != self._n_features:
            i, prev = next((i, l) for i, l in reversed(list(enumerate(self.layers))) if isinstance(l, Dense))
            raise ValueError(
                f"Layer sizes do not chain: layer {len(self.layers)} Dense({layer.n_inputs}, {layer.n_neurons}) "
                f"takes n_inputs={layer.n_inputs}, but layer {i} Dense({prev.n_inputs}, {prev.n_neurons}) "
                f"gives {self._n_features} outputs; expected n_inputs={self._n_features}."
            )
        self._n_features = layer.build(self.backend, self.dtype, self.rng, self._n_features)
        self.layers.append(layer)
        self._compiled_step = None
        return self

    def _first_dense(self) -> Dense:
        dense = next((l for l in self.layers if isinstance(l, Dense)), None)
        if dense is None:
            raise ValueError("The model has no Dense layer; add layers before compile, fit or predict.")
        return dense

    @property
    def n_inputs(self) -> int:
        return self._first_dense().n_inputs

    @property
    def n_outputs(self) -> int:
        return self._n_features

    def params(self):
        return [p for layer in self.layers for p in layer.params()]

    def compile(self, loss="categorical_crossentropy", optimizer="adam", metrics=("accuracy",)):
        """Choose the loss, optimizer (objects or names) and metric; resets optimizer state."""
        self._first_dense()  # a model needs at least one
        if isinstance(metrics, str):
            metrics = [metrics]
        metrics = list(metrics or [])
        if len(metrics) > 1:
            raise ValueError(f"metrics takes at most one metric, got {metrics!r}.")
        self.loss = get_loss(loss).bind(self.backend)
        self.optimizer = get_optimizer(optimizer).build(self.backend, self.params())
        self.metric = get_metric(metrics[0], self.loss).bind(self.backend) if metrics else None
        self._compiled_step = None
        return self

    @property
    def softmax_cce(self) -> bool:
        """Whether the fused softmax + cross-entropy gradient applies."""
        return isinstance(self.layers[-1], Softmax) and isinstance(self.loss, CategoricalCrossentropy)

    # ------------------------------------------------------------------ passes
    def forward(self, x, training=False):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, out, y):
        """Backpropagate the loss gradient; fills every ``param.grad``."""
        layers = self.layers
        if self.softmax_cce:
            dy = self.backend.softmax_cce_backward(out, y)
            layers = layers[:-1]
        else:
            dy = self.loss.backward(out, y)
        last = len(layers) - 1
        first_dense = next(i for i, l in enumerate(layers) if isinstance(l, Dense))
        for i in range(last, first_dense - 1, -1):
            dy = layers[i].backward(dy, need_dx=i > first_dense)

    def regularization_loss(self, params=None):
        """Sum of the regularization losses of ``params`` (default: all), a 0-d backend array, or None."""
        total = None
        for p in self.params() if params is None else params:
            if p.regularized:
                term = self.backend.regularization_loss(p.value, p.l1, p.l2)
                total = term if total is None else total + term
        return total

    def train_step(self, x, y):
        """One per-layer step on a batch: returns (data_loss, accuracy, finite)."""
        out = self.forward(x, training=True)
        data_loss = self.loss.forward(out, y)
        accuracy = self.metric(out, y) if self.metric else None
        self.backward(out, y)
        params = self.params()
        if not self.backend.all_finite([data_loss, *(p.grad for p in params)]):
            return data_loss, accuracy, False
        for p in params:
            self.optimizer.update(p)
        return data_loss, accuracy, True

    def _step_function(self, compiled):
        if compiled is False:
            return self.train_step
        if self._compiled_step is None:
            self._compiled_step = self.backend.compile_step(self) or False
        if self._compiled_step:
            return self._compiled_step
        if compiled:
            raise ValueError(
                f"compiled=True, but the {self.backend.name!r} backend has no compiled step for this model; "
                "use compiled=None to fall back to the per-layer path."
            )
        return self.train_step

    # ------------------------------------------------------------------ data
    def _prepare(self, X, y, x_name="X", y_name="y"):
        """Validate host data and move it to the backend once."""
        self._require_compiled()
        X = check_features(x_name, X, self.n_inputs, self.dtype)
        y = check_targets(y_name, y, X.shape[0], x_name, self.dtype)
        y = self.loss.prepare_targets(y, self.n_outputs, self.dtype, y_name)
        return self.backend.asarray(X, self.dtype), self.backend.asarray(y), y

    def _require_compiled(self):
        if self.loss is None:
            raise RuntimeError("Call model.compile(loss=..., optimizer=...) before fit or evaluate.")

    # ------------------------------------------------------------------ training
    def fit(self, X, y, epochs=1, batch_size=None, shuffle=True, validation_data=None, verbose=1,
            compiled=None) -> History:
        """Train; returns a History of per-epoch ``loss``, ``accuracy`` and ``val_`` entries.

        ``batch_size=None`` trains on the full batch. ``compiled=None`` uses the
        backend's compiled step when it has one for this model, ``False`` forces
        the per-layer path, ``True`` requires the compiled step. A loss or
        gradient that stops being finite raises ``TrainingDivergedError`` with
        the weights of the last finite step kept. Ctrl-C stops after the
        current step and returns the history so far (``history.interrupted``).
        """
        epochs = check_positive_int("epochs", epochs)
        x, y_dev, y_host = self._prepare(X, y)
        n = x.shape[0]
        batch_size = n if batch_size is None else min(check_positive_int("batch_size", batch_size), n)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise TypeError("validation_data must be a tuple (X_val, y_val).")
            val = self._prepare(*validation_data, x_name="X_val", y_name="y_val")[:2]
        if self.metric:
            self.metric.adapt(y_host)
        step = self._step_function(compiled)
        steps_per_epoch = math.ceil(n / batch_size)
        history = History()
        progress = make_progress(verbose, epochs, steps_per_epoch)
        opt = self.optimizer
        regularized = [p for p in self.params() if p.regularized]
        # A step that overflows raises TrainingDivergedError below; NumPy's warnings would only repeat it.
        start = time.perf_counter()
        with _deferred_interrupt() as interrupted, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(1, epochs + 1):
                order = None
                if shuffle and steps_per_epoch > 1:
                    order = self.backend.asarray(self.rng.permutation(n))
                loss_sum = acc_sum = 0.0
                reg_sum = 0.0
                for s in range(steps_per_epoch):
                    rows = slice(s * batch_size, (s + 1) * batch_size)
                    if order is not None:  # gather a batch at a time: no shuffled copy of the whole data
                        rows = order[rows]
                    xb, yb = x[rows], y_dev[rows]
                    opt.pre_update()
                    reg = self.regularization_loss(regularized) if regularized else None  # weights before the step
                    data_loss, acc, finite = step(xb, yb)
                    if not finite:
                        raise self._diverged(epoch, s + 1, history, data_loss)
                    opt.post_update()
                    history.steps += 1
                    weight = xb.shape[0] / n
                    loss_sum = loss_sum + data_loss * weight
                    if acc is not None:
                        acc_sum = acc_sum + acc * weight
                    if reg is not None:
                        reg_sum = reg_sum + reg * weight
                    if interrupted():
                        break
                if s + 1 == steps_per_epoch:  # the epoch is complete (Ctrl-C may cut one short)
                    logs = self._epoch_logs(loss_sum, reg_sum, acc_sum)
                    if val is not None:
                        logs.update({"val_" + k: v for k, v in self._evaluate_device(*val).items()})
                    history.append(logs)
                    history.seconds = time.perf_counter() - start
                    if epoch == 1:
                        history.first_epoch_seconds = history.seconds
                    progress.epoch_end(epoch, logs)
                if interrupted():
                    history.interrupted = True
                    progress.interrupted(epoch)
                    break
        progress.close()
        return history

    def _epoch_logs(self, loss_sum, reg_sum, acc_sum):
        def host(v):  # sums stay Python floats when nothing was added to them
            return v if isinstance(v, float) else self.backend.to_float(v)

        data_loss, reg_loss = host(loss_sum), host(reg_sum)
        logs = {"loss": data_loss + reg_loss, "data_loss": data_loss, "regularization_loss": reg_loss}
        if self.metric:
            logs["accuracy"] = host(acc_sum)
        return logs

    def _diverged(self, epoch, step, history, data_loss):
        loss = self.backend.to_float(data_loss)
        what = "the loss" if not math.isfinite(loss) else "a gradient"
        return TrainingDivergedError(
            f"Training diverged at epoch {epoch}, step {step}: {what} became NaN or Inf "
            f"(loss {loss}). The model keeps the weights of the last finite step; "
            f"try a lower learning rate (now {self.optimizer.current_learning_rate:g}).",
            epoch=epoch, step=step, history=history,
        )

    # ------------------------------------------------------------------ inference
    def _evaluate_device(self, x, y):
        out = self.forward(x, training=False)
        logs = {"loss": self.backend.to_float(self.loss.forward(out, y))}
        reg = self.regularization_loss()
        if reg is not None:
            logs["loss"] += self.backend.to_float(reg)
        if self.metric:
            logs["accuracy"] = self.backend.to_float(self.metric(out, y))
        return logs

    def evaluate(self, X, y) -> dict:
        """Loss (data + regularization) and accuracy on (X, y) in inference mode."""
        x, y_dev, y_host = self._prepare(X, y)
        if self.metric:
            self.metric.adapt(y_host)
        return self._evaluate_device(x, y_dev)

    def predict(self, X, batch_size=None) -> np.ndarray:
        """Outputs of the network for X (inference mode), as a host NumPy array."""
        X = check_features("X", X, self.n_inputs, self.dtype)
        n = X.shape[0]
        batch_size = n if batch_size is None else check_positive_int("batch_size", batch_size)
        parts = []
        for start in range(0, n, batch_size):
            x = self.backend.asarray(X[start:start + batch_size], self.dtype)
            parts.append(self.backend.to_numpy(self.forward(x, training=False)))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every parameter in layer order (each Dense: W, then b)."""
        return [self.backend.to_numpy(p.value).copy() for p in self.params()]

    def set_weights(self, weights):
        """Copy host arrays into the parameters (in place, shapes must match)."""
        params = self.params()
        weights = list(weights)
        if len(weights) != len(params):
            raise ValueError(f"set_weights expected {len(params)} arrays, got {len(weights)}.")
        for i, (p, w) in enumerate(zip(params, weights)):
            w = np.asarray(w)
            if w.shape != p.value.shape:
                raise ValueError(f"set_weights: array {i} ({p.name}) has shape {w.shape}, expected {p.value.shape}.")
            p.value[...] = self.backend.asarray(w, self.dtype)

    def summary(self, print_fn=print) -> str:
        """A table of layers, output sizes and parameter counts (printed and returned)."""
        rows, width, total = [], None, 0
        for layer in self.layers:
            width = layer.n_neurons if isinstance(layer, Dense) else width
            count = sum(int(np.prod(p.value.shape)) for p in layer.params())
            total += count
            rows.append(f"{layer!r:<60} {str(width):>8} {count:>10}")
        lines = [f"Model on {self.backend.name!r} ({self.dtype})",
                 f"{'layer':<60} {'outputs':>8} {'params':>10}", *rows, f"total parameters: {total}"]
        if self.loss is not None:
            lines.append(f"loss: {self.loss.name}   optimizer: {self.optimizer!r}")
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write weights and architecture to one ``.safetensors`` file, atomically."""
        io.save_model(self, path)


def load_model(path, backend=None):
    """Rebuild a model saved with ``Model.save`` on any backend; never executes file contents."""
    return io.load_model(path, backend)


def _check_backend_type(backend):
    """None, a Backend or a name (an unknown name is the registry's ``UnknownBackendError``, a ValueError)."""
    if backend is None or isinstance(backend, (Backend, str)):
        return backend
    raise TypeError(f"backend must be a backend name or a Backend, got {backend!r} ({type(backend).__name__}).")


def _is_dtype(dtype) -> bool:
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return not isinstance(dtype, str)


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn Ctrl-C into a flag checked between steps, so a step is never half applied.

    Only the main thread can own SIGINT; elsewhere the flag is never set.
    """
    hit = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if hit:  # a second Ctrl-C means: stop now
            raise KeyboardInterrupt
        hit.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)
