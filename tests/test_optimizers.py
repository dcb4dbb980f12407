"""Optimizer steps against hand-computed values and against ``torch.optim``.

Every optimizer runs the way the trainer drives it (``pre_update``, ``update``
per parameter, ``post_update``) on the backend under test. The hand-computed
cases use a two-element parameter ``[1, -2]`` and the gradients ``[2, -0.5]``
then ``[1, 0.5]``; each expected value is written as the arithmetic a reader
can redo on paper.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnbackends.layers import Param
from nnbackends.optimizers import SGD, Adagrad, Adam, RMSprop, get_optimizer, optimizer_from_config

P0 = [1.0, -2.0]
G1 = [2.0, -0.5]
G2 = [1.0, 0.5]
TOL = {"float32": 1e-6, "float64": 1e-12}


def run(backend, optimizer, start, grads, dtype):
    """Apply one step per gradient (lists of host arrays, one per parameter); return host values after each step."""
    params = [Param(f"p{i}", backend.asarray(np.array(s, dtype=np.float64), dtype)) for i, s in enumerate(start)]  # a copy: updates are in place
    optimizer.build(backend, params)
    history = []
    for step in grads:
        optimizer.pre_update()
        for p, g in zip(params, step):
            p.grad = backend.asarray(np.asarray(g, dtype=np.float64), dtype)
            optimizer.update(p)
        optimizer.post_update()
        history.append([backend.to_numpy(p.value).astype(np.float64) for p in params])
    return history


def check_hand(backend, dtype, optimizer, expected):
    """One parameter ``P0``, gradients ``G1`` then ``G2``: values after each step must equal ``expected``."""
    got = [h[0] for h in run(backend, optimizer, [P0], [[G1], [G2]], dtype)]
    np.testing.assert_allclose(got, expected, rtol=TOL[dtype], atol=TOL[dtype])


def test_sgd_plain(backend, dtype):
    # p -= lr * g with lr 0.5
    check_hand(backend, dtype, SGD(learning_rate=0.5), [
        [1.0 - 0.5 * 2.0, -2.0 + 0.5 * 0.5],
        [1.0 - 0.5 * 2.0 - 0.5 * 1.0, -2.0 + 0.5 * 0.5 - 0.5 * 0.5],
    ])


def test_sgd_momentum(backend, dtype):
    # v = 0.9 v - lr g; p += v.  Step 1: v = [-1, 0.25].  Step 2: v = [-0.9 - 0.5, 0.225 - 0.25].
    check_hand(backend, dtype, SGD(learning_rate=0.5, momentum=0.9), [
        [0.0, -1.75],
        [0.0 - 1.4, -1.75 - 0.025],
    ])


def test_sgd_decay_schedule(backend, dtype):
    """lr / (1 + decay * step): 1, 1/1.5, 1/2, 1/2.5 for lr 1 and decay 0.5."""
    opt = SGD(learning_rate=1.0, decay=0.5)
    rates = []
    params = [Param("p", backend.asarray(np.zeros(1), dtype))]
    opt.build(backend, params)
    for _ in range(4):
        opt.pre_update()
        rates.append(opt.current_learning_rate)
        params[0].grad = backend.asarray(np.ones(1), dtype)
        opt.update(params[0])
        opt.post_update()
    np.testing.assert_allclose(rates, [1.0, 1 / 1.5, 1 / 2.0, 1 / 2.5], rtol=1e-15)
    assert opt.iterations == 4
    np.testing.assert_allclose(backend.to_numpy(params[0].value), [-(1 + 1 / 1.5 + 1 / 2 + 1 / 2.5)], rtol=TOL[dtype])


@pytest.mark.parametrize("make", [Adagrad, RMSprop, Adam])
def test_decay_schedule_applies_to_every_optimizer(make):
    opt = make(learning_rate=0.2, decay=0.1)
    for step in range(3):
        opt.pre_update()
        assert opt.current_learning_rate == pytest.approx(0.2 / (1 + 0.1 * step), rel=1e-15)
        opt.post_update()


def test_adagrad(backend, dtype):
    # cache += g^2: [4, 0.25] then [5, 0.5]; p -= lr g / (sqrt(cache) + eps), lr 0.1
    eps = 1e-7
    s1 = [1.0 - 0.1 * 2.0 / (2.0 + eps), -2.0 + 0.1 * 0.5 / (0.5 + eps)]
    check_hand(backend, dtype, Adagrad(learning_rate=0.1, epsilon=eps), [
        s1,
        [s1[0] - 0.1 * 1.0 / (math.sqrt(5.0) + eps), s1[1] - 0.1 * 0.5 / (math.sqrt(0.5) + eps)],
    ])


def test_rmsprop(backend, dtype):
    # cache = 0.9 cache + 0.1 g^2: [0.4, 0.025] then [0.46, 0.0475]; p -= lr g / (sqrt(cache) + eps), lr 0.01
    eps = 1e-7
    s1 = [1.0 - 0.01 * 2.0 / (math.sqrt(0.4) + eps), -2.0 + 0.01 * 0.5 / (math.sqrt(0.025) + eps)]
    check_hand(backend, dtype, RMSprop(learning_rate=0.01, rho=0.9, epsilon=eps), [
        s1,
        [s1[0] - 0.01 * 1.0 / (math.sqrt(0.46) + eps), s1[1] - 0.01 * 0.5 / (math.sqrt(0.0475) + eps)],
    ])


def test_adam_with_bias_correction(backend, dtype):
    # m = 0.9 m + 0.1 g: [0.2, -0.05] then [0.28, 0.005]
    # v = 0.999 v + 0.001 g^2: [0.004, 0.00025] then [0.004996, 0.00049975]
    # step 1: m_hat = m / 0.1 = g, v_hat = v / 0.001 = g^2
    # step 2: m_hat = m / (1 - 0.9^2) = m / 0.19, v_hat = v / (1 - 0.999^2) = v / 0.001999
    eps = 1e-7
    s1 = [1.0 - 0.01 * 2.0 / (2.0 + eps), -2.0 + 0.01 * 0.5 / (0.5 + eps)]
    check_hand(backend, dtype, Adam(learning_rate=0.01, epsilon=eps), [
        s1,
        [s1[0] - 0.01 * (0.28 / 0.19) / (math.sqrt(0.004996 / 0.001999) + eps),
         s1[1] - 0.01 * (0.005 / 0.19) / (math.sqrt(0.00049975 / 0.001999) + eps)],
    ])


def test_string_names_use_the_book_defaults():
    assert get_optimizer("sgd").config() == {"name": "sgd", "learning_rate": 1.0, "decay": 0.0, "momentum": 0.0}
    assert get_optimizer("adagrad").config() == {"name": "adagrad", "learning_rate": 1.0, "decay": 0.0, "epsilon": 1e-7}
    assert get_optimizer("rmsprop").config() == {"name": "rmsprop", "learning_rate": 0.001, "decay": 0.0,
                                                 "epsilon": 1e-7, "rho": 0.9}
    assert get_optimizer("Adam").config() == {"name": "adam", "learning_rate": 0.001, "decay": 0.0, "epsilon": 1e-7,
                                              "beta_1": 0.9, "beta_2": 0.999}


def test_config_round_trip():
    opt = Adam(learning_rate=0.05, decay=5e-7, beta_1=0.8)
    again = optimizer_from_config(opt.config())
    assert type(again) is Adam and again.config() == opt.config()


def test_unknown_optimizer_names_the_valid_ones():
    with pytest.raises(ValueError, match="optimizer 'adamw'.*sgd, adagrad, rmsprop, adam"):
        get_optimizer("adamw")


# ---------------------------------------------------------------------- torch.optim as an oracle
TORCH_CASES = {
    "sgd": (lambda: SGD(learning_rate=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda: SGD(learning_rate=0.1, momentum=0.9),
                     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0)),
    "adagrad": (lambda: Adagrad(learning_rate=0.5, epsilon=1e-7),
                lambda t, p: t.optim.Adagrad(p, lr=0.5, eps=1e-7)),
    "rmsprop": (lambda: RMSprop(learning_rate=0.01, rho=0.8, epsilon=1e-7),
                lambda t, p: t.optim.RMSprop(p, lr=0.01, alpha=0.8, eps=1e-7)),
    "adam": (lambda: Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-7),
             lambda t, p: t.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
}


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed; the torch.optim comparison needs it")


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch_optim(backend, torch, name):
    """Six steps on two parameters with random gradients, float64, decay 0."""
    ours, theirs = TORCH_CASES[name]
    rng = np.random.default_rng(12)
    start = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(s.shape) for s in start] for _ in range(6)]
    got = run(backend, ours(), start, grads, "float64")

    tparams = [torch.tensor(s, dtype=torch.float64, requires_grad=True) for s in start]
    topt = theirs(torch, tparams)
    for step, values in zip(grads, got):
        for tp, g in zip(tparams, step):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        for tp, v in zip(tparams, values):
            np.testing.assert_allclose(v, tp.detach().numpy(), rtol=1e-12, atol=1e-13, err_msg=name)
