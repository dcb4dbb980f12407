"""Learning-rate schedules: their closed forms, PyTorch's schedulers, and the fused steps following them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnbackends import Model
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, ReLU, Softmax
from nnbackends.optimizers import SGD, Adam, optimizer_from_config
from nnbackends.schedules import (Constant, CosineDecay, ExponentialDecay, InverseTimeDecay, PiecewiseConstant,
                                  StepDecay, schedule_from_config)

STEPS = 60


def rates(schedule, steps=STEPS):
    return np.array([schedule(t) for t in range(steps)])


def test_closed_forms():
    np.testing.assert_allclose(rates(InverseTimeDecay(0.5, 0.1)), [0.5 / (1 + 0.1 * t) for t in range(STEPS)],
                               rtol=1e-15)
    np.testing.assert_allclose(rates(StepDecay(0.5, 7, 0.5)), [0.5 * 0.5 ** (t // 7) for t in range(STEPS)],
                               rtol=1e-15)
    np.testing.assert_allclose(rates(ExponentialDecay(0.5, 0.9)), [0.5 * 0.9 ** t for t in range(STEPS)], rtol=1e-15)
    cosine = rates(CosineDecay(0.4, decay_steps=20, final_learning_rate=0.1, warmup_steps=5))
    warm_up = [0.4 * t / 5 for t in range(5)]  # linear from 0
    decay = [0.1 + 0.3 * (1 + math.cos(math.pi * min(t, 20) / 20)) / 2 for t in range(STEPS - 5)]  # flat after 20
    np.testing.assert_allclose(cosine, warm_up + decay, rtol=1e-15)
    assert cosine[0] == 0.0 and cosine[5] == 0.4 and np.all(cosine[25:] == 0.1)
    piecewise = rates(PiecewiseConstant([10, 30], [1.0, 0.5, 0.1]))
    assert piecewise.tolist() == [1.0] * 10 + [0.5] * 20 + [0.1] * 30


def _torch_rates(torch, make_scheduler, lr, steps=STEPS):
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.array(out)


def test_cosine_after_its_warm_up_matches_torch():
    """The decay that follows a warm-up is CosineAnnealingLR's, shifted by the warm-up's steps."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; the scheduler comparison needs it")
    ours = rates(CosineDecay(0.3, decay_steps=40, final_learning_rate=0.02, warmup_steps=10), 51)[10:]
    theirs = _torch_rates(torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=40, eta_min=0.02),
                          0.3, steps=41)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize("name", ["step", "exponential", "cosine"])
def test_matches_torch_schedulers(name):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; the scheduler comparison needs it")
    lr_s = torch.optim.lr_scheduler
    ours, theirs = {
        "step": (StepDecay(0.3, 7, 0.5), lambda o: lr_s.StepLR(o, step_size=7, gamma=0.5)),
        "exponential": (ExponentialDecay(0.3, 0.93), lambda o: lr_s.ExponentialLR(o, gamma=0.93)),
        "cosine": (CosineDecay(0.3, decay_steps=STEPS - 1, final_learning_rate=0.01),
                   lambda o: lr_s.CosineAnnealingLR(o, T_max=STEPS - 1, eta_min=0.01)),
    }[name]
    np.testing.assert_allclose(rates(ours), _torch_rates(torch, theirs, 0.3), rtol=1e-12)


@pytest.mark.parametrize("bad", [
    lambda: StepDecay(0.1, 0, 0.5), lambda: StepDecay(0.1, 3, 1.5), lambda: ExponentialDecay(0.1, 0.0),
    lambda: CosineDecay(0.1, 10, final_learning_rate=0.2), lambda: CosineDecay(0.1, 10, warmup_steps=-1),
    lambda: PiecewiseConstant([5, 3], [1, 2, 3]), lambda: PiecewiseConstant([5], [1.0]),
    lambda: InverseTimeDecay(-1.0, 0.1), lambda: Adam(InverseTimeDecay(0.1, 0.1), decay=0.1),
])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()


def test_decay_is_inverse_time_decay():
    a, b = SGD(0.5, decay=0.01), SGD(InverseTimeDecay(0.5, 0.01))
    for _ in range(5):
        a.pre_update(), b.pre_update(), a.post_update(), b.post_update()
    assert a.current_learning_rate == b.current_learning_rate == 0.5 / (1 + 0.01 * 4)


@pytest.mark.parametrize("schedule", [StepDecay(0.05, 3, 0.5), CosineDecay(0.05, 10, warmup_steps=2),
                                      PiecewiseConstant([4], [0.05, 0.01]), Constant(0.02)])
def test_schedules_survive_a_config_round_trip(schedule):
    again = schedule_from_config(schedule.config())
    assert type(again) is type(schedule) and rates(again) .tolist() == rates(schedule).tolist()
    opt = optimizer_from_config(Adam(schedule).config())
    assert rates(opt.schedule).tolist() == rates(schedule).tolist()


def _spiral(backend, schedule):
    model = Model(backend=backend, seed=0, dtype="float64")
    model.add(Dense(2, 16)), model.add(ReLU()), model.add(Dense(16, 3)), model.add(Softmax())
    return model.compile(optimizer=Adam(schedule))


def test_fused_step_follows_the_schedule(backend):
    """The backend's fused step (where it has one) takes the rate per step: same weights as the NumPy path."""
    X, y = spiral_data(30, 3)
    schedule = CosineDecay(0.05, decay_steps=12, warmup_steps=3)
    model = _spiral(backend, schedule)
    if not backend.fused_step(model):
        pytest.skip(f"the {backend.name!r} backend has no fused step")
    model.fit(X, y, epochs=4, batch_size=32, verbose=0, fused=True)
    reference = _spiral("numpy", schedule)
    reference.fit(X, y, epochs=4, batch_size=32, verbose=0, fused=False)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert model.optimizer.current_learning_rate == schedule(model.optimizer.iterations - 1)
