"""The scikit-learn estimators, judged by scikit-learn's own estimator checks and by its tools."""
from __future__ import annotations

import inspect
import io
import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason='needs scikit-learn: pip install "nnbackends[sklearn]"')

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_blobs, make_regression  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnbackends import available_backends  # noqa: E402
from nnbackends.sklearn import NNClassifier, NNRegressor  # noqa: E402

CHECKED_BACKENDS = [b for b in ("numpy", "numba") if b in available_backends()]


@parametrize_with_checks(
    [cls(backend=b, random_state=0) for b in CHECKED_BACKENDS for cls in (NNClassifier, NNRegressor)],
    xfail_strict=True,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------- data
def blobs(n=150, centers=3, n_features=4, seed=0):
    X, y = make_blobs(n_samples=n, centers=centers, n_features=n_features, random_state=seed, cluster_std=1.0)
    return StandardScaler().fit_transform(X), y


def small(cls=NNClassifier, **kw):
    return cls(**{"hidden_layer_sizes": (16,), "epochs": 150, "learning_rate": 0.01, "backend": "numpy",
                  "random_state": 0, **kw})


# ---------------------------------------------------------------------- the estimator contract
def test_constructor_only_stores_its_arguments():
    odd = dict(hidden_layer_sizes="wide", activation="swish", epochs=-3, batch_size=0, backend="nosuch",
               dtype="float16", random_state=-1, optimizer="lbfgs")
    est = NNClassifier(**odd)
    assert {k: est.get_params()[k] for k in odd} == odd
    assert not [k for k in vars(est) if k.endswith("_")]
    params = inspect.signature(NNRegressor).parameters
    for name in ("hidden_layer_sizes", "activation", "optimizer", "learning_rate", "epochs", "batch_size", "l2",
                 "dropout", "backend", "dtype", "random_state", "verbose", "warm_start", "shuffle", "momentum",
                 "beta_1", "beta_2", "epsilon", "loss"):
        assert name in params


@pytest.mark.parametrize("labels", [
    np.array(["cat", "dog", "emu"]), np.array(["cat", "dog", "emu"], dtype=object), np.array([-4, 7, 10]),
    np.array([False, True]), np.array([0.0, 1.0, 2.0]), np.array([3, 9], dtype=np.uint8),
], ids=["str", "object", "int", "bool", "integral-float", "uint8"])
def test_classes_of_any_label_type(labels):
    X, k = blobs(centers=len(labels))
    y = labels[k]
    clf = small().fit(X, y)
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    pred = clf.predict(X)
    assert pred.dtype == clf.classes_.dtype and set(pred) <= set(labels)
    assert clf.score(X, y) > 0.9
    assert clf.predict_proba(X).shape == (len(X), len(labels))


def test_predict_proba_rows_sum_to_one_and_match_predict():
    X, y = blobs()
    clf = small(dtype="float32").fit(X, y)
    p = clf.predict_proba(X)
    assert p.dtype == np.float64 and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # also for a float32 network
    np.testing.assert_array_equal(clf.classes_[p.argmax(axis=1)], clf.predict(X))
    assert np.isfinite(log_loss(y, p))  # log_loss checks the row sums itself
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), p)


def test_n_features_in_and_wrong_width_at_predict():
    X, y = blobs(n_features=4)
    clf = small().fit(X, y)
    assert clf.n_features_in_ == 4 and not hasattr(clf, "feature_names_in_")
    with pytest.raises(ValueError, match="X has 3 features, but NNClassifier is expecting 4 features"):
        clf.predict(X[:, :3])


def test_feature_names_in_from_a_data_frame():
    pd = pytest.importorskip("pandas", reason="feature names come from pandas data frames")
    X, y = blobs(n_features=3)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    clf = small().fit(frame, y)
    np.testing.assert_array_equal(clf.feature_names_in_, ["a", "b", "c"])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        np.testing.assert_array_equal(clf.predict(frame), clf.predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(frame.rename(columns={"a": "z"}))
    clf.fit(X, y)  # refit on a plain array: the names go
    assert not hasattr(clf, "feature_names_in_")


def test_multi_output_regression_and_target_shapes():
    X, Y = make_regression(n_samples=200, n_features=5, n_targets=3, noise=1.0, random_state=0)
    X, Y = StandardScaler().fit_transform(X), StandardScaler().fit_transform(Y)
    reg = small(NNRegressor, epochs=300).fit(X, Y)
    assert reg.n_outputs_ == 3
    pred = reg.predict(X)
    assert pred.shape == (200, 3) and pred.dtype == np.float64
    assert reg.score(X, Y) > 0.9
    assert small(NNRegressor).fit(X, Y[:, 0]).predict(X).shape == (200,)
    assert small(NNRegressor).fit(X, Y[:, :1]).predict(X).shape == (200, 1)


def test_refit_starts_afresh_and_warm_start_trains_on():
    X, y = blobs(n_features=4)
    clf = small(epochs=20).fit(X, y)
    first = clf.model_
    X2, y2 = blobs(n=60, centers=2, n_features=2, seed=1)
    clf.fit(X2, np.array(["no", "yes"])[y2])
    assert clf.model_ is not first and clf.n_features_in_ == 2 and list(clf.classes_) == ["no", "yes"]
    assert len(clf.loss_curve_) == clf.n_iter_ == 20

    cold = small(epochs=20).fit(X, y)
    warm = small(epochs=20, warm_start=True).fit(X, y)
    model = warm.model_
    warm.fit(X, y)
    assert warm.model_ is model and warm.n_iter_ == 40 and len(warm.loss_curve_) == 40
    assert warm.loss_curve_[:20] == cold.loss_curve_  # the same first run, then more of it
    assert warm.loss_curve_[20] < warm.loss_curve_[0]
    with pytest.raises(ValueError, match="X has 2 features, but NNClassifier is expecting 4"):
        warm.fit(X[:, :2], y)
    with pytest.raises(ValueError, match=r"classes \[7\] the fitted model does not know"):
        warm.fit(X, np.where(y == 0, 7, y))


class RecordingUnpickler(pickle.Unpickler):
    """Unpickles while noting every class or function the pickle names."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.names = set()

    def find_class(self, module, name):
        self.names.add((module, name))
        return super().find_class(module, name)


def test_pickle_holds_plain_arrays_and_settings_and_trains_on_the_same():
    X, y = blobs()
    clf = small(epochs=30, warm_start=True).fit(X, y)
    data = pickle.dumps(clf)
    unpickler = RecordingUnpickler(data)
    unpickler.load()
    # The estimator's class, and NumPy arrays: no Model, layer, optimizer or backend object.
    assert {m for m, _ in unpickler.names} - {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"} \
        == {"nnbackends.sklearn"}
    assert ("nnbackends.sklearn", "NNClassifier") in unpickler.names
    copy = pickle.loads(data)
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    assert copy.model_ is not clf.model_ and copy.model_.backend.name == "numpy"
    # Optimizer state, step count and generator state came along: both train on identically.
    copy.fit(X, y)
    clf.fit(X, y)
    for a, b in zip(copy.model_.get_weights(), clf.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert copy.loss_curve_ == clf.loss_curve_


def test_get_params_set_params_and_clone():
    clf = small(hidden_layer_sizes=(8, 4))
    assert clf.set_params(epochs=5, activation="tanh") is clf
    assert clf.get_params()["epochs"] == 5 and clf.get_params()["hidden_layer_sizes"] == (8, 4)
    X, y = blobs()
    clf.fit(X, y)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "model_")
    assert [layer.__class__.__name__ for layer in clf.model_.layers] == ["Dense", "Tanh", "Dense", "Tanh", "Dense",
                                                                         "Softmax"]
    assert [w.shape for w in clf.coefs_] == [(4, 8), (8, 4), (4, 3)] and clf.intercepts_[2].shape == (3,)
    with pytest.raises(ValueError, match="Invalid parameter 'epoch'"):
        clf.set_params(epoch=3)


def test_same_random_state_same_model_and_a_random_state_object_works():
    X, y = blobs()
    a, b = small(epochs=10).fit(X, y), small(epochs=10).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = small(epochs=10, random_state=np.random.RandomState(3)).fit(X, y)
    assert c.predict_proba(X).shape == (len(X), 3)
    d = small(epochs=10, dtype="float64").fit(X, y)
    assert d.model_.dtype == "float64"


@pytest.mark.parametrize("params,error,fragment", [
    (dict(hidden_layer_sizes="wide"), ValueError, "hidden_layer_sizes must be a positive integer or a sequence"),
    (dict(hidden_layer_sizes=(8, 0)), ValueError, "hidden_layer_sizes must be a positive integer"),
    (dict(activation="swish"), ValueError, "Unknown activation 'swish'; valid choices are: relu"),
    (dict(optimizer="lbfgs"), ValueError, "Unknown optimizer 'lbfgs'; valid choices are: sgd"),
    (dict(epochs=0), ValueError, "epochs must be a positive integer"),
    (dict(batch_size=0), ValueError, "batch_size must be 'auto', None (the full batch) or a positive integer"),
    (dict(learning_rate=-1.0), ValueError, "learning_rate must be a finite number > 0"),
    (dict(dropout=1.5), ValueError, "rate must be a number in [0, 1)"),
    (dict(dtype="float16"), ValueError, "Unknown dtype 'float16'; valid choices are: float32, float64"),
    (dict(backend="nosuch"), ValueError, "Unknown backend 'nosuch'"),
    (dict(random_state=-1), ValueError, "seed must be None or a non-negative integer"),
])
def test_bad_settings_fail_at_fit_naming_the_setting(params, error, fragment):
    X, y = blobs(n=30)
    with pytest.raises(error) as info:
        small(**params).fit(X, y)
    assert fragment in str(info.value)


def test_bad_data_is_refused_clearly():
    X, y = blobs(n=30)
    with pytest.raises(NotFittedError):
        small().predict(X)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        small().fit(np.where(X > 1, np.nan, X), y)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        small().fit(X, y + 0.5)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        small().fit(X[:, 0], y)
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="Sparse data was passed for X, but dense data is required"):
        small().fit(scipy_sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="loss must be 'mse' or 'mae'"):
        small(NNRegressor, loss="categorical_crossentropy").fit(X, y.astype(float))
    with pytest.raises(ValueError, match="Negative values in data passed to sample_weight"):
        small().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="at least one non-zero"):
        small().fit(X, y, sample_weight=np.zeros(len(y)))


# ---------------------------------------------------------------------- sample weights
def test_integer_sample_weights_equal_repeated_rows():
    X, y = blobs(n=30)
    weights = np.arange(30) % 3
    weighted = small(epochs=3, batch_size=None, dtype="float64").fit(X, y, sample_weight=weights)
    repeated = small(epochs=3, batch_size=None, dtype="float64").fit(np.repeat(X, weights, axis=0),
                                                                     np.repeat(y, weights))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-10)


# ---------------------------------------------------------------------- scikit-learn's tools, every CPU backend
def test_pipeline_grid_search_and_cross_validation(backend):
    X, y = blobs(n=120)
    pipe = make_pipeline(StandardScaler(), small(backend=backend.name, epochs=60))
    search = GridSearchCV(pipe, {"nnclassifier__hidden_layer_sizes": [(4,), (16,)],
                                 "nnclassifier__learning_rate": [0.01, 0.03]}, cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.9
    assert search.best_estimator_[-1].model_.backend.name == backend.name
    assert search.best_estimator_.score(X, y) > 0.9
    Xr, yr = make_regression(n_samples=90, n_features=3, noise=0.1, random_state=1)
    scores = cross_val_score(make_pipeline(StandardScaler(), small(NNRegressor, backend=backend.name, epochs=200)),
                             Xr, (yr - yr.mean()) / yr.std(), cv=3)
    assert scores.min() > 0.8
    assert clone(pipe).get_params()["nnclassifier__backend"] == backend.name
