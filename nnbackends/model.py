"""Model: a stack of layers, a loss, an optimizer and the shared trainer.

The trainer (``trainer.Trainer``) is backend-blind. Data moves to the backend
once per ``fit``; each step runs either the backend's fused step
(``Backend.fused_step``) or the per-layer path below, and both give the same
numbers. Losses and accuracies stay on the device until an epoch is reported.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from . import data_parallel, labels, model_state
from .backends import Backend, get_backend
from .distributed import as_comm, guarded
from .history import History
from .layers import Dense, Layer, Softmax, activation
from .losses import CategoricalCrossentropy, get_loss, sample_shares
from .metrics import get_metric
from .model_files import read_model_file, write_model_file
from .optimizers import get_optimizer
from .progress import make_progress
from .trainer import BatchSource, Trainer
from .validation import (check_dtype, check_feature_names, check_features, check_positive_int,
                         check_sample_weight, check_seed, check_targets, column_names, host_array, sample_weights,
                         split_for_validation)

__all__ = ["History", "Model", "load_model"]

DTYPES = ("float32", "float64")


class Model:
    """A sequential network trained with explicit forward and backward passes.

    ``layers``: layers to ``add`` at once; ``backend``: a name, a Backend, or
    None for the current one (see ``nnbackends.use_backend``); ``seed`` seeds
    the one host generator behind weight initialization, shuffling and dropout;
    ``dtype`` is float32 or float64.
    """

    def __init__(self, layers=(), backend=None, seed=None, dtype="float32"):
        if isinstance(layers, (str, Backend)):  # Model("numpy"), from before layers came first
            warnings.warn("Model(backend) is deprecated; write Model(backend=...).", DeprecationWarning, stacklevel=2)
            layers, backend = (), layers
        self.backend = get_backend(backend)
        self.dtype = check_dtype("dtype", dtype, DTYPES)
        self.seed = check_seed("seed", seed)
        self.rng = np.random.default_rng(self.seed)
        self.layers: list[Layer] = []
        self.loss = self.optimizer = self.metric = None
        self._n_features = None  # output width of the stack so far
        self._fused_step = None
        self.epochs_trained = 0  # over the model's life: saved, and counted on by a resumed fit
        self.stop_training = False  # a callback sets it to end training after the current epoch
        self.comm = as_comm(None)  # that of the latest fit: only its root writes files
        # Names kept with the model and in its file (None: not known): the original class labels of a
        # classifier's outputs (learned by fit, see nnbackends.labels), the feature names (from a data
        # frame's columns or a file's header) and the label column's name.
        self._classes = None
        self.feature_names_ = None
        self.label_name_ = None
        self.preprocess = None  # a step such as preprocessing.Standardize(), applied to every input (see there)
        for layer in layers:
            self.add(layer)

    @property
    def classes_(self):
        """The class label of each output of a classifier (a list), or None."""
        return self._classes

    @classes_.setter
    def classes_(self, classes):
        self._classes = labels.check_classes(classes, self.n_outputs)

    # ------------------------------------------------------------------ building
    def add(self, layer: Layer):
        """Append a layer; its input size must match the current output size."""
        if not isinstance(layer, Layer):
            raise TypeError(f"add() takes a Layer, got {layer!r} ({type(layer).__name__}).")
        if isinstance(layer, Dense) and layer.n_inputs is None:
            if self._n_features is None:
                raise ValueError(f"{layer} is the first Dense layer, so it needs its input size too: "
                                 f"Dense(n_inputs, {layer.n_neurons}).")
            layer.n_inputs = self._n_features
        if isinstance(layer, Dense) and self._n_features is not None and layer.n_inputs != self._n_features:
            i, prev = next((i, l) for i, l in reversed(list(enumerate(self.layers))) if isinstance(l, Dense))
            raise ValueError(
                f"Layer sizes do not chain: layer {len(self.layers)} Dense({layer.n_inputs}, {layer.n_neurons}) "
                f"takes n_inputs={layer.n_inputs}, but layer {i} Dense({prev.n_inputs}, {prev.n_neurons}) "
                f"gives {self._n_features} outputs; expected n_inputs={self._n_features}."
            )
        self._n_features = layer.build(self.backend, self.dtype, self.rng, self._n_features)
        self.layers.append(layer)
        self._fused_step = None
        if getattr(layer, "activation", None):
            self.add(activation(layer.activation))
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

    def compile(self, loss="categorical_crossentropy", optimizer="adam", metrics="auto"):
        """Choose the loss, optimizer (objects or names) and metric; resets optimizer state.

        ``metrics``: at most one metric, by name or object (``nnbackends.metrics``), logged under its
        name; ``"auto"`` is accuracy for a classification loss and R² (``"r2"``) for MSE and MAE.
        A cross-entropy expects probabilities from a Softmax (Sigmoid) last layer, or raw scores
        from a last Dense layer with ``CategoricalCrossentropy(from_logits=True)``.
        """
        self._first_dense()  # a model needs at least one
        if isinstance(metrics, str):
            metrics = [metrics]
        metrics = list(metrics or [])
        if len(metrics) > 1:
            raise ValueError(f"metrics takes at most one metric, got {metrics!r}.")
        loss = get_loss(loss).bind(self.backend)
        optimizer = get_optimizer(optimizer)
        metric = get_metric(metrics[0], loss).bind(self.backend, loss) if metrics else None
        loss.check_last_layer(self.layers[-1])
        self.loss, self.optimizer, self.metric = loss, optimizer.build(self.backend, self.params()), metric
        self._fused_step = None
        return self

    @property
    def softmax_cce(self) -> bool:
        """Whether the fused softmax + cross-entropy gradient applies past a Softmax layer."""
        return isinstance(self.layers[-1], Softmax) and isinstance(self.loss, CategoricalCrossentropy)

    @property
    def batch_metric(self):
        """The metric when each step computes it (the fused steps read this), None when there is none
        or it comes from the epoch's loss."""
        return self.metric if self.metric is not None and self.metric.kernel is not None else None

    # ------------------------------------------------------------------ passes
    def forward(self, x, training=False):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, out, y, row_scale=None):
        """Backpropagate the loss gradient; fills every ``param.grad``.

        ``row_scale`` (n,) multiplies each sample's gradient (sample weights).
        """
        layers = self.layers
        if self.softmax_cce:
            dy = self.backend.softmax_cce_backward(out, y)
            layers = layers[:-1]
        else:
            dy = self.loss.backward(out, y)
        if row_scale is not None:
            dy = dy * row_scale[:, None]
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

    def train_step(self, x, y, sample_weight=None):
        """One per-layer step on a batch: returns (data_loss, accuracy, finite)."""
        data_loss, accuracy = self.compute_gradients(x, y, sample_weight)
        params = self.params()
        if not self.backend.all_finite([data_loss, *(p.grad for p in params)]):
            return data_loss, accuracy, False
        for p in params:
            self.optimizer.update(p)
        return data_loss, accuracy, True

    def compute_gradients(self, x, y, sample_weight=None):
        """Forward and backward passes on a batch, filling every ``param.grad``: returns (data_loss, accuracy).

        With ``sample_weight`` the objective is ``sum(w * loss) / sum(w)`` over the batch.
        """
        out = self.forward(x, training=True)
        accuracy = self.metric(self.loss.metric_scores(out), y) if self.batch_metric else None
        if sample_weight is None:
            data_loss = self.loss.forward(out, y)
            self.backward(out, y)
        else:
            share = sample_shares(sample_weight)
            data_loss = (self.loss.row_losses(out, y) * share).sum()
            self.backward(out, y, row_scale=share * x.shape[0])
        return data_loss, accuracy

    def _step_function(self, fused):
        if fused is False:
            return self.train_step
        if self._fused_step is None:
            self._fused_step = self.backend.fused_step(self) or False
        if self._fused_step:
            return self._fused_step
        if fused:
            raise ValueError(
                f"fused=True, but the {self.backend.name!r} backend has no fused step for this model; "
                "use fused=None to fall back to the per-layer path."
            )
        return self.train_step

    # ------------------------------------------------------------------ data
    def _prepare(self, X, y, x_name="X", y_name="y", learn=False):
        """Validate host data and move it to the backend once; ``learn``: a fit may learn names from it."""
        self._require_loss()
        X = self._features(x_name, X, learn)
        y = check_targets(y_name, self._class_indices(y_name, y, learn), X.shape[0], x_name, self.dtype)
        y = self.loss.prepare_targets(y, self.n_outputs, self.dtype, y_name)
        return self.backend.asarray(X, self.dtype), self.backend.asarray(y), y

    def _features(self, name, X, learn=False) -> np.ndarray:
        """``check_features``, and a data frame's columns checked against (or, learning, kept as) the feature names."""
        names = column_names(X)
        if names is not None and self.feature_names_ is None and learn:
            self.feature_names_ = names
        elif names is not None and self.feature_names_ is not None:
            check_feature_names(name, self.feature_names_, names)
        X = check_features(name, X, self.n_inputs, self.dtype)
        if self.preprocess is not None:
            if learn and not self.preprocess.fitted:
                self.preprocess.fit(X)
            X = self.preprocess(X)
        return X

    def class_indices(self, y, name="y") -> np.ndarray:
        """The class index of each of a classifier's labels ``y`` (names looked up in ``classes_``)."""
        return self._class_indices(name, y, learn=False)

    def _class_indices(self, name, y, learn):
        """A classifier's labels as class indices (names looked up in, or learned into, ``classes_``)."""
        if not self.loss.classifies:
            return y
        y, classes = labels.class_indices(name, host_array(name, y), self.classes_, self.n_outputs, learn)
        self.classes_ = classes
        return y

    def _require_loss(self):
        if self.loss is None:
            raise RuntimeError("Call model.compile(loss=..., optimizer=...) before fit, evaluate or save.")

    # ------------------------------------------------------------------ training
    @guarded
    def fit(self, X, y, epochs=1, batch_size=None, shuffle=True, validation_data=None, verbose=1,
            fused=None, callbacks=(), validation_split=None, sample_weight=None, class_weight=None,
            compiled=None, comm=None, sharded=False, on_interrupt="raise") -> History:
        """Train; returns a History of per-epoch ``loss``, ``accuracy`` and ``val_`` entries.

        ``batch_size=None`` trains on the full batch. ``fused=None`` uses the
        backend's fused step when it has one for this model, ``False`` forces
        the per-layer path, ``True`` requires the fused step (``compiled`` is
        its deprecated name). ``callbacks``: ``nnbackends.callbacks`` objects.
        ``validation_split``: the last fraction of the rows (before shuffling)
        is held out as ``validation_data``. ``sample_weight`` (one weight per
        row) or ``class_weight`` (``{class: weight}``) make each batch's
        objective ``sum(w * loss) / sum(w)``; they train on the per-layer path.
        A loss or gradient that stops being finite raises
        ``TrainingDivergedError`` with the weights of the last finite step kept.
        Ctrl-C stops after the current step, ends the callbacks and raises
        ``TrainingInterrupted`` (a ``KeyboardInterrupt``; its ``history`` holds the
        epochs so far); ``on_interrupt="return"`` returns that history instead
        (``history.interrupted``).

        ``comm``: an ``nnbackends.distributed.MPIComm`` to train data-parallel over
        its ranks, every rank calling ``fit`` with the same arguments: ``batch_size``
        is the global batch, each rank passes the whole data set, or only its own
        rows with ``sharded=True``; every rank ends with the same weights and
        history, and only the root shows progress (``nnbackends.data_parallel``).
        ``validation_data``, evaluated on each rank, should be the same on every
        rank. An exception on one rank ends every rank (``distributed.guarded``).
        """
        comm = as_comm(comm)
        if compiled is not None:
            warnings.warn("fit(compiled=...) is deprecated; use fit(fused=...).", DeprecationWarning, stacklevel=3)
            fused = compiled if fused is None else fused
        epochs = check_positive_int("epochs", epochs)
        if batch_size is not None:
            batch_size = check_positive_int("batch_size", batch_size)
        if validation_split is not None:
            if validation_data is not None:
                raise ValueError("Pass validation_data or validation_split, not both.")
            X, y = np.asarray(X), np.asarray(y)
            weights = () if sample_weight is None else (np.asarray(sample_weight),)
            (X, y, *weights), (X_val, y_val, *_) = split_for_validation(validation_split, X, y, *weights)
            sample_weight = weights[0] if weights else None
            validation_data = (X_val, y_val)
        x, y_dev, y_host = self._prepare(X, y, learn=True)
        if self.loss.classifies and self.classes_ is None:
            self.classes_ = list(range(self.n_outputs))
        weights = self._sample_weights(sample_weight, class_weight, y_host)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise TypeError("validation_data must be a tuple (X_val, y_val).")
            val = self._prepare(*validation_data, x_name="X_val", y_name="y_val")[:2]
        if self.metric:
            data_parallel.adapt_metric(self.metric, y_host, comm, sharded)
        if weights is not None and fused:
            raise ValueError("fused=True, but fused steps take no sample or class weights; use fused=None.")
        step = self._step_function(fused) if weights is None else self.train_step
        self.comm = comm
        if comm.size > 1:
            if weights is not None:
                raise ValueError("A distributed fit takes no sample or class weights yet; fit without them.")
            source, step = data_parallel.prepare(self, comm, x, y_dev, epochs, batch_size, shuffle, sharded, step,
                                                 fused)
        else:
            arrays = (x, y_dev) if weights is None else (x, y_dev, self.backend.asarray(weights, self.dtype))
            source = BatchSource(self.backend, arrays, batch_size, shuffle, self.rng)
        progress = make_progress(verbose if comm.is_root else 0, epochs, source.steps_per_epoch)
        return Trainer(self, step, source, progress, validation=val, callbacks=callbacks, comm=comm,
                       on_interrupt=on_interrupt).run(epochs)

    def _sample_weights(self, sample_weight, class_weight, y_host):
        """Host float64 weights per sample from ``sample_weight`` and/or ``class_weight``, or None."""
        if class_weight is not None and not self.loss.classifies:
            raise ValueError(f"class_weight needs a classification loss; this model trains with {self.loss.name}.")
        if class_weight is not None and self.classes_ is not None:
            class_weight = labels.keyed_by_index(class_weight, self.classes_)
        return sample_weights(sample_weight, class_weight, y_host, self.n_outputs)

    # ------------------------------------------------------------------ inference
    def _evaluate_device(self, x, y, weights=None, batch_size=None):
        n = x.shape[0]
        batch_size = n if batch_size is None else batch_size
        total = None if weights is None else weights.sum()
        loss = accuracy = 0.0
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            out, yb = self.forward(x[rows], training=False), y[rows]
            if weights is None:
                loss = loss + self.loss.forward(out, yb) * (out.shape[0] / n)
            else:
                loss = loss + (self.loss.row_losses(out, yb) * weights[rows]).sum() / total
            if self.batch_metric:
                accuracy = accuracy + self.metric(self.loss.metric_scores(out), yb) * (out.shape[0] / n)
        logs = {"loss": self.backend.to_float(loss)}
        reg = self.regularization_loss()
        if self.metric:
            mean = logs["loss"] if self.batch_metric is None else self.backend.to_float(accuracy)
            logs[self.metric.name] = self.metric.value(mean, self.metric.target_variance(y))
        if reg is not None:
            logs["loss"] += self.backend.to_float(reg)
        return logs

    def evaluate(self, X, y, batch_size=None, sample_weight=None) -> dict:
        """Loss (data + regularization) and accuracy on (X, y) in inference mode.

        ``sample_weight`` weighs each row's loss (``sum(w * loss) / sum(w)``); accuracy stays unweighted.
        """
        x, y_dev, y_host = self._prepare(X, y)
        if batch_size is not None:
            batch_size = check_positive_int("batch_size", batch_size)
        weights = None
        if sample_weight is not None:
            weights = self.backend.asarray(check_sample_weight("sample_weight", sample_weight, x.shape[0]),
                                           self.dtype)
        if self.metric:
            self.metric.adapt(y_host)
        return self._evaluate_device(x, y_dev, weights, batch_size)

    def predict(self, X, batch_size=None) -> np.ndarray:
        """Outputs of the network for X (inference mode), as a host NumPy array."""
        X = self._features("X", X)
        n = X.shape[0]
        batch_size = n if batch_size is None else check_positive_int("batch_size", batch_size)
        parts = []
        for start in range(0, n, batch_size):
            x = self.backend.asarray(X[start:start + batch_size], self.dtype)
            parts.append(self.backend.to_numpy(self.forward(x, training=False)))
        return np.concatenate(parts)

    def predict_classes(self, X, batch_size=None) -> np.ndarray:
        """A classifier's predicted class for each row of X: its label in ``classes_`` (the names fit saw)."""
        if self.loss is None or not self.loss.classifies:
            raise ValueError("predict_classes needs a classifier (categorical cross-entropy); use predict.")
        best = self.predict(X, batch_size).argmax(axis=1)
        return best if self.classes_ is None else labels.decode(best, self.classes_)

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
            w = host_array(f"set_weights array {i}", w)
            if w.shape != p.value.shape:
                raise ValueError(f"set_weights: array {i} ({p.name}) has shape {w.shape}, expected {p.value.shape}.")
            p.value[...] = self.backend.asarray(w, self.dtype)

    def summary(self, print_fn=print):
        """A table of layers, output sizes and parameter counts, given to ``print_fn`` line by line
        (as Keras does); ``print_fn=None`` returns the text instead of printing it."""
        rows, width, total = [], None, 0
        for layer in self.layers:
            width = layer.n_neurons if isinstance(layer, Dense) else width
            count = sum(int(np.prod(p.value.shape)) for p in layer.params())
            total += count
            rows.append(f"{str(layer):<24} {str(width):>8} {count:>10,}")
        lines = [f"Model on {self.backend.name!r} ({self.dtype})",
                 f"{'layer':<24} {'outputs':>8} {'params':>10}", *rows, f"total parameters: {total:,}"]
        if self.loss is not None:
            lines.append(f"loss: {self.loss!r}   optimizer: {self.optimizer!r}")
        if print_fn is None:
            return "\n".join(lines)
        for line in lines:
            print_fn(line)
        return None

    # ------------------------------------------------------------------ persistence
    def save(self, path, include_optimizer=True):
        """Write weights and architecture to one ``.safetensors`` file, atomically.

        ``include_optimizer`` also stores what an exact resume needs: the optimizer's
        state arrays and step count, the generator state and the epochs trained.
        After a distributed ``fit`` only the root of its communicator writes (every
        rank holds the same weights); the others return at once.
        """
        self._require_loss()
        if self.comm.is_root:
            write_model_file(path, *model_state.contents(self, include_optimizer))


def load_model(path, backend=None) -> Model:
    """Rebuild a model saved with ``Model.save`` on any backend; never executes file contents.

    A file saved with the optimizer state resumes exactly: ``fit`` on the loaded
    model goes on as the saved run would have.
    """
    tensors, metadata = read_model_file(path)
    backend = get_backend(backend)  # its errors are not the file's
    where = repr(os.fspath(path))
    with model_state.reading(where):
        model = Model(backend=backend, dtype=metadata["dtype"])
    return model_state.restore(model, tensors, metadata, where)
