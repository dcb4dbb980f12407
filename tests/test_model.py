"""Model API: Keras-layout weights, History, evaluate/predict and the trainer's bookkeeping."""
from __future__ import annotations

import numpy as np
import pytest

from nnbackends import Model
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, Dropout, ReLU, Softmax


def small_model(backend="numpy", dtype="float32", seed=0):
    model = Model(backend=backend, seed=seed, dtype=dtype)
    model.add(Dense(2, 5))
    model.add(ReLU())
    model.add(Dropout(0.2))
    model.add(Dense(5, 3))
    model.add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    return model


def test_get_weights_keras_layout(backend, dtype):
    weights = small_model(backend, dtype).get_weights()
    assert [w.shape for w in weights] == [(2, 5), (5,), (5, 3), (3,)]
    assert all(type(w) is np.ndarray and w.dtype == np.dtype(dtype) for w in weights)
    assert weights[0].any() and not weights[1].any()  # glorot weights, zero biases


def test_get_weights_returns_copies():
    model = small_model()
    weights = model.get_weights()
    weights[0][...] = 7.0
    assert not np.any(model.get_weights()[0] == 7.0)


def test_set_weights_round_trip(backend, dtype):
    model = small_model(backend, dtype)
    rng = np.random.default_rng(1)
    new = [rng.standard_normal(w.shape) for w in model.get_weights()]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new, strict=True):
        np.testing.assert_array_equal(got, want.astype(dtype))
    X = rng.standard_normal((4, 2))
    hidden = np.maximum(X @ new[0] + new[1], 0)
    logits = hidden @ new[2] + new[3]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(model.predict(X), expected, rtol=tol, atol=tol)


def test_set_weights_rejects_wrong_count_and_shape():
    model = small_model()
    weights = model.get_weights()
    with pytest.raises(ValueError, match="expected 4 arrays, got 3"):
        model.set_weights(weights[:3])
    weights[2] = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"array 2 \(W\) has shape \(3, 5\), expected \(5, 3\)"):
        model.set_weights(weights)


def test_same_seed_same_model_and_run():
    X, y = spiral_data(20, 3)
    a, b = small_model(seed=5), small_model(seed=5)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    ha = a.fit(X, y, epochs=5, batch_size=16, verbose=0)  # shuffling and dropout draw from the seed too
    hb = b.fit(X, y, epochs=5, batch_size=16, verbose=0)
    assert ha.history == hb.history
    assert not np.array_equal(small_model(seed=6).get_weights()[0], a.get_weights()[0])


def test_history_and_evaluate():
    X, y = spiral_data(20, 3)
    model = small_model()
    history = model.fit(X, y, epochs=4, batch_size=25, validation_data=(X, y), verbose=0)
    assert history.epochs == 4
    assert set(history.history) == {"loss", "data_loss", "regularization_loss", "accuracy", "val_loss",
                                     "val_accuracy"}
    assert all(len(v) == 4 for v in history.history.values())
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(X, y)["loss"])
    assert model.optimizer.iterations == 4 * 3  # 60 samples in batches of 25: 3 steps per epoch


def test_epoch_loss_is_the_sample_weighted_mean_of_batch_losses():
    """With SGD at a tiny rate, the epoch loss equals the loss of the (almost unchanged) model."""
    X, y = spiral_data(20, 3)
    X = X + 0.1  # no all-zero rows: their outputs would tie, and a tie breaks on rounding
    model = Model(backend="numpy", seed=0, dtype="float64")
    model.add(Dense(2, 4))
    model.add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    model.optimizer.learning_rate = model.optimizer.current_learning_rate = 1e-12
    before = model.evaluate(X, y)
    history = model.fit(X, y, epochs=1, batch_size=7, verbose=0)
    assert history["loss"][0] == pytest.approx(before["loss"], rel=1e-9)
    assert history["accuracy"][0] == pytest.approx(before["accuracy"], rel=1e-9)


def test_predict_batches_match_full_batch():
    X = np.random.default_rng(0).standard_normal((23, 2))
    model = small_model()
    np.testing.assert_array_equal(model.predict(X, batch_size=5), model.predict(X))
    assert model.predict(X).shape == (23, 3)


def test_summary_counts_parameters():
    text = small_model().summary(print_fn=None)
    assert "total parameters: 33" in text  # 2*5 + 5 + 5*3 + 3


def test_history_times_the_first_epoch_apart_from_the_steady_state():
    X, y = spiral_data(20, 3)
    model = Model(backend="numpy", seed=0)
    model.add(Dense(2, 8)).add(ReLU()).add(Dense(8, 3)).add(Softmax())
    model.compile(optimizer="adam")
    one = model.fit(X, y, epochs=1, verbose=0)
    assert one.steps == 1 and one.steps_per_second is None and one.first_epoch_seconds == one.seconds
    many = model.fit(X, y, epochs=4, batch_size=25, verbose=0)
    assert many.steps == 4 * 3
    assert 0 < many.first_epoch_seconds < many.seconds
    assert many.steps_per_second == pytest.approx(9 / (many.seconds - many.first_epoch_seconds))


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_epoch_sees_every_row_once_with_its_label(backend, shuffle):
    """Batches of 7 over 30 rows: sizes 7,7,7,7,2, every (row, label) pair once per epoch;
    shuffled, the order changes from epoch to epoch, otherwise it is the data's order."""
    X = np.arange(60, dtype=np.float64).reshape(30, 2)
    y = np.arange(30) % 3
    model = Model(backend=backend, seed=0, dtype="float64")
    model.add(Dense(2, 3)).add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    seen = []
    step = model.train_step

    def recording_step(xb, yb):
        seen.append((backend.to_numpy(xb).copy(), backend.to_numpy(yb).copy()))
        return step(xb, yb)

    model.train_step = recording_step
    model.fit(X, y, epochs=3, batch_size=7, shuffle=shuffle, verbose=0, fused=False)
    assert [len(xb) for xb, _ in seen] == [7, 7, 7, 7, 2] * 3
    orders = []
    for epoch in range(3):
        xs = np.concatenate([xb for xb, _ in seen[5 * epoch:5 * epoch + 5]])
        ys = np.concatenate([yb for _, yb in seen[5 * epoch:5 * epoch + 5]])
        rows = (xs[:, 0] / 2).astype(int)
        np.testing.assert_array_equal(np.sort(rows), np.arange(30))
        np.testing.assert_array_equal(ys, y[rows])
        orders.append(rows)
    if shuffle:
        assert not np.array_equal(orders[0], np.arange(30))
        assert not np.array_equal(orders[0], orders[1])
    else:
        assert all(np.array_equal(o, np.arange(30)) for o in orders)


def test_old_fused_step_names_still_work_with_a_deprecation():
    X, y = spiral_data(10, 3)
    model = Model(backend="numpy", seed=0)
    model.add(Dense(2, 3)).add(Softmax()).compile()
    with pytest.warns(DeprecationWarning, match="use fit\\(fused=...\\)"):
        model.fit(X, y, epochs=1, verbose=0, compiled=False)
    with pytest.warns(DeprecationWarning, match="use Backend.fused_step"):
        assert model.backend.compile_step(model) is None
