"""What a model file holds of a model, and a model rebuilt from it.

``model_files`` reads and writes the file format (safetensors, atomic writes,
header checks); this module maps a model to the file's tensors and JSON
metadata and back: the layers and their weights, loss, optimizer, metric, the
names kept with the model, a preprocessing step, and, for an exact resume, the
optimizer's state arrays and step count, the generator state and the epochs
trained. It works on a model it is given and never imports ``Model``.
"""
from __future__ import annotations

import contextlib
import json

from .errors import ModelFileError
from .layers import from_config
from .metrics import metric_from_config
from .optimizers import optimizer_from_config
from .preprocessing import PREPROCESSORS
from .validation import check_choice

#: Model attributes a model file keeps as JSON metadata, by key.
NAMES_IN_FILES = {"classes": "classes_", "feature_names": "feature_names_", "label_name": "label_name_"}


def contents(model, include_optimizer=True) -> tuple[dict, dict]:
    """``(tensors, metadata)``: host arrays by name and JSON strings by key, as ``write_model_file`` takes them."""
    tensors = {name: model.backend.to_numpy(array) for name, array in _weights(model).items()}
    metadata = {
        "dtype": model.dtype,
        "layers": json.dumps([{"class": type(l).__name__, "config": l.config()} for l in model.layers]),
        "loss": json.dumps(model.loss.config()),
        "optimizer": json.dumps(model.optimizer.config()),
        "metric": json.dumps(model.metric.config() if model.metric else None),
        **{key: json.dumps(getattr(model, attr)) for key, attr in NAMES_IN_FILES.items()
           if getattr(model, attr) is not None},
    }
    if model.preprocess is not None:
        metadata["preprocess"] = json.dumps(model.preprocess.config())
        if model.preprocess.fitted:
            tensors.update({f"preprocess.{k}": v for k, v in model.preprocess.tensors().items()})
    if include_optimizer:
        tensors.update({name: model.backend.to_numpy(array) for name, array in optimizer_state(model).items()})
        metadata["training"] = json.dumps({**model.optimizer.training_state(), "epochs": model.epochs_trained,
                                           "generator": model.rng.bit_generator.state})
    return tensors, metadata


def restore(model, tensors, metadata, where):
    """Build the empty ``model`` (of the file's dtype) into the one the file holds; ``where`` names the
    file in a ``ModelFileError``. ``tensors`` loses the preprocessing step's arrays."""
    with reading(where):
        for spec in json.loads(metadata["layers"]):
            model.add(from_config(spec["class"], spec["config"]))
        metric = json.loads(metadata["metric"])
        model.compile(loss=json.loads(metadata["loss"]),
                      optimizer=optimizer_from_config(json.loads(metadata["optimizer"])),
                      metrics=[metric_from_config(metric)] if metric else [])
        for key, attr in NAMES_IN_FILES.items():
            if key in metadata:
                setattr(model, attr, json.loads(metadata[key]))
        if "preprocess" in metadata:
            model.preprocess = _preprocessing_step(json.loads(metadata["preprocess"]), tensors)
        training = json.loads(metadata["training"]) if "training" in metadata else None
        if training is not None:
            model.optimizer.restore_training_state(training)
            model.epochs_trained = int(training["epochs"])
            model.rng.bit_generator.state = training["generator"]
    expected = {**_weights(model), **(optimizer_state(model) if training is not None else {})}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{where} does not match its architecture: "
                             f"missing tensors {missing}, unexpected tensors {extra}.")
    for name, array in expected.items():
        if tensors[name].shape != array.shape:
            raise ModelFileError(f"{where}: tensor {name!r} has shape {tensors[name].shape} "
                                 f"but the architecture needs {array.shape}.")
        array[...] = model.backend.asarray(tensors[name], model.dtype)
    return model


@contextlib.contextmanager
def reading(where):
    """A block that reads a file's metadata: a missing key or a bad value in it is a ``ModelFileError``
    naming the file ``where``."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelFileError(f"{where} has invalid model metadata: {detail}") from None


def optimizer_state(model) -> dict:
    """Every optimizer state array of ``model`` (backend arrays) by its name in a file."""
    return {f"optimizer.{i}.{p.name}.{state}": p.state[state]
            for i, layer in enumerate(model.layers) for p in layer.params() for state in p.state}


def _weights(model) -> dict:
    return {f"layers.{i}.{p.name}": p.value for i, layer in enumerate(model.layers) for p in layer.params()}


def _preprocessing_step(config, tensors):
    """The preprocessing step a file names, restored from (and taken out of) its ``preprocess.*`` tensors."""
    step = PREPROCESSORS[check_choice("preprocessing step", config["class"], tuple(PREPROCESSORS))]()
    values = {name.split(".", 1)[1]: tensors.pop(name) for name in list(tensors) if name.startswith("preprocess.")}
    return step.restore(values) if values else step
