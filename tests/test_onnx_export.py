"""ONNX export, judged by ONNX's own checker and by ONNX Runtime against ``Model.predict``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli

from nnbackends import Model
from nnbackends.errors import ExportError
from nnbackends.export import DEFAULT_OPSET, MIN_OPSET, supported_opsets, to_onnx
from nnbackends.layers import Dense, Dropout, Layer, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh

onnx = pytest.importorskip("onnx", reason='ONNX export tests need onnx: pip install "nnbackends[onnx]"')
ort = pytest.importorskip("onnxruntime", reason='ONNX export tests need onnxruntime: pip install "nnbackends[onnx]"')

#: Relative tolerance of ONNX Runtime's outputs against predict (scaled by the largest output, at least 1).
RTOL = {"float32": 1e-5, "float64": 1e-12}
HIDDEN = {
    "relu": ReLU, "leaky_relu": lambda: LeakyReLU(0.1), "leaky_relu_steep": lambda: LeakyReLU(2.5),
    "sigmoid": Sigmoid, "tanh": Tanh, "linear": Linear,
}


def make_model(hidden, out, dtype, backend="numpy", n_inputs=5, n_outputs=3, seed=0, dropout=False):
    """Dense -> hidden activation -> [Dropout] -> Dense -> hidden -> Dense -> out, with random biases."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    model.add(Dense(n_inputs, 16)); model.add(HIDDEN[hidden]())
    if dropout:
        model.add(Dropout(0.5))
    model.add(Dense(16, 8)); model.add(HIDDEN[hidden]())
    model.add(Dense(8, n_outputs)); model.add(out())
    rng = np.random.default_rng(seed + 1)
    model.set_weights([w + rng.normal(0, 0.3, w.shape) if w.ndim == 1 else w for w in model.get_weights()])
    return model


def session(path_or_proto):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initializers
    data = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def assert_rel(got, want, dtype):
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    tol = RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


def inputs(n, n_inputs=5, seed=3):
    return np.random.default_rng(seed).normal(0, 2.0, (n, n_inputs))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden,out", [(h, Softmax) for h in HIDDEN] + [("tanh", Linear), ("relu", Sigmoid)],
                         ids=[f"{h}-softmax" for h in HIDDEN] + ["regression-tanh-linear", "relu-sigmoid"])
def test_onnx_runtime_matches_predict(tmp_path, hidden, out, dtype):
    model = make_model(hidden, out, dtype, n_outputs=2 if out is Linear else 3)
    path = tmp_path / "model.onnx"
    proto = to_onnx(model, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert onnx.load(str(path)).SerializeToString() == proto.SerializeToString()
    run = session(str(path))
    for n in (1, 1000):  # one session: the batch dimension is dynamic
        X = inputs(n).astype(dtype)
        (got,) = run.run(None, {"input": X})
        assert_rel(got, model.predict(X), dtype)


def test_graph_nodes_types_and_dynamic_batch():
    model = make_model("leaky_relu", Softmax, "float32", dropout=True)
    proto = to_onnx(model, None)
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "LeakyRelu", "Gemm", "LeakyRelu", "Gemm", "Softmax"]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    for value, width in ((inp, 5), (out, 3)):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        batch, features = value.type.tensor_type.shape.dim
        assert batch.dim_param == "batch" and not batch.HasField("dim_value")
        assert features.dim_value == width
    assert proto.opset_import[0].version == DEFAULT_OPSET
    assert proto.producer_name == "nnbackends"
    # Initializers hold the weights as they are: W of shape (in, out) for Gemm.
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights["layer0.W"], model.layers[0].W.value)
    np.testing.assert_array_equal(weights["layer0.b"], model.layers[0].b.value)


def test_float64_leaky_relu_keeps_alpha_in_double():
    """ONNX's LeakyRelu attribute is a float32; in float64 the graph spells out max(x, alpha*x)."""
    model = make_model("leaky_relu", Linear, "float64")
    proto = to_onnx(model, None)
    assert "LeakyRelu" not in {n.op_type for n in proto.graph.node}
    alpha = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}["layer1.alpha"]
    assert alpha.dtype == np.float64 and alpha == 0.1
    assert abs(float(np.float32(0.1)) - 0.1) > 1e-12  # why: a float32 attribute would be off by 1.5e-9 relative


def test_dropout_is_left_out_as_identity_at_inference():
    model = make_model("relu", Softmax, "float64", dropout=True)
    proto = to_onnx(model, None)
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    X = inputs(50)
    (got,) = session(proto).run(None, {"input": X})
    assert_rel(got, model.predict(X), "float64")


def test_export_reads_weights_from_every_backend(backend, tmp_path):
    model = make_model("tanh", Softmax, "float32", backend=backend)
    X = inputs(64).astype(np.float32)
    (got,) = session(to_onnx(model, tmp_path / "m.onnx")).run(None, {"input": X})
    assert_rel(got, model.predict(X), "float32")


def test_default_opset_is_pinned_and_each_supported_opset_passes_the_checker():
    assert DEFAULT_OPSET == 17  # pinned: files do not change when onnx is upgraded
    opsets = supported_opsets()
    assert opsets.start == MIN_OPSET and opsets.stop - 1 == onnx.defs.onnx_opset_version()
    model = make_model("leaky_relu", Softmax, "float64")
    X = inputs(20)
    want = model.predict(X)
    for opset in opsets:
        proto = to_onnx(model, None, opset=opset)
        assert proto.opset_import[0].version == opset
        onnx.checker.check_model(proto, full_check=True)
        if opset <= DEFAULT_OPSET:  # ONNX Runtime releases may trail onnx's newest opsets
            (got,) = session(proto).run(None, {"input": X})
            assert_rel(got, want, "float64")


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, 1000])
def test_an_unsupported_opset_names_the_supported_ones(opset, tmp_path):
    model = make_model("relu", Softmax, "float32")
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ExportError, match=f"opset {opset}") as info:
        to_onnx(model, tmp_path / "m.onnx", opset=opset)
    message = str(info.value)
    assert f"onnx {onnx.__version__} supports opsets 1 to {newest}" in message
    assert f"writes opsets {MIN_OPSET} to {newest}" in message
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(TypeError, match="opset must be an integer"):
        to_onnx(model, None, opset="17")


class Scale(Layer):
    """A layer of the user's own: ONNX export cannot know what it computes."""

    def forward(self, x, training=False):
        return x * 2

    def backward(self, dy, need_dx=True):
        return dy * 2


class MyReLU(ReLU):
    pass


@pytest.mark.parametrize("layer", [Scale(), MyReLU()], ids=["custom-layer", "subclass"])
def test_a_layer_onnx_cannot_express_is_named(layer, tmp_path):
    model = Model(backend="numpy", seed=0)
    model.add(Dense(3, 4)); model.add(layer); model.add(Dense(4, 2)); model.add(Softmax())
    path = tmp_path / "m.onnx"
    path.write_bytes(b"an older export")
    with pytest.raises(ExportError) as info:
        to_onnx(model, path)
    message = str(info.value)
    assert f"layer 1 {type(layer).__name__}()" in message and "to ONNX" in message
    assert "Dense, ReLU, LeakyReLU" in message
    assert path.read_bytes() == b"an older export"


# ---------------------------------------------------------------------- command line
@pytest.fixture
def saved(tmp_path):
    model = make_model("relu", Softmax, "float32")
    model.compile()
    model.save(tmp_path / "model.safetensors")
    return tmp_path, model


def test_cli_export_onnx(saved):
    folder, model = saved
    proc = run_cli("export", "model.safetensors", "--onnx", "model.onnx", "--opset", "13", "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"model": "model.safetensors", "onnx": "model.onnx", "opset": 13, "torch": None}
    proto = onnx.load(str(folder / "model.onnx"))
    assert proto.opset_import[0].version == 13
    X = inputs(100).astype(np.float32)
    (got,) = session(str(folder / "model.onnx")).run(None, {"input": X})
    assert_rel(got, model.predict(X), "float32")
    plain = run_cli("export", "model.safetensors", "--onnx", "default.onnx", cwd=folder)
    assert plain.returncode == 0 and f"opset {DEFAULT_OPSET}" in plain.stdout
    assert onnx.load(str(folder / "default.onnx")).opset_import[0].version == DEFAULT_OPSET


@pytest.mark.parametrize("args,fragments", [
    (["--opset", "3", "--onnx", "m.onnx"], ["opset 3", f"writes opsets {MIN_OPSET} to"]),
    ([], ["give --onnx", "--torch"]),
    (["--opset", "13"], ["--opset goes with --onnx"]),
])
def test_cli_export_errors_are_one_line(saved, args, fragments):
    folder, _ = saved
    proc = run_cli("export", "model.safetensors", *args, cwd=folder)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (folder / "m.onnx").exists()


def test_a_fitted_estimators_model_exports(tmp_path):
    pytest.importorskip("sklearn", reason='needs scikit-learn: pip install "nnbackends[sklearn]"')
    from nnbackends.sklearn import NNClassifier

    X = inputs(200)
    y = np.where(X[:, 0] + X[:, 1] > 0, "up", "down")
    clf = NNClassifier(hidden_layer_sizes=(8,), epochs=30, learning_rate=0.01, backend="numpy", random_state=0)
    clf.fit(X, y)
    (p,) = session(to_onnx(clf.model_, tmp_path / "clf.onnx")).run(None, {"input": X.astype(clf.model_.dtype)})
    np.testing.assert_array_equal(clf.classes_[p.argmax(axis=1)], clf.predict(X))
    np.testing.assert_allclose(p, clf.predict_proba(X), rtol=1e-5, atol=1e-5)
