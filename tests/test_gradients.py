"""Finite-difference gradient checks in float64, on every registered backend.

Each check builds a scalar objective ``L`` from a layer, a loss or a whole
model, computes the analytic gradient through the backward kernels, and
compares it with central differences of ``L`` evaluated on the same backend.
Activations and layers are checked through ``L = sum(forward(x) * r)`` with a
random ``r``, so the backward pass is exercised with a non-trivial upstream
gradient. Points where a function has a kink (ReLU at 0, |w| at 0, |p - y| at
0) are kept away from.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnbackends import Model
from nnbackends.layers import Dense, Dropout, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from nnbackends.losses import BinaryCrossentropy, CategoricalCrossentropy, MeanAbsoluteError, MeanSquaredError

DTYPE = "float64"
EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-8


def numeric_gradient(f, x):
    """Central differences of the scalar function ``f`` of the host array ``x`` (perturbed in place)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + EPS
        up = f(x)
        x[i] = saved - EPS
        down = f(x)
        x[i] = saved
        grad[i] = (up - down) / (2 * EPS)
    return grad


def assert_gradient(analytic, numeric, what):
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)


def away_from_zero(x, margin=0.05):
    """``x`` with every entry at least ``margin`` from 0 (same signs)."""
    return np.where(x >= 0, 1.0, -1.0) * (np.abs(x) + margin)


def built(layer, backend, n_inputs, seed=0):
    layer.build(backend, DTYPE, np.random.default_rng(seed), n_inputs)
    return layer


def check_layer_input_gradient(backend, layer, x, training=False, reseed=None):
    """Check d/dx of ``sum(layer.forward(x) * r)`` against finite differences.

    ``reseed`` (a seed) resets the layer's generator before every forward pass,
    so that a random layer (Dropout) draws the same mask each time.
    """
    r = np.random.default_rng(1).standard_normal(x.shape)
    r_dev = backend.asarray(r, DTYPE)

    def forward(xh):
        if reseed is not None:
            layer.rng = np.random.default_rng(reseed)
        return layer.forward(backend.asarray(xh, DTYPE), training=training)

    def objective(xh):
        return float((backend.to_numpy(forward(xh)) * r).sum())

    forward(x)
    analytic = backend.to_numpy(layer.backward(r_dev))
    assert_gradient(analytic, numeric_gradient(objective, x.copy()), f"{layer!r} input gradient")


ACTIVATIONS = {
    "ReLU": (ReLU, True),
    "LeakyReLU": (lambda: LeakyReLU(0.1), True),
    "Sigmoid": (Sigmoid, False),
    "Tanh": (Tanh, False),
    "Softmax": (Softmax, False),
    "Linear": (Linear, False),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradient(backend, name):
    make, kinked = ACTIVATIONS[name]
    x = np.random.default_rng(2).standard_normal((6, 5)) * 2
    if kinked:
        x = away_from_zero(x)
    check_layer_input_gradient(backend, built(make(), backend, 5), x)


def test_leaky_relu_slope_is_alpha_below_zero(backend):
    layer = built(LeakyReLU(0.2), backend, 1)
    x = backend.asarray(np.array([[-3.0, -0.5, 0.5, 3.0]]), DTYPE)
    out = backend.to_numpy(layer.forward(x))
    np.testing.assert_allclose(out, [[-0.6, -0.1, 0.5, 3.0]])
    dx = backend.to_numpy(layer.backward(backend.asarray(np.ones((1, 4)), DTYPE)))
    np.testing.assert_allclose(dx, [[0.2, 0.2, 1.0, 1.0]])


REGULARIZATION = {
    "none": {},
    "l1": dict(weight_regularizer_l1=0.03, bias_regularizer_l1=0.02),
    "l2": dict(weight_regularizer_l2=0.04, bias_regularizer_l2=0.05),
    "l1+l2": dict(weight_regularizer_l1=0.01, weight_regularizer_l2=0.02,
                  bias_regularizer_l1=0.03, bias_regularizer_l2=0.04),
}


@pytest.mark.parametrize("reg", list(REGULARIZATION))
def test_dense_gradients(backend, reg):
    """dx, dW and db of ``sum(dense(x) * r) + regularization loss of W and b``."""
    rng = np.random.default_rng(3)
    layer = built(Dense(4, 3, **REGULARIZATION[reg]), backend, 4)
    # Nonzero biases, all parameters away from the kink of |w| at 0.
    layer.W.value[...] = backend.asarray(away_from_zero(rng.standard_normal((4, 3))), DTYPE)
    layer.b.value[...] = backend.asarray(away_from_zero(rng.standard_normal(3)), DTYPE)
    x = rng.standard_normal((5, 4))
    r = rng.standard_normal((5, 3))
    x_dev, r_dev = backend.asarray(x, DTYPE), backend.asarray(r, DTYPE)

    def objective():
        out = backend.to_numpy(layer.forward(x_dev))
        total = float((out * r).sum())
        for p in layer.params():
            total += backend.to_float(backend.regularization_loss(p.value, p.l1, p.l2))
        return total

    layer.forward(x_dev)
    dx = backend.to_numpy(layer.backward(r_dev))
    check_params(backend, layer.params(), objective)

    def input_objective(xh):
        nonlocal x_dev
        x_dev = backend.asarray(xh, DTYPE)
        return objective()

    assert_gradient(dx, numeric_gradient(input_objective, x.copy()), "Dense dx")


def test_dense_skips_input_gradient_when_not_needed(backend):
    layer = built(Dense(4, 3), backend, 4)
    layer.forward(backend.asarray(np.ones((2, 4)), DTYPE))
    assert layer.backward(backend.asarray(np.ones((2, 3)), DTYPE), need_dx=False) is None
    assert layer.W.grad is not None and layer.b.grad is not None


def check_params(backend, params, objective):
    """Each ``param.grad`` (already computed) against finite differences of ``objective()``."""
    for p in params:
        analytic = backend.to_numpy(p.grad).copy()

        def perturbed(host, p=p):
            p.value[...] = backend.asarray(host, DTYPE)
            return objective()

        start = backend.to_numpy(p.value).copy()
        numeric = numeric_gradient(perturbed, start.copy())
        p.value[...] = backend.asarray(start, DTYPE)
        assert_gradient(analytic, numeric, f"gradient of {p.name}")


@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_dropout_gradient_with_fixed_mask(backend, rate):
    layer = built(Dropout(rate), backend, 7)
    x = np.random.default_rng(4).standard_normal((8, 7))
    check_layer_input_gradient(backend, layer, x, training=True, reseed=11)
    mask = backend.to_numpy(layer.mask)
    assert 0 < np.count_nonzero(mask) < mask.size  # some inputs dropped, some kept


def test_dropout_is_identity_in_inference(backend):
    layer = built(Dropout(0.5), backend, 3)
    x = np.random.default_rng(5).standard_normal((4, 3))
    out = layer.forward(backend.asarray(x, DTYPE), training=False)
    np.testing.assert_array_equal(backend.to_numpy(out), x)
    dy = np.random.default_rng(6).standard_normal((4, 3))
    np.testing.assert_array_equal(backend.to_numpy(layer.backward(backend.asarray(dy, DTYPE))), dy)


# ---------------------------------------------------------------------- losses
def class_case(rng, n=6, k=4):
    p = rng.uniform(0.05, 1.0, (n, k))
    p /= p.sum(axis=1, keepdims=True)
    labels = rng.integers(0, k, n)
    return p, labels, np.eye(k)[labels]


def loss_case(name, rng):
    """(loss, predictions, targets) for each loss, predictions away from kinks and clipping."""
    if name == "cce_int":
        p, labels, _ = class_case(rng)
        return CategoricalCrossentropy(), p, labels
    if name == "cce_onehot":
        p, _, onehot = class_case(rng)
        return CategoricalCrossentropy(), p, onehot
    if name == "bce":
        return BinaryCrossentropy(), rng.uniform(0.05, 0.95, (6, 3)), rng.integers(0, 2, (6, 3)).astype(float)
    y = rng.standard_normal((6, 3))
    if name == "mse":
        return MeanSquaredError(), rng.standard_normal((6, 3)), y
    return MeanAbsoluteError(), y + away_from_zero(rng.standard_normal((6, 3)), 0.1), y


@pytest.mark.parametrize("name", ["cce_int", "cce_onehot", "bce", "mse", "mae"])
def test_loss_gradient(backend, name):
    loss, p, y = loss_case(name, np.random.default_rng(7))
    loss.bind(backend)
    y_dev = backend.asarray(y) if y.dtype.kind == "i" else backend.asarray(y, DTYPE)

    def objective(ph):
        return backend.to_float(loss.forward(backend.asarray(ph, DTYPE), y_dev))

    analytic = backend.to_numpy(loss.backward(backend.asarray(p, DTYPE), y_dev))
    assert_gradient(analytic, numeric_gradient(objective, p.copy()), f"{name} gradient")


FUSED = {  # fused gradient: (link, loss, targets of shape (6, k) from a generator)
    "softmax_cce-integer": ("softmax", "cce", lambda r, k: r.integers(0, k, 6)),
    "softmax_cce-one-hot": ("softmax", "cce", lambda r, k: np.eye(k)[r.integers(0, k, 6)]),
    "sigmoid_bce": ("sigmoid", "bce", lambda r, k: r.integers(0, 2, (6, k)).astype(float)),
}


@pytest.mark.parametrize("case", list(FUSED))
def test_fused_link_and_loss_gradient(backend, case):
    """``<link>_<loss>_backward`` equals d loss(link(z)) / dz, and the chained unfused gradient."""
    link, loss, targets = FUSED[case]
    rng = np.random.default_rng(8)
    z = rng.standard_normal((6, 4)) * 2
    y = targets(rng, 4)
    y_dev = backend.asarray(y) if y.dtype.kind == "i" else backend.asarray(y, DTYPE)
    forward, loss_forward = getattr(backend, link + "_forward"), getattr(backend, loss + "_loss")

    def objective(zh):
        return backend.to_float(loss_forward(forward(backend.asarray(zh, DTYPE)), y_dev))

    p = forward(backend.asarray(z, DTYPE))
    fused = backend.to_numpy(getattr(backend, f"{link}_{loss}_backward")(p, y_dev))
    assert_gradient(fused, numeric_gradient(objective, z.copy()), f"fused {link}+{loss} gradient")
    chained = getattr(backend, link + "_backward")(p, getattr(backend, loss + "_backward")(p, y_dev))
    np.testing.assert_allclose(fused, backend.to_numpy(chained), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- whole model
MODELS = {
    "softmax_cce": (lambda: [Dense(3, 5, weight_regularizer_l2=0.01, bias_regularizer_l1=0.02), Tanh(),
                             Dense(5, 4, weight_regularizer_l1=0.03), Softmax()],
                    "categorical_crossentropy", lambda r: r.integers(0, 4, 7)),
    "sigmoid_bce": (lambda: [Dense(3, 6, bias_regularizer_l2=0.05), LeakyReLU(0.1), Dense(6, 2), Sigmoid()],
                    "binary_crossentropy", lambda r: r.integers(0, 2, (7, 2)).astype(float)),
    "linear_mse": (lambda: [Dense(3, 5, weight_regularizer_l1=0.02, weight_regularizer_l2=0.01), ReLU(),
                            Dense(5, 2), Linear()],
                   "mse", lambda r: r.standard_normal((7, 2))),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_backward_gradient(backend, name):
    """Model.backward fills every param.grad with d(data loss + regularization loss)/d param."""
    layers, loss, targets = MODELS[name]
    rng = np.random.default_rng(9)
    model = Model(backend=backend, seed=1, dtype=DTYPE)
    for layer in layers():
        model.add(layer)
    model.compile(loss=loss, optimizer="sgd")
    for p in model.params():  # nonzero biases; every parameter away from the kink of |w|
        p.value[...] = backend.asarray(away_from_zero(rng.standard_normal(p.value.shape) * 0.5), DTYPE)
    x = backend.asarray(rng.standard_normal((7, 3)), DTYPE)
    y = targets(rng)
    y = backend.asarray(y) if y.dtype.kind == "i" else backend.asarray(y, DTYPE)

    def objective():
        total = backend.to_float(model.loss.forward(model.forward(x), y))
        return total + backend.to_float(model.regularization_loss())

    model.backward(model.forward(x, training=True), y)
    check_params(backend, model.params(), objective)


def test_saturated_inputs_give_finite_values_without_warnings(backend, dtype):
    """Logits of magnitude 1e4 and probabilities of exactly 0 or 1 neither warn nor give NaN or Inf."""
    z = backend.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]]), dtype)
    labels = backend.asarray(np.array([1, 0]))
    binary = backend.asarray(np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), dtype)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is expected
        p = backend.softmax_forward(z)
        s = backend.sigmoid_forward(z)
        results = [p, s, backend.cce_loss(p, labels), backend.cce_backward(p, labels),
                   backend.softmax_cce_backward(p, labels), backend.bce_loss(s, binary),
                   backend.bce_backward(s, binary), backend.softmax_backward(p, backend.cce_backward(p, labels))]
    for i, r in enumerate(results):
        assert np.isfinite(backend.to_numpy(r)).all(), f"result {i} is not finite"
    np.testing.assert_allclose(backend.to_float(backend.cce_loss(p, labels)), -np.log(1e-7), rtol=1e-5)


TORCH_ACTIVATIONS = {"relu": ReLU, "leaky_relu": lambda: LeakyReLU(0.1), "sigmoid": Sigmoid, "tanh": Tanh}


@pytest.mark.parametrize("act", list(TORCH_ACTIVATIONS))
def test_model_gradients_match_torch_autograd(backend, act):
    """Model.backward against PyTorch autograd of the same network, loss and L1/L2 penalties."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; the autograd comparison needs it")
    functional = {"relu": torch.relu, "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.1),
                  "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act]
    rng = np.random.default_rng(10)
    model = Model(backend=backend, seed=2, dtype=DTYPE)
    model.add(Dense(4, 6, weight_regularizer_l1=0.01, weight_regularizer_l2=0.02, bias_regularizer_l2=0.03))
    model.add(TORCH_ACTIVATIONS[act]())
    model.add(Dense(6, 3, bias_regularizer_l1=0.04))
    model.add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    for p in model.params():
        p.value[...] = backend.asarray(away_from_zero(rng.standard_normal(p.value.shape) * 0.5), DTYPE)
    x, labels = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    model.backward(model.forward(backend.asarray(x, DTYPE), training=True), backend.asarray(labels))

    tensors = [torch.tensor(w, requires_grad=True) for w in model.get_weights()]
    W1, b1, W2, b2 = tensors
    logits = functional(torch.tensor(x) @ W1 + b1) @ W2 + b2
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
    loss = loss + 0.01 * W1.abs().sum() + 0.02 * (W1 ** 2).sum() + 0.03 * (b1 ** 2).sum() + 0.04 * b2.abs().sum()
    loss.backward()
    for p, t in zip(model.params(), tensors, strict=True):
        np.testing.assert_allclose(backend.to_numpy(p.grad), t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=p.name)
