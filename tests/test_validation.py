"""Bad input at every public entry point gets ValueError/TypeError naming the argument,
what was received and what is expected; the CLI turns it into one line on stderr and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import nnbackends as nb
from nnbackends.layers import Dense, Dropout, LeakyReLU, ReLU, Softmax, activation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X, Y = nb.datasets.spiral_data(10, 3)  # 30 samples, 2 features, labels 0..2


def model():
    m = nb.Model(backend="numpy", seed=0)
    m.add(Dense(2, 4)).add(ReLU()).add(Dense(4, 3)).add(Softmax())
    return m.compile(loss="categorical_crossentropy", optimizer=nb.optimizers.Adam(0.01))


def bare():
    return nb.Model(backend="numpy").add(Dense(2, 3))


def with_value(arr, index, value):
    arr = np.array(arr, dtype=np.float64)
    arr[index] = value
    return arr


def fit(X_=X, y=Y, **kw):
    return model().fit(X_, y, verbose=0, **kw)


# id -> (call, exception, fragments the message must contain: argument, received, expected)
CASES = {
    # ---- fit: features
    "X 1-D": (lambda: fit(X[:, 0]), ValueError, ["X must be 2-D", "(30,)", "reshape"]),
    "X 3-D": (lambda: fit(X[:, :, None]), ValueError, ["X must be 2-D", "(30, 2, 1)"]),
    "X strings": (lambda: fit(np.full((30, 2), "a")), TypeError, ["X must be a numeric", "dtype <U1"]),
    "X None": (lambda: fit(None), TypeError, ["X must be a numeric", "NoneType"]),
    "X bool": (lambda: fit(X > 0), TypeError, ["X must be a numeric", "bool"]),
    "X complex": (lambda: fit(X + 1j), TypeError, ["X must be a numeric", "complex"]),
    "X ragged": (lambda: fit([[1.0, 2.0], [3.0]], Y[:2]), TypeError, ["X must be a rectangular numeric array", "list"]),
    "X NaN": (lambda: fit(with_value(X, (3, 1), np.nan)), ValueError, ["X contains NaN or Inf", "[3, 1]"]),
    "X Inf": (lambda: fit(with_value(X, (5, 0), -np.inf)), ValueError, ["X contains NaN or Inf", "[5, 0]"]),
    "X overflows float32": (lambda: fit(with_value(X, (0, 0), 1e300)), ValueError,
                            ["X holds values up to 1e+300", "largest float32", "dtype='float64'"]),
    "X features": (lambda: fit(np.hstack([X, X])), ValueError, ["X has 4 features", "expects 2"]),
    "X empty": (lambda: fit(np.zeros((0, 2)), np.zeros(0)), ValueError, ["X is empty", "(0, 2)", "at least one"]),
    # ---- fit: targets
    "y NaN": (lambda: fit(y=with_value(Y, 3, np.nan)), ValueError, ["y contains NaN or Inf", "[3]"]),
    "y length": (lambda: fit(y=Y[:-1]), ValueError, ["X and y have different lengths", "30", "29"]),
    "y 3-D": (lambda: fit(y=Y[:, None, None]), ValueError, ["y must be 1-D labels or 2-D", "(30, 1, 1)"]),
    "y labels too big": (lambda: fit(y=Y + 1), ValueError, ["y holds labels from 1 to 3", "3 classes", "0..2"]),
    "y labels negative": (lambda: fit(y=Y.astype(int) - 1), ValueError, ["y holds labels from -1", "0..2"]),
    "y labels not integral": (lambda: fit(y=Y + 0.5), ValueError, ["y must hold integer class labels, got the value 0.5."]),
    "y not one-hot": (lambda: fit(y=np.ones((30, 3))), ValueError, ["y row 0 is not one-hot", "[1.0, 1.0, 1.0]"]),
    "y one-hot width": (lambda: fit(y=np.eye(4)[Y]), ValueError, ["y has one-hot rows of width 4", "3 classes"]),
    "y regression columns": (
        lambda: nb.Model(backend="numpy").add(Dense(2, 2)).compile(loss="mse").fit(X, np.zeros((30, 3)), verbose=0),
        ValueError, ["y has 3 columns per sample", "2 outputs"]),
    "y overflows float32": (
        lambda: nb.Model(backend="numpy").add(Dense(2, 1)).compile(loss="mse").fit(X, np.full(30, 1e40), verbose=0),
        ValueError, ["y holds values up to 1e+40", "largest float32"]),
    # ---- fit: arguments
    "epochs 0": (lambda: fit(epochs=0), ValueError, ["epochs must be a positive integer", "got 0"]),
    "epochs -1": (lambda: fit(epochs=-1), ValueError, ["epochs must be a positive integer", "got -1"]),
    "epochs 2.0": (lambda: fit(epochs=2.0), TypeError, ["epochs must be a positive integer", "2.0 (float)"]),
    "epochs True": (lambda: fit(epochs=True), TypeError, ["epochs must be a positive integer", "True (bool)"]),
    "batch_size 0": (lambda: fit(batch_size=0), ValueError, ["batch_size must be a positive integer", "got 0"]),
    "batch_size 1.5": (lambda: fit(batch_size=1.5), TypeError, ["batch_size must be a positive integer", "1.5"]),
    "batch_size str": (lambda: fit(batch_size="32"), TypeError, ["batch_size must be a positive integer", "'32' (str)"]),
    "validation_data": (lambda: fit(validation_data=X), TypeError, ["validation_data must be a tuple"]),
    "X_val NaN": (lambda: fit(validation_data=(with_value(X, (0, 0), np.nan), Y)), ValueError,
                  ["X_val contains NaN or Inf", "[0, 0]"]),
    "y_val length": (lambda: fit(validation_data=(X, Y[:5])), ValueError,
                     ["X_val and y_val have different lengths", "30", "5"]),
    "fit before compile": (lambda: bare().fit(X, Y), RuntimeError, ["compile("]),
    # ---- evaluate
    "evaluate X NaN": (lambda: model().evaluate(np.full((3, 2), np.nan), Y[:3]), ValueError,
                       ["X contains NaN or Inf", "[0, 0]"]),
    "evaluate length": (lambda: model().evaluate(X, Y[:3]), ValueError, ["X and y have different lengths", "30", "3"]),
    "evaluate labels": (lambda: model().evaluate(X, Y + 5), ValueError, ["y holds labels from 5 to 7", "0..2"]),
    # ---- predict
    "predict 1-D": (lambda: model().predict(X[:, 0]), ValueError, ["X must be 2-D", "(30,)"]),
    "predict features": (lambda: model().predict(np.zeros((3, 5))), ValueError, ["X has 5 features", "expects 2"]),
    "predict empty": (lambda: model().predict(np.zeros((0, 2))), ValueError, ["X is empty", "(0, 2)"]),
    "predict overflows float32": (lambda: model().predict(np.full((3, 2), -1e39)), ValueError,
                                  ["X holds values up to 1e+39", "float32"]),
    "predict Inf": (lambda: model().predict(np.full((3, 2), np.inf)), ValueError, ["X contains NaN or Inf"]),
    "predict batch_size": (lambda: model().predict(X, batch_size=0), ValueError, ["batch_size must be a positive integer"]),
    "predict no layers": (lambda: nb.Model(backend="numpy").predict(X), ValueError, ["no Dense layer"]),
    # ---- building and compile
    "layers do not chain": (lambda: nb.Model(backend="numpy").add(Dense(2, 4)).add(ReLU()).add(Dense(5, 3)),
                            ValueError, ["do not chain", "layer 2 Dense(5, 3)", "layer 0 Dense(2, 4)",
                                         "expected n_inputs=4"]),
    "add non-layer": (lambda: nb.Model(backend="numpy").add("dense"), TypeError, ["add() takes a Layer", "'dense'"]),
    "compile no layers": (lambda: nb.Model(backend="numpy").compile(), ValueError, ["no Dense layer"]),
    "loss unknown": (lambda: bare().compile(loss="hinge"), ValueError,
                     ["Unknown loss 'hinge'", "categorical_crossentropy, binary_crossentropy, mse, mae"]),
    "loss None": (lambda: bare().compile(loss=None), ValueError, ["Unknown loss None", "mse"]),
    "optimizer unknown": (lambda: bare().compile(optimizer="lbfgs"), ValueError,
                          ["Unknown optimizer 'lbfgs'", "sgd, adagrad, rmsprop, adam"]),
    "metric unknown": (lambda: bare().compile(metrics="f1"), ValueError, ["Unknown metric 'f1'", "accuracy"]),
    "metrics two": (lambda: bare().compile(metrics=["accuracy", "accuracy"]), ValueError, ["at most one metric"]),
    "regression accuracy before adapt": (lambda: nb.metrics.RegressionAccuracy()(np.zeros(3), np.zeros(3)),
                                         RuntimeError, ["no precision yet", "precision=", "adapt(y_train)"]),
    "backend unknown": (lambda: nb.Model(backend="tpu"), ValueError,
                        ["Unknown backend 'tpu'", "auto, numpy"]),
    "backend not a name": (lambda: nb.Model(backend=3), TypeError, ["backend must be a backend name", "3 (int)"]),
    "dtype": (lambda: nb.Model(backend="numpy", dtype="float16"), ValueError,
              ["Unknown dtype 'float16'", "float32, float64"]),
    "seed": (lambda: nb.Model(backend="numpy", seed=-1), ValueError, ["seed must be None or a non-negative integer", "-1"]),
    "seed str": (lambda: nb.Model(backend="numpy", seed="a"), TypeError, ["seed must be", "'a' (str)"]),
    # ---- optimizers
    "learning_rate 0": (lambda: nb.optimizers.Adam(0), ValueError, ["learning_rate must be a finite number > 0", "0.0"]),
    "learning_rate -1": (lambda: nb.optimizers.SGD(-1), ValueError, ["learning_rate must be a finite number > 0", "-1.0"]),
    "learning_rate NaN": (lambda: nb.optimizers.RMSprop(float("nan")), ValueError, ["learning_rate", "got nan"]),
    "learning_rate Inf": (lambda: nb.optimizers.Adagrad(float("inf")), ValueError, ["learning_rate", "got inf"]),
    "learning_rate str": (lambda: nb.optimizers.SGD("0.1"), TypeError, ["learning_rate", "'0.1' (str)"]),
    "learning_rate None": (lambda: nb.optimizers.Adam(None), TypeError, ["learning_rate", "None (NoneType)"]),
    "decay negative": (lambda: nb.optimizers.Adam(0.1, decay=-1), ValueError, ["decay must be a finite number >= 0"]),
    "momentum 1": (lambda: nb.optimizers.SGD(0.1, momentum=1.0), ValueError, ["momentum must be a number in [0, 1)"]),
    "beta_1 2": (lambda: nb.optimizers.Adam(beta_1=2), ValueError, ["beta_1 must be a number in [0, 1)", "2.0"]),
    # ---- layers
    "Dense n_inputs 0": (lambda: Dense(0, 3), ValueError, ["n_inputs must be a positive integer", "got 0"]),
    "Dense n_neurons float": (lambda: Dense(2, 2.5), TypeError, ["n_neurons must be a positive integer", "2.5 (float)"]),
    "Dense initializer": (lambda: Dense(2, 3, initializer="zeros"), ValueError,
                          ["Unknown initializer 'zeros'", "glorot_uniform, he_normal, nnfs"]),
    "Dense regularizer": (lambda: Dense(2, 3, weight_regularizer_l2=-1), ValueError,
                          ["weight_regularizer_l2 must be a finite number >= 0", "-1.0"]),
    "Dropout 1": (lambda: Dropout(1.0), ValueError, ["rate must be a number in [0, 1)", "1.0"]),
    "Dropout negative": (lambda: Dropout(-0.1), ValueError, ["rate must be a number in [0, 1)", "-0.1"]),
    "LeakyReLU NaN": (lambda: LeakyReLU(float("nan")), ValueError, ["alpha must be a finite number >= 0", "nan"]),
    "activation unknown": (lambda: activation("swish"), ValueError,
                           ["Unknown activation 'swish'", "relu, leaky_relu, sigmoid, tanh, softmax, linear"]),
    # ---- dataset generators
    "spiral samples 0": (lambda: nb.datasets.spiral_data(0, 3), ValueError, ["samples must be a positive integer", "0"]),
    "spiral classes -1": (lambda: nb.datasets.spiral_data(10, -1), ValueError, ["classes must be a positive integer", "-1"]),
    "spiral seed str": (lambda: nb.datasets.spiral_data(10, 3, seed="a"), TypeError, ["seed must be", "'a' (str)"]),
    "vertical samples str": (lambda: nb.datasets.vertical_data("10", 3), TypeError, ["samples must be", "'10' (str)"]),
    "sine samples 0": (lambda: nb.datasets.sine_data(0), ValueError, ["samples must be a positive integer"]),
    "classification features 0": (lambda: nb.datasets.classification_data(10, 0, 3), ValueError,
                                  ["features must be a positive integer", "0"]),
    "split test_size 1": (lambda: nb.datasets.train_test_split(X, Y, test_size=1.0), ValueError,
                          ["test_size must be a number in [0, 1)", "1.0"]),
    "split lengths": (lambda: nb.datasets.train_test_split(X, Y[:3]), ValueError, ["different lengths", "30", "3"]),
    # ---- weights
    "set_weights count": (lambda: model().set_weights([np.zeros(1)]), ValueError, ["expected 4 arrays", "got 1"]),
    "set_weights shape": (lambda: model().set_weights([np.zeros((3, 3))] * 4), ValueError,
                          ["array 0 (W) has shape (3, 3)", "expected (2, 4)"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_gets_a_clear_error(case):
    call, error, fragments = CASES[case]
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} missing from {message!r}"


def test_model_is_usable_after_rejected_input():
    """A rejected call changes nothing: the same model then trains on good data."""
    m = model()
    before = m.get_weights()
    with pytest.raises(ValueError):
        m.fit(with_value(X, (0, 0), np.nan), Y, verbose=0)
    for got, want in zip(m.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    history = m.fit(X, Y, epochs=2, verbose=0)
    assert history.epochs == 2


# ---------------------------------------------------------------------- CLI
def cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "NNBACKENDS_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "nnbackends", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


# arguments -> fragments of the one error line: the argument and the value received.
CLI_CASES = {
    "--epochs 0": ["epochs", "0"],
    "--batch-size 0": ["batch", "0"],
    "--samples 0": ["samples", "0"],
    "--classes 0": ["classes", "0"],
    "--learning-rate nan": ["learning", "nan"],
    "--learning-rate -1": ["learning", "-1"],
    "--decay -1": ["decay", "-1"],
    "--hidden 64,x": ["hidden", "64,x"],
    "--hidden -5": ["hidden", "-5"],
    "--activation swish": ["activation", "swish", "relu"],
    "--backend tpu": ["backend", "tpu", "numpy"],
    "--seed -1": ["seed", "-1"],
    "--epochs abc": ["epochs", "abc"],
    "--dtype float16": ["dtype", "float16", "float32"],
    "--optimizer lbfgs": ["optimizer", "lbfgs", "adam"],
    "--save no-such-folder/model.safetensors": ["no-such-folder", "does not exist"],
}


@pytest.mark.parametrize("args", CLI_CASES, ids=list(CLI_CASES))
def test_cli_bad_argument_is_one_line_and_exit_code_2(args):
    result = cli("train", "--quiet", "--epochs", "1", *args.split())
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("nnbackends train: error: ")
    for fragment in CLI_CASES[args]:
        assert fragment in lines[0], f"{fragment!r} missing from {lines[0]!r}"
    assert result.stdout == ""


def test_finite_data_whose_sum_overflows_is_accepted():
    """The one-pass check sums the data; a sum that overflows from finite values is not a NaN."""
    from nnbackends.validation import check_features

    big = np.full((4, 3), np.finfo(np.float32).max / 2, dtype=np.float32)
    assert check_features("X", big, 3, "float32") is big  # checked in place: no copy


def test_the_first_nonfinite_value_is_found_in_a_later_block():
    from nnbackends.validation import _first_nonfinite

    X = np.zeros((5000, 7))
    X[4321, 5] = np.inf
    X[4400, 0] = np.nan
    assert _first_nonfinite(X, block_elements=700) == (4321, 5)
    assert _first_nonfinite(np.zeros(10)) is None


def test_float64_data_beyond_float32_is_refused_for_a_float32_model():
    from nnbackends.validation import check_features

    X = np.zeros((3, 2))
    X[2, 1] = -1e39
    with pytest.raises(ValueError, match="values up to 1e\\+39, beyond the largest float32"):
        check_features("X", X, 2, "float32")
    assert check_features("X", X, 2, "float64") is X


class FakeCupyArray:
    """Looks like a CuPy array to nnbackends: ``__cuda_array_interface__``, ``get``, and no NumPy conversion."""

    def __init__(self, host):
        self.host = np.asarray(host)
        self.shape, self.dtype = self.host.shape, self.host.dtype

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0, False), "version": 3}

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def get(self):
        return self.host.copy()


def test_fit_evaluate_and_predict_take_gpu_arrays():
    want, got = model(), model()
    want.fit(X, Y, epochs=3, verbose=0)
    got.fit(FakeCupyArray(X), FakeCupyArray(Y), epochs=3, verbose=0)
    np.testing.assert_array_equal(got.predict(FakeCupyArray(X)), want.predict(X))
    assert got.evaluate(FakeCupyArray(X), FakeCupyArray(Y)) == want.evaluate(X, Y)


def test_gpu_arrays_are_checked_like_host_arrays():
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at index \[3, 1\]\)"):
        model().fit(FakeCupyArray(with_value(X, (3, 1), np.nan)), Y, verbose=0)
    with pytest.raises(ValueError, match="X must be 2-D"):
        model().predict(FakeCupyArray(X[:, 0]))


def test_a_gpu_array_without_a_host_copy_method_says_so():
    class Opaque:
        __cuda_array_interface__ = {"shape": (3, 2), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="X is a GPU array of type Opaque that nnbackends cannot copy"):
        model().predict(Opaque())
