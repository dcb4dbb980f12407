"""Non-finite training stops at the bad step with TrainingDivergedError, on every backend.

An SGD whose learning rate jumps to 1e30 at a chosen step makes the weights
huge but finite; the next step's logits overflow, so its loss and gradients
are NaN or Inf. The model must keep the weights it had before that step and
the error must carry the epochs completed before it. The overflow itself
raises no warning: the error says everything (warnings are errors here).
"""
from __future__ import annotations

import numpy as np
import pytest

import nnbackends as nb
from nnbackends.layers import Dense, ReLU, Softmax

pytestmark = pytest.mark.filterwarnings("error")

X, Y = nb.datasets.spiral_data(10, 3)  # 30 samples
BATCH = 10  # 3 steps per epoch


class ExplodingSGD(nb.optimizers.SGD):
    """SGD that records the weights before every step and blows up at step ``boom_at`` (0-based)."""

    def __init__(self, model, boom_at):
        super().__init__(learning_rate=0.1)
        self.model, self.boom_at = model, boom_at
        self.before = None

    def pre_update(self):
        super().pre_update()
        self.before = self.model.get_weights()
        if self.iterations == self.boom_at:
            self.current_learning_rate = 1e30


def diverging_model(backend, boom_at):
    model = nb.Model(backend=backend, seed=1)
    model.add(Dense(2, 16)).add(ReLU()).add(Dense(16, 3)).add(Softmax())
    return model.compile(loss="categorical_crossentropy", optimizer=ExplodingSGD(model, boom_at))


@pytest.mark.parametrize("boom_at", [0, 7])
def test_divergence_stops_at_the_bad_step_and_keeps_the_last_finite_weights(backend, boom_at):
    model = diverging_model(backend, boom_at)
    with pytest.raises(nb.TrainingDivergedError) as info:
        model.fit(X, Y, epochs=50, batch_size=BATCH, shuffle=False, verbose=0)
    err = info.value
    bad_step = boom_at + 2  # 1-based: the step after the exploding update
    epoch, step = (bad_step - 1) // 3 + 1, (bad_step - 1) % 3 + 1
    assert (err.epoch, err.step) == (epoch, step)
    message = str(err)
    assert f"epoch {epoch}, step {step}" in message
    assert "lower learning rate" in message
    assert model.optimizer.iterations == bad_step - 1  # the bad step was not counted
    for got, want in zip(model.get_weights(), model.optimizer.before):
        np.testing.assert_array_equal(got, want)
        assert np.isfinite(got).all()
    assert err.history.epochs == epoch - 1
    assert len(err.history.history.get("loss", [])) == epoch - 1
    assert np.isfinite(err.history.history.get("loss", [])).all()


def test_divergence_error_is_a_floating_point_error_with_its_fields(backend):
    model = diverging_model(backend, 0)
    with pytest.raises(FloatingPointError) as info:
        model.fit(X, Y, epochs=5, verbose=0)  # full batch: step 1 explodes, epoch 2 step 1 is non-finite
    assert isinstance(info.value, nb.TrainingDivergedError)
    assert (info.value.epoch, info.value.step) == (2, 1)
    assert info.value.history.epochs == 1
    assert "became NaN or Inf" in str(info.value)
