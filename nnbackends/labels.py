"""Class labels as users have them, and the class indices the kernels take.

A classifier's outputs are numbered 0..k-1. Labels that are not such indices
(strings, booleans, a pandas Series of them) are mapped through a list of
class names, ``Model.classes_``: learned by the first ``fit`` (the sorted
distinct labels), saved with the model, and used by ``evaluate`` and
``predict_classes``. Numeric labels are class indices while a model has no
class names; once it has them, every label is looked up among them.
"""
from __future__ import annotations

import numpy as np


def as_label_column(y, n_classes) -> np.ndarray:
    """``y`` as a host array, an (n, 1) column of labels flattened to (n,) (one-hot rows stay 2-D)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1 and n_classes != 1:
        y = y[:, 0]
    return y


def are_names(y) -> bool:
    """Whether labels are names (strings, booleans, objects) rather than numeric class indices."""
    return y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating))


def class_indices(name, y, classes, n_classes, learn) -> tuple[np.ndarray, list | None]:
    """``(class indices or one-hot rows, classes)`` for host labels ``y`` of a model with ``classes``
    (None: none yet), learning the classes from names when ``learn`` (a fit) allows it."""
    y = as_label_column(y, n_classes)
    if y.ndim != 1:
        return y, classes  # one-hot rows
    if classes is None and are_names(y):
        if not learn:
            raise ValueError(f"{name} holds class names, but this model has none: fit it on named labels "
                             "first, or name its outputs with model.classes_ = [...].")
        classes = learn_classes(name, y, n_classes)
    if classes is None or classes == list(range(n_classes)) and not are_names(y):
        return y, classes  # class indices already
    return encode(name, y, classes), classes


def keyed_by_index(class_weight, classes) -> dict:
    """``class_weight`` with each key that is one of ``classes`` (a label) replaced by its class index."""
    if not isinstance(class_weight, dict):
        return class_weight  # the weights' own check names the type
    index = {c: i for i, c in enumerate(classes)}
    unknown = [k for k in class_weight if k not in index and not isinstance(k, (int, np.integer))]
    if unknown:
        raise ValueError(f"class_weight names the class {unknown[0]!r}, which is not one of the model's classes "
                         f"({_shown(classes)}).")
    return {index.get(k, k): w for k, w in class_weight.items()}


def learn_classes(name, y, n_classes) -> list:
    """The sorted distinct labels of ``y`` as plain Python values, one per output of the model."""
    try:
        classes = np.unique(y).tolist()
    except TypeError:  # mixed types that do not sort, such as 1 and "a"
        kinds = sorted({type(v).__name__ for v in y.tolist()})
        raise TypeError(f"{name} mixes label types ({', '.join(kinds)}); use one type, such as all strings.") from None
    if len(classes) != n_classes:
        shown = _shown(classes)
        raise ValueError(
            f"{name} holds {len(classes)} classes ({shown}) but the output layer has {n_classes} outputs; "
            f"give the output layer {len(classes)} units, or name every output first with "
            f"model.classes_ = [...] ({n_classes} names)."
        )
    return classes


def encode(name, y, classes) -> np.ndarray:
    """The class index of each label of ``y`` among ``classes``; an unknown label is a ValueError."""
    values = y.tolist()
    try:
        index = {c: i for i, c in enumerate(classes)}
        return np.fromiter((index[v] for v in values), np.int64, len(values))
    except (KeyError, TypeError):
        bad = next(v for v in values if _unknown(v, classes))
        raise ValueError(f"{name} holds the label {bad!r}, which is not one of the model's classes "
                         f"({_shown(classes)}).") from None


def decode(indices, classes) -> np.ndarray:
    """The class names of class ``indices`` (an array of the names' type)."""
    return np.asarray(classes)[np.asarray(indices)]


def check_classes(classes, n_classes) -> list | None:
    """``classes`` (None, or one distinct JSON-friendly name per output) as a list."""
    if classes is None:
        return None
    names = np.asarray(classes).tolist() if isinstance(classes, np.ndarray) else list(classes)
    if len(names) != n_classes:
        raise ValueError(f"classes_ needs one name per output: {n_classes} names, got {len(names)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"classes_ names a class twice: {_shown(names)}.")
    if not all(isinstance(c, (str, bool, int)) for c in names):
        raise TypeError(f"classes_ holds strings, integers or booleans, got {_shown(names)}.")
    return names


def _unknown(value, classes) -> bool:
    try:
        return value not in classes
    except TypeError:
        return True


def _shown(classes, limit=10) -> str:
    text = ", ".join(map(repr, classes[:limit]))
    return text + (f", ... {len(classes) - limit} more" if len(classes) > limit else "")
