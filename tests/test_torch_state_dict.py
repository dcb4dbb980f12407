"""PyTorch state dicts: written here, loaded by ``torch.nn.Sequential``; written by PyTorch, trained on here.

Tests that need PyTorch skip with a reason where it is not installed (CI installs it);
the naming and mismatch checks need only NumPy and safetensors.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli

from nnbackends import Model
from nnbackends.errors import ExportError
from nnbackends.export import (
    load_torch_state_dict,
    load_torch_state_dict_file,
    save_torch_state_dict,
    to_torch_module,
    to_torch_state_dict,
)
from nnbackends.layers import Dense, Dropout, Layer, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from nnbackends.optimizers import SGD

safetensors = pytest.importorskip("safetensors", reason="state-dict files need safetensors: pip install safetensors")
RTOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="needs PyTorch (CI installs it; elsewhere: pip install torch)")


def make_model(act, out=Softmax, dtype="float32", seed=0, backend="numpy"):
    """Dense(4, 16) act Dropout Dense(16, 8) act Dense(8, 3) out: parameters at layers 0, 3 and 5."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    for layer in (Dense(4, 16), act(), Dropout(0.25), Dense(16, 8), act(), Dense(8, 3), out()):
        model.add(layer)
    rng = np.random.default_rng(seed + 1)
    model.set_weights([w + rng.normal(0, 0.3, w.shape) if w.ndim == 1 else w for w in model.get_weights()])
    return model


def torch_twin(torch, act, out, dtype):
    """The same stack written by hand in PyTorch, one module per layer."""
    nn = torch.nn
    return nn.Sequential(nn.Linear(4, 16), act(), nn.Dropout(0.25), nn.Linear(16, 8), act(), nn.Linear(8, 3),
                         out()).to(getattr(torch, dtype)).eval()


def assert_rel(got, want, dtype):
    tol = RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


def test_names_and_layouts_follow_sequential():
    model = make_model(ReLU)
    state = to_torch_state_dict(model)
    assert list(state) == ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    assert state["0.weight"].shape == (16, 4) and state["3.weight"].shape == (8, 16) and state["5.bias"].shape == (3,)
    np.testing.assert_array_equal(state["3.weight"], model.layers[3].W.value.T)
    np.testing.assert_array_equal(state["3.bias"], model.layers[3].b.value)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in state.values())
    state["0.bias"][0] = 1e6  # a copy, not a view of the model's weights
    assert model.layers[0].b.value[0] != 1e6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act,out", [("ReLU", "Softmax"), ("LeakyReLU", "Softmax"), ("Sigmoid", "Softmax"),
                                     ("Tanh", "Identity"), ("Identity", "Sigmoid")])
def test_sequential_loads_the_file_strictly_and_matches_predict(torch, tmp_path, act, out, dtype):
    ours = {"ReLU": ReLU, "LeakyReLU": LeakyReLU, "Sigmoid": Sigmoid, "Tanh": Tanh, "Identity": Linear,
            "Softmax": Softmax}
    model = make_model(ours[act], ours[out], dtype)
    save_torch_state_dict(model, tmp_path / "w.safetensors")
    theirs = {"Softmax": lambda: torch.nn.Softmax(dim=1)}
    module = torch_twin(torch, theirs.get(act, getattr(torch.nn, act)), theirs.get(out, getattr(torch.nn, out)), dtype)
    import safetensors.torch

    module.load_state_dict(safetensors.torch.load_file(str(tmp_path / "w.safetensors")), strict=True)
    X = np.random.default_rng(2).normal(0, 2, (1000, 4)).astype(dtype)
    with torch.no_grad():
        got = module(torch.from_numpy(X)).numpy()
    assert_rel(got, model.predict(X), dtype)
    assert_rel(to_torch_module(model)(torch.from_numpy(X[:1])).detach().numpy(), model.predict(X[:1]), dtype)


def test_state_dict_from_torch_loads_and_trains_on_from_the_same_weights(torch, tmp_path):
    """Load PyTorch's own initial weights, then one SGD step here equals one step in PyTorch."""
    import safetensors.torch

    torch.manual_seed(0)
    nn = torch.nn
    module = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2), nn.Identity()).double()
    safetensors.torch.save_file(module.state_dict(), str(tmp_path / "torch.safetensors"))
    model = Model(backend="numpy", seed=0, dtype="float64")
    for layer in (Dense(4, 16), Tanh(), Dense(16, 2), Linear()):
        model.add(layer)
    load_torch_state_dict_file(model, tmp_path / "torch.safetensors")
    np.testing.assert_array_equal(model.layers[0].W.value, module[0].weight.detach().numpy().T)
    np.testing.assert_array_equal(model.layers[2].b.value, module[2].bias.detach().numpy())

    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 2))
    model.compile(loss="mse", optimizer=SGD(learning_rate=0.1), metrics=())
    model.fit(X, y, epochs=1, shuffle=False, verbose=0)  # one full-batch step
    step = torch.optim.SGD(module.parameters(), lr=0.1)
    step.zero_grad()
    nn.functional.mse_loss(module(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    step.step()
    after = to_torch_state_dict(model)
    for name, value in module.state_dict().items():
        np.testing.assert_allclose(after[name], value.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
    history = model.fit(X, y, epochs=50, shuffle=False, verbose=0)
    assert history["loss"][-1] < history["loss"][0]


def test_state_dict_of_tensors_loads_directly(torch):
    torch.manual_seed(1)
    module = torch_twin(torch, torch.nn.ReLU, lambda: torch.nn.Softmax(dim=1), "float32")
    model = make_model(ReLU, Softmax, "float32", seed=5)
    load_torch_state_dict(model, module.state_dict())
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with torch.no_grad():
        assert_rel(model.predict(X), module(torch.from_numpy(X)).numpy(), "float32")


def shifted(state):
    """A state dict of the same stack without the Dropout module: indices 0, 2, 4 instead of 0, 3, 5."""
    return {f"{ {'0': 0, '3': 2, '5': 4}[k.split('.')[0]] }.{k.split('.')[1]}": v for k, v in state.items()}


@pytest.mark.parametrize("change,fragments", [
    (lambda s: shifted(s), ["'2.weight'", "layer 2 is Dropout(rate=0.25), which has no weight", "index in model.layers"]),
    (lambda s: {k: v for k, v in s.items() if k != "3.bias"}, ["no '3.bias' (shape (8,)) for layer 3 Dense(n_inputs=16"]),
    (lambda s: {**s, "0.weight": s["0.weight"].T}, ["'0.weight' has shape (4, 16)", "needs (16, 4)", "(out, in)"]),
    (lambda s: {**s, "5.weight": np.zeros((3, 9))}, ["'5.weight' has shape (3, 9)", "needs (3, 8)"]),
    (lambda s: {**s, "7.weight": np.zeros((1, 1))}, ["'7.weight' (there is no layer 7: the model has 7 layers)"]),
    (lambda s: {**s, "head.scale": np.ones(1)}, ["'head.scale', which the model has no parameter for"]),
])
def test_a_state_dict_that_does_not_fit_names_the_first_mismatch_and_changes_nothing(change, fragments):
    source = make_model(ReLU, seed=1)
    model = make_model(ReLU, seed=2)
    before = model.get_weights()
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(model, change(to_torch_state_dict(source)))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_path_is_not_a_state_dict(tmp_path):
    with pytest.raises(TypeError, match="for a .safetensors file use load_torch_state_dict_file"):
        load_torch_state_dict(make_model(ReLU), str(tmp_path / "w.safetensors"))


def test_round_trip_through_a_file_without_torch(tmp_path):
    import safetensors.numpy

    source, target = make_model(Tanh, seed=1, dtype="float64"), make_model(Tanh, seed=2, dtype="float64")
    save_torch_state_dict(source, tmp_path / "w.safetensors")
    assert sorted(safetensors.numpy.load_file(str(tmp_path / "w.safetensors"))) == sorted(to_torch_state_dict(source))
    load_torch_state_dict_file(target, tmp_path / "w.safetensors")
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_file_that_is_not_safetensors_is_named(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="'.*bad.safetensors' is not a readable safetensors file"):
        load_torch_state_dict_file(make_model(ReLU), tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_torch_state_dict_file(make_model(ReLU), tmp_path / "missing.safetensors")


class Scale(Layer):
    def forward(self, x, training=False):
        return x * 2


def test_a_layer_a_state_dict_cannot_express_is_named(tmp_path):
    model = Model(backend="numpy", seed=0)
    model.add(Dense(3, 4)); model.add(ReLU()); model.add(Scale()); model.add(Dense(4, 2))
    with pytest.raises(ExportError, match=r"layer 2 Scale\(\) .* to a PyTorch state dict"):
        save_torch_state_dict(model, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_cli_export_torch_and_onnx_at_once(torch, tmp_path):
    import safetensors.torch

    model = make_model(ReLU, Softmax, "float32")
    model.compile()
    model.save(tmp_path / "model.safetensors")
    args = ["export", "model.safetensors", "--torch", "w.safetensors", "--json"]
    try:
        import onnx  # noqa: F401
        args += ["--onnx", "m.onnx"]
    except ImportError:
        pass
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["torch"] == "w.safetensors"
    module = torch_twin(torch, torch.nn.ReLU, lambda: torch.nn.Softmax(dim=1), "float32")
    module.load_state_dict(safetensors.torch.load_file(str(tmp_path / "w.safetensors")), strict=True)
    X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    with torch.no_grad():
        assert_rel(module(torch.from_numpy(X)).numpy(), model.predict(X), "float32")
    if "--onnx" in args:
        assert (tmp_path / "m.onnx").stat().st_size > 0
