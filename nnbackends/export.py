"""Models other tools can run: ONNX graphs and PyTorch state dicts.

``to_onnx(model, path)`` writes an ONNX graph of Gemm, Relu, LeakyRelu,
Sigmoid, Tanh and Softmax nodes with a dynamic batch dimension, in the model's
dtype (float32 or float64). ``to_torch_state_dict(model)`` gives the weights
under the names and layouts ``torch.nn.Sequential`` uses for the same stack of
modules (``"{i}.weight"`` of shape (out, in) and ``"{i}.bias"``, ``i`` the
layer's index in ``model.layers``); ``load_torch_state_dict`` takes such a dict
back. ``save_torch_state_dict`` / ``load_torch_state_dict_file`` do the same
through a ``.safetensors`` file that ``safetensors.torch.load_file`` reads.

Layer by layer (``i`` is the index in ``model.layers``):

=============  =======================================  ==================================
nnbackends     ONNX                                     torch.nn (in a Sequential)
=============  =======================================  ==================================
Dense          Gemm(x, W, b), W of shape (in, out)       Linear(in, out): ``i.weight`` = W.T
ReLU           Relu                                     ReLU()
LeakyReLU      LeakyRelu (float32); Max/Min(x, alpha*x)  LeakyReLU(alpha)
               in float64, where the ONNX attribute
               would round alpha to float32
Sigmoid        Sigmoid                                  Sigmoid()
Tanh           Tanh                                     Tanh()
Softmax        Softmax(axis=1)                          Softmax(dim=1)
Linear         no node (identity)                       Identity()
Dropout        no node (identity at inference)          Dropout(rate)
=============  =======================================  ==================================

Any other layer (a ``Layer`` subclass of your own, or a subclass of one of
these) raises ``ExportError`` naming the layer and the target. ``onnx`` and
``onnxruntime`` come with ``pip install "nnbackends[onnx]"``; the state-dict
files need ``safetensors``, and only ``to_torch_module`` needs PyTorch.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from .errors import ExportError
from .model_files import atomic_write
from .layers import Dense, Dropout, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh

#: The opset ``to_onnx`` writes unless told otherwise: read by onnx >= 1.12 and ONNX Runtime >= 1.13.
DEFAULT_OPSET = 17
#: The oldest opset the exporter writes: Gemm's broadcast bias needs 7, and ONNX Runtime runs Max
#: (float64 LeakyReLU) in double from opset 8.
MIN_OPSET = 8
#: The layer types each target can express (exact types: a subclass may compute something else).
EXPORTABLE = (Dense, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Linear, Dropout)
_INSTALL_ONNX = 'pip install "nnbackends[onnx]"'


def _check_layers(model, target, takes_preprocess=False):
    """Raise ``ExportError`` for the first layer ``target`` cannot express (or a preprocessing step)."""
    step = model.preprocess
    if step is not None and not takes_preprocess:
        raise ExportError(f"{target} has no place for the model's {step!r} step; export to ONNX "
                          "(which includes it), or apply model.preprocess to the inputs yourself.")
    if step is not None and not step.fitted:
        raise ExportError(f"The model's {step!r} step is not fitted yet: fit the model before exporting it.")
    if not model.layers:
        raise ExportError(f"Cannot export an empty model to {target}: add layers first.")
    for i, layer in enumerate(model.layers):
        if type(layer) not in EXPORTABLE:
            cls = type(layer)
            known = ", ".join(c.__name__ for c in EXPORTABLE)
            raise ExportError(
                f"Cannot export layer {i} {layer!r} ({cls.__module__}.{cls.__qualname__}) to {target}: "
                f"{target} export knows the layers {known} (exact types, not subclasses). "
                "Build the model from those layers, or leave this one out."
            )


def _host(model, param) -> np.ndarray:
    return np.ascontiguousarray(model.backend.to_numpy(param.value))


# ---------------------------------------------------------------------- ONNX
def supported_opsets() -> range:
    """The opsets ``to_onnx`` can write with the installed ``onnx``: ``MIN_OPSET`` to onnx's newest."""
    onnx = _import_onnx()
    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package: {_INSTALL_ONNX}.") from exc
    return onnx


def _check_opset(opset) -> int:
    onnx = _import_onnx()
    supported = supported_opsets()
    span = f"{supported.start} to {supported.stop - 1}"
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer ({span}), got {opset!r} ({type(opset).__name__}).")
    if int(opset) not in supported:
        raise ExportError(
            f"Cannot export to ONNX opset {opset}: the installed onnx {onnx.__version__} supports opsets "
            f"1 to {supported.stop - 1}, and nnbackends writes opsets {span} (default {DEFAULT_OPSET}). "
            f"Choose one of {span}, or upgrade onnx for newer opsets."
        )
    return int(opset)


def onnx_model(model, opset=None):
    """The ONNX ``ModelProto`` of ``model`` (see ``to_onnx``), checked with ``onnx.checker``."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    opset = _check_opset(DEFAULT_OPSET if opset is None else opset)  # an old onnx may lack the default
    _check_layers(model, "ONNX", takes_preprocess=True)
    dtype = np.dtype(model.dtype)
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    nodes, inits, current = [], [], "input"

    def emit(op, inputs, i, **attrs):
        nonlocal current
        out = f"layer{i}.{op.lower()}" if isinstance(i, int) else f"{i}.{op.lower()}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        current = out

    if model.preprocess is not None:  # Standardize: (x - mean) / scale
        for name, value in model.preprocess.tensors().items():
            inits.append(numpy_helper.from_array(value.astype(dtype), f"preprocess.{name}"))
        emit("Sub", [current, "preprocess.mean"], "preprocess")
        emit("Div", [current, "preprocess.scale"], "preprocess")

    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            inits += [numpy_helper.from_array(_host(model, layer.W).astype(dtype, copy=False), f"layer{i}.W"),
                      numpy_helper.from_array(_host(model, layer.b).astype(dtype, copy=False), f"layer{i}.b")]
            emit("Gemm", [current, f"layer{i}.W", f"layer{i}.b"], i)
        elif isinstance(layer, LeakyReLU) and dtype == np.float32:
            emit("LeakyRelu", [current], i, alpha=float(layer.alpha))
        elif isinstance(layer, LeakyReLU):  # max(x, alpha*x) for alpha <= 1, as the backends compute it
            inits.append(numpy_helper.from_array(np.array(layer.alpha, dtype), f"layer{i}.alpha"))
            x = current
            emit("Mul", [x, f"layer{i}.alpha"], i)
            emit("Max" if layer.alpha <= 1 else "Min", [x, current], i)
        elif isinstance(layer, (ReLU, Sigmoid, Tanh)):
            emit({ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}[type(layer)], [current], i)
        elif isinstance(layer, Softmax):
            emit("Softmax", [current], i, axis=1)
        # Linear and Dropout (at inference) are the identity: no node.
    nodes[-1].output[0] = "output"  # every model has a Dense layer, so there is a last node
    graph = helper.make_graph(
        nodes, "nnbackends_model",
        [helper.make_tensor_value_info("input", elem, ["batch", model.n_inputs])],
        [helper.make_tensor_value_info("output", elem, ["batch", model.n_outputs])],
        inits,
        doc_string=" -> ".join(repr(layer) for layer in model.layers),
    )
    opset_id = helper.make_opsetid("", opset)
    from . import __version__

    proto = helper.make_model(graph, opset_imports=[opset_id], producer_name="nnbackends",
                              producer_version=__version__)
    # The oldest IR that knows the opset, so older runtimes load the file; IR 4 at least, where
    # initializers need not also be graph inputs.
    proto.ir_version = max(4, helper.find_min_ir_version_for([opset_id]))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(model, path, opset=None):
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the ``ModelProto``.

    One input ``"input"`` of shape (batch, n_inputs) and one output ``"output"``
    of shape (batch, n_outputs), both in the model's dtype; the batch dimension
    is dynamic. ``opset=None`` writes ``DEFAULT_OPSET``; any of
    ``supported_opsets()`` may be chosen. ``path=None`` only returns the model.
    """
    proto = onnx_model(model, opset)
    if path is not None:
        atomic_write(path, [proto.SerializeToString()])
    return proto


# ---------------------------------------------------------------------- PyTorch state dicts
def _parameter_shapes(model, target="a PyTorch state dict") -> dict[str, tuple[tuple[int, ...], int, Dense]]:
    """``{"{i}.weight": ((out, in), i, layer), "{i}.bias": ((out,), i, layer)}`` in layer order."""
    _check_layers(model, target)
    shapes = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            shapes[f"{i}.weight"] = ((layer.n_neurons, layer.n_inputs), i, layer)
            shapes[f"{i}.bias"] = ((layer.n_neurons,), i, layer)
    return shapes


def to_torch_state_dict(model) -> dict[str, np.ndarray]:
    """Host copies of the weights named as ``torch.nn.Sequential`` names them.

    ``"{i}.weight"`` is Dense layer ``i``'s W transposed to (out, in), as in
    ``torch.nn.Linear``; ``"{i}.bias"`` its b. Build the Sequential with one
    module per layer of ``model.layers`` (see the table in this module's
    docstring, or ``to_torch_module``) so that the indices line up.
    """
    state = {}
    for name in _parameter_shapes(model):
        i, kind = name.split(".")
        layer = model.layers[int(i)]
        value = _host(model, layer.W).T if kind == "weight" else _host(model, layer.b)
        state[name] = np.ascontiguousarray(value).copy()
    return state


def load_torch_state_dict(model, state) -> None:
    """Copy a ``torch.nn.Sequential`` state dict (tensors or arrays) into ``model``'s weights.

    The names and shapes must be exactly those ``to_torch_state_dict`` gives;
    otherwise a ``ValueError`` names the first mismatch and nothing is copied.
    Optimizer state is left as it is (``model.compile`` resets it).
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to tensors or arrays (a state dict), got "
                        f"{type(state).__name__}; for a .safetensors file use load_torch_state_dict_file.")
    shapes = _parameter_shapes(model, "a PyTorch state dict")
    arrays = {str(k): v for k, v in state.items()}
    hint = ("Names are '{i}.weight' and '{i}.bias' with i the layer's index in model.layers: build the "
            "torch.nn.Sequential with one module per layer, activations and Dropout included.")

    def why_not(i, kind):
        if i >= len(model.layers):
            return f" (there is no layer {i}: the model has {len(model.layers)} layers)"
        return f" (layer {i} is {model.layers[i]!r}, which has no {kind})"

    def order(name):  # layer index first, weight before bias; names of another form last
        match = re.fullmatch(r"(\d+)\.(weight|bias)", name)
        return (int(match[1]), match[2] != "weight", "") if match else (len(model.layers), True, name)

    for name in sorted(set(shapes) | set(arrays), key=order):
        if name not in arrays:
            shape, i, _ = shapes[name]
            raise ValueError(f"The state dict has no {name!r} (shape {shape}) for layer {i} "
                             f"{model.layers[i]!r}. {hint}")
        if name not in shapes:
            match = re.fullmatch(r"(\d+)\.(weight|bias)", name)
            where = why_not(int(match[1]), match[2]) if match else ""
            raise ValueError(f"The state dict has {name!r}{where}, which the model has no parameter for. {hint}")
        value = _to_numpy(name, arrays[name])
        shape, i, layer = shapes[name]
        if value.shape != shape:
            raise ValueError(
                f"The state dict's {name!r} has shape {tuple(value.shape)}, but layer {i} {layer!r} needs "
                f"{shape} (torch.nn.Linear({layer.n_inputs}, {layer.n_neurons}) stores weight as (out, in))."
            )
        arrays[name] = value
    weights = []
    for name in shapes:
        value = arrays[name]
        weights.append(value.T if name.endswith(".weight") else value)
    model.set_weights(weights)


def _to_numpy(name, value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, on any device, of any float type (bfloat16 included)
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"The state dict's {name!r} must be a numeric tensor or array, got dtype {array.dtype}.")
    return array


def save_torch_state_dict(model, path) -> None:
    """Write ``to_torch_state_dict(model)`` to a ``.safetensors`` file (atomically).

    ``torch.nn.Sequential(...).load_state_dict(safetensors.torch.load_file(path), strict=True)`` takes it.
    """
    try:
        from safetensors.numpy import save
    except ImportError as exc:
        raise ImportError('State-dict files need the safetensors package: pip install safetensors.') from exc
    data = save(to_torch_state_dict(model), metadata={"format": "pt", "producer": "nnbackends"})
    atomic_write(path, [data])


def load_torch_state_dict_file(model, path) -> None:
    """Load a ``.safetensors`` state dict (e.g. ``safetensors.torch.save_file(module.state_dict(), path)``)."""
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise ImportError('State-dict files need the safetensors package: pip install safetensors.') from exc
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No state-dict file {os.fspath(path)!r}.")
    try:
        state = load_file(path)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a readable safetensors file: {exc}") from None
    load_torch_state_dict(model, state)


def to_torch_module(model):
    """A ``torch.nn.Sequential`` that computes what ``model.predict`` does, with its weights loaded.

    Its parameters have the model's dtype; Dropout modules are in eval mode.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError("to_torch_module needs PyTorch: see https://pytorch.org/get-started/.") from exc
    _check_layers(model, "a PyTorch module")
    nn = torch.nn
    modules = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            modules.append(nn.Linear(layer.n_inputs, layer.n_neurons))
        elif isinstance(layer, LeakyReLU):
            modules.append(nn.LeakyReLU(layer.alpha))
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, Softmax):
            modules.append(nn.Softmax(dim=1))
        else:
            modules.append({ReLU: nn.ReLU, Sigmoid: nn.Sigmoid, Tanh: nn.Tanh, Linear: nn.Identity}[type(layer)]())
    module = nn.Sequential(*modules).to(getattr(torch, model.dtype))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(model).items()}, strict=True)
    return module.eval()
