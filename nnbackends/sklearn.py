"""scikit-learn estimators: ``NNClassifier`` and ``NNRegressor``, a dense network trained by ``Model.fit``.

    from nnbackends.sklearn import NNClassifier
    clf = NNClassifier(hidden_layer_sizes=(64,), epochs=300, random_state=0).fit(X, y)
    clf.predict_proba(X[:5]); clf.score(X, y)

The settings are those of ``sklearn.neural_network.MLPClassifier`` where the two
mean the same (``hidden_layer_sizes``, ``activation``, ``learning_rate`` as
MLP's ``learning_rate_init``, ``batch_size``, ``shuffle``, ``momentum``,
``beta_1``, ``beta_2``, ``epsilon``, ``warm_start``, ``random_state``,
``verbose``), and this package's elsewhere (``optimizer``, ``epochs``, ``l2``,
``dropout``, ``backend``, ``dtype``: None follows the data, float32 for float32 data and
float64 otherwise, as MLPClassifier does). Fitted, an estimator holds ``model_`` (the
``nnbackends.Model``), ``loss_curve_``, ``n_iter_``, ``n_features_in_``
(``feature_names_in_`` for data frames with string column names), and
``classes_`` or ``n_outputs_``.

Pickles hold plain arrays and settings (architecture, weights, optimizer state,
generator state), never a backend object; unpickling rebuilds the model on
the estimator's ``backend``. Needs scikit-learn >= 1.6 (its tags API):
``pip install "nnbackends[sklearn]"``.
"""
from __future__ import annotations

import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # validate_data and __sklearn_tags__ came with scikit-learn 1.6
    raise ImportError(f'nnbackends.sklearn needs scikit-learn >= 1.6 ({exc}): pip install "nnbackends[sklearn]"') \
        from exc

from .layers import Dense, Dropout, Linear, Softmax, activation, from_config
from .losses import get_loss
from .model import Model
from .optimizers import OPTIMIZERS, optimizer_from_config
from .validation import check_choice

#: Hidden activations by name; "logistic" and "identity" are MLPClassifier's names for two of them.
ESTIMATOR_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "linear", "logistic", "identity")
_ALIASES = {"logistic": "sigmoid", "identity": "linear"}
_PLAIN_FORMAT = "nnbackends.sklearn/1"


class _NNEstimator(BaseEstimator):
    """What the classifier and the regressor share: settings, building, training, pickling."""

    _output = None  # the output layer class
    _DATA = dict(dtype=(np.float64, np.float32))  # float32 data stays float32, anything else becomes float64

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam", learning_rate=0.001,
                 decay=0.0, momentum=0.9, beta_1=0.9, beta_2=0.999, epsilon=1e-7, epochs=200, batch_size="auto",
                 shuffle=True, l2=0.0, dropout=0.0, warm_start=False, backend=None, dtype=None,
                 random_state=None, verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.decay = decay
        self.momentum = momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.l2 = l2
        self.dropout = dropout
        self.warm_start = warm_start
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ building
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else sizes
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                                    for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be a positive integer or a sequence of them (empty for "
                             f"no hidden layer), got {self.hidden_layer_sizes!r}.")
        return [int(s) for s in sizes]

    def _seed(self):
        """The Model's seed: the int itself, a draw from a RandomState, or None (fresh entropy)."""
        if self.random_state is None or isinstance(self.random_state, numbers.Integral):
            return self.random_state
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _make_optimizer(self):
        name = check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        settings = {"learning_rate": self.learning_rate, "decay": self.decay}
        settings.update({"sgd": {"momentum": self.momentum}, "adagrad": {"epsilon": self.epsilon},
                         "rmsprop": {"epsilon": self.epsilon},
                         "adam": {"epsilon": self.epsilon, "beta_1": self.beta_1, "beta_2": self.beta_2}}[name])
        return OPTIMIZERS[name](**settings)

    def _build(self, n_inputs, n_outputs, data_dtype):
        act = check_choice("activation", self.activation, ESTIMATOR_ACTIVATIONS)
        act = _ALIASES.get(act, act)
        optimizer = self._make_optimizer()  # checks its settings before any weights are drawn
        model = Model(backend=self.backend, seed=self._seed(), dtype=self.dtype or data_dtype)
        width = n_inputs
        for size in self._hidden_sizes():
            model.add(Dense(width, size, weight_regularizer_l2=self.l2))
            model.add(activation(act))
            if self.dropout:
                model.add(Dropout(self.dropout))
            width = size
        model.add(Dense(width, n_outputs, weight_regularizer_l2=self.l2))
        model.add(self._output())
        model.compile(loss=self._loss_name(), optimizer=optimizer, metrics=())
        return model

    def _batch_size(self, n_samples):
        if self.batch_size == "auto":  # MLPClassifier's rule
            return min(200, n_samples)
        if self.batch_size is None:
            return None  # the full batch
        if isinstance(self.batch_size, numbers.Integral) and not isinstance(self.batch_size, bool) \
                and self.batch_size > 0:
            return int(self.batch_size)
        raise ValueError(f"batch_size must be 'auto', None (the full batch) or a positive integer, "
                         f"got {self.batch_size!r}.")

    # ------------------------------------------------------------------ training
    def _warm(self) -> bool:
        return bool(self.warm_start) and hasattr(self, "model_")

    def _train(self, X, targets, n_outputs, sample_weight):
        """Build (or, warm, keep) the model and train it; sets ``model_``, ``loss_curve_``, ``n_iter_``."""
        warm = self._warm()
        if warm and self.model_.n_outputs != n_outputs:
            raise ValueError(f"warm_start=True, but y needs {n_outputs} outputs and the fitted model has "
                             f"{self.model_.n_outputs}; set warm_start=False to start afresh.")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if (sample_weight < 0).any():
                raise ValueError("Negative values in data passed to sample_weight; weights must be >= 0.")
            if not np.any(sample_weight):
                raise ValueError("Sample weights must contain at least one non-zero number; all are zero.")
        model = self.model_ if warm else self._build(X.shape[1], n_outputs, X.dtype)
        history = model.fit(X, targets, epochs=self.epochs, batch_size=self._batch_size(X.shape[0]),
                            shuffle=bool(self.shuffle), verbose=int(self.verbose), sample_weight=sample_weight)
        self.model_ = model
        self.loss_curve_ = (self.loss_curve_ if warm else []) + list(history["loss"] if history.epochs else [])
        self.n_iter_ = (self.n_iter_ if warm else 0) + history.epochs
        return self

    def _outputs(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, **self._DATA)
        return self.model_.predict(X).astype(np.float64)

    # ------------------------------------------------------------------ views MLPClassifier users know
    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices of the Dense layers, (n_in, n_out) each (host copies)."""
        check_is_fitted(self, "model_")
        return [self.model_.backend.to_numpy(l.W.value).copy() for l in self.model_.layers if isinstance(l, Dense)]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        check_is_fitted(self, "model_")
        return [self.model_.backend.to_numpy(l.b.value).copy() for l in self.model_.layers if isinstance(l, Dense)]

    # ------------------------------------------------------------------ pickling: plain arrays and settings
    def __getstate__(self):
        state = super().__getstate__()
        if isinstance(state.get("model_"), Model):
            state = dict(state, model_=_plain_model(state["model_"]))
        return state

    def __setstate__(self, state):
        if isinstance(state.get("model_"), dict):
            state = dict(state, model_=_model_from_plain(state["model_"], state.get("backend")))
        super().__setstate__(state)


class NNClassifier(ClassifierMixin, _NNEstimator):
    """A dense network with a softmax output, trained with categorical cross-entropy.

    ``classes_`` are the sorted distinct labels of ``y`` (strings, integers,
    booleans, ...); ``predict_proba`` has one column per class, rows summing to 1
    (in float64). One label alone is learned as a one-class softmax.
    """

    _output = Softmax

    def _loss_name(self):
        return "categorical_crossentropy"

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) and return self; refitting starts afresh unless ``warm_start``."""
        warm = self._warm()
        X, y = validate_data(self, X, y, reset=not warm, **self._DATA)
        check_classification_targets(y)
        classes, labels = np.unique(y, return_inverse=True)
        if warm and not np.array_equal(classes, self.classes_):
            if not np.isin(classes, self.classes_).all():
                raise ValueError(f"warm_start=True, but y has classes {classes[~np.isin(classes, self.classes_)]} "
                                 f"the fitted model does not know ({self.classes_}); set warm_start=False.")
            labels = np.searchsorted(self.classes_, y)
            classes = self.classes_
        self.classes_ = classes
        return self._train(X, labels, len(classes), sample_weight)

    def predict_proba(self, X) -> np.ndarray:
        p = self._outputs(X)
        return p / p.sum(axis=1, keepdims=True)  # exactly normalized in float64, also for a float32 model

    def predict_log_proba(self, X) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        out = self._outputs(X)
        return self.classes_[np.argmax(out, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False  # y is one label per sample
        tags.target_tags.multi_output = False
        return tags


class NNRegressor(RegressorMixin, _NNEstimator):
    """A dense network with a linear output, trained with mean squared (or absolute) error.

    ``y`` of shape (n,) gives predictions of shape (n,); ``y`` of shape (n, k)
    gives (n, k) (multi-output regression). ``loss`` is ``"mse"`` or ``"mae"``.
    """

    _output = Linear

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="mse", optimizer="adam",
                 learning_rate=0.001, decay=0.0, momentum=0.9, beta_1=0.9, beta_2=0.999, epsilon=1e-7, epochs=200,
                 batch_size="auto", shuffle=True, l2=0.0, dropout=0.0, warm_start=False, backend=None,
                 dtype=None, random_state=None, verbose=0):
        super().__init__(hidden_layer_sizes, activation, optimizer=optimizer, learning_rate=learning_rate,
                         decay=decay, momentum=momentum, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         epochs=epochs, batch_size=batch_size, shuffle=shuffle, l2=l2, dropout=dropout,
                         warm_start=warm_start, backend=backend, dtype=dtype, random_state=random_state,
                         verbose=verbose)
        self.loss = loss

    def _loss_name(self):
        name = get_loss(self.loss).name
        if name not in ("mse", "mae"):
            raise ValueError(f"NNRegressor's loss must be 'mse' or 'mae', got {self.loss!r}.")
        return name

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) and return self; refitting starts afresh unless ``warm_start``."""
        X, y = validate_data(self, X, y, reset=not self._warm(), multi_output=True, y_numeric=True, **self._DATA)
        y = np.asarray(y, dtype=np.float64)
        self._target_1d = y.ndim == 1
        targets = y.reshape(len(y), -1)
        self.n_outputs_ = targets.shape[1]
        return self._train(X, targets, self.n_outputs_, sample_weight)

    def predict(self, X) -> np.ndarray:
        out = self._outputs(X)
        return out.ravel() if self._target_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


# ---------------------------------------------------------------------- plain model state
def _plain_model(model) -> dict:
    """Everything a fitted model is, as arrays, numbers and strings."""
    params = model.params()
    to_host = model.backend.to_numpy
    return {
        "format": _PLAIN_FORMAT,
        "dtype": model.dtype,
        "seed": model.seed,
        "layers": [{"class": type(layer).__name__, "config": layer.config()} for layer in model.layers],
        "loss": model.loss.name,
        "optimizer": model.optimizer.config(),
        "optimizer_iterations": model.optimizer.iterations,
        "weights": model.get_weights(),
        "optimizer_state": [{k: to_host(v).copy() for k, v in p.state.items()} for p in params],
        "rng": model.rng.bit_generator.state,
    }


def _model_from_plain(plain: dict, backend) -> Model:
    if plain.get("format") != _PLAIN_FORMAT:
        raise ValueError(f"This pickle holds a model in format {plain.get('format')!r}; this nnbackends reads "
                         f"{_PLAIN_FORMAT!r}. Refit the estimator.")
    model = Model(backend=backend, seed=plain["seed"], dtype=plain["dtype"])
    for spec in plain["layers"]:
        model.add(from_config(spec["class"], spec["config"]))
    model.compile(loss=plain["loss"], optimizer=optimizer_from_config(plain["optimizer"]), metrics=())
    model.set_weights(plain["weights"])
    model.optimizer.iterations = plain["optimizer_iterations"]
    for p, state in zip(model.params(), plain["optimizer_state"]):
        for name, value in state.items():
            p.state[name][...] = model.backend.asarray(value, model.dtype)
    model.rng.bit_generator.state = plain["rng"]
    return model
