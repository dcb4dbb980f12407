"""Exact resume: N epochs, save, load, N more equals 2N epochs in one fit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnbackends import Model, ModelFileError, load_model
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, Dropout, ReLU, Softmax
from nnbackends.model_files import read_safetensors, write_safetensors
from nnbackends.optimizers import SGD, Adam

N = 3


def build(backend, dropout=True, optimizer=None):
    model = Model(backend=backend, seed=7, dtype="float64")
    model.add(Dense(2, 16)), model.add(ReLU())
    if dropout:
        model.add(Dropout(0.1))
    model.add(Dense(16, 3)), model.add(Softmax())
    return model.compile(optimizer=optimizer or Adam(0.02, decay=1e-3))


@pytest.mark.parametrize("dropout", [True, False], ids=["dropout", "fused-eligible"])
def test_n_plus_n_epochs_equal_2n(backend, tmp_path, dropout):
    X, y = spiral_data(40, 3)
    whole = build(backend, dropout)
    whole.fit(X, y, epochs=2 * N, batch_size=32, verbose=0)
    first = build(backend, dropout)
    first.fit(X, y, epochs=N, batch_size=32, verbose=0)
    first.save(tmp_path / "half.safetensors")
    resumed = load_model(tmp_path / "half.safetensors", backend=backend)
    assert resumed.epochs_trained == N and resumed.optimizer.iterations == first.optimizer.iterations
    history = resumed.fit(X, y, epochs=N, batch_size=32, verbose=0)
    assert resumed.epochs_trained == 2 * N and history.epochs == N
    for got, want in zip(resumed.get_weights(), whole.get_weights()):
        if backend.name == "numpy":
            assert got.tobytes() == want.tobytes()
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_include_optimizer_false_leaves_the_state_out(tmp_path):
    X, y = spiral_data(20, 3)
    model = build("numpy")
    model.fit(X, y, epochs=2, verbose=0)
    model.save(tmp_path / "weights.safetensors", include_optimizer=False)
    tensors, meta = read_safetensors(tmp_path / "weights.safetensors")
    assert "training" not in meta and not any(name.startswith("optimizer.") for name in tensors)
    loaded = load_model(tmp_path / "weights.safetensors")
    assert loaded.optimizer.iterations == 0 and loaded.epochs_trained == 0
    assert all(not p.state["m"].any() for p in loaded.params())


def test_the_optimizer_state_round_trips(tmp_path):
    X, y = spiral_data(20, 3)
    model = build("numpy", optimizer=SGD(0.5, momentum=0.9))
    model.fit(X, y, epochs=3, verbose=0)
    model.save(tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    for a, b in zip(model.params(), loaded.params()):
        assert a.state["velocity"].tobytes() == b.state["velocity"].tobytes()
    assert loaded.rng.bit_generator.state == model.rng.bit_generator.state


def test_a_file_with_missing_state_tensors_is_refused(tmp_path):
    X, y = spiral_data(20, 3)
    model = build("numpy")
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.safetensors")
    tensors, meta = read_safetensors(tmp_path / "m.safetensors")
    del tensors["optimizer.0.W.m"]
    write_safetensors(tmp_path / "broken.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match="missing tensors \\['optimizer.0.W.m'\\]"):
        load_model(tmp_path / "broken.safetensors")
    meta["training"] = json.dumps({"iterations": 3})
    write_safetensors(tmp_path / "bad-meta.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match="invalid model metadata"):
        load_model(tmp_path / "bad-meta.safetensors")
