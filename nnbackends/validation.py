"""Argument and data checks shared by every public entry point.

Each check raises ``ValueError`` (a bad value) or ``TypeError`` (a bad type)
with a message naming the argument, what was received and what is expected.
Data checks run on the host before anything moves to a device; data that is
already on a GPU (CuPy, Numba or any array with ``__cuda_array_interface__``)
is checked on its host copy (``host_array``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}).")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}.")
    return int(value)


def check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


def check_seed(name, value):
    """None or a non-negative integer (a seed for NumPy's generators)."""
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be None or a non-negative integer, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"{name} must be None or a non-negative integer, got {value}.")
    return int(value)


def check_nonnegative_int(name, value) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer >= 0, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}.")
    return int(value)


def check_float(name, value, *, low=None, high=None, low_open=False, high_open=False, what="a finite number") -> float:
    """A finite real number within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).")
    value = float(value)
    bad = not math.isfinite(value)
    bad |= low is not None and (value <= low if low_open else value < low)
    bad |= high is not None and (value >= high if high_open else value > high)
    if bad:
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return value


def check_nonnegative_float(name, value) -> float:
    return check_float(name, value, low=0.0, what="a finite number >= 0")


def check_learning_rate(name, value) -> float:
    return check_float(name, value, low=0.0, low_open=True, what="a finite number > 0")


def check_rate(name, value) -> float:
    """A probability in [0, 1) (dropout rate)."""
    return check_float(name, value, low=0.0, high=1.0, high_open=True, what="a number in [0, 1)")


def check_fraction(name, value) -> float:
    """A fraction in [0, 1) (decay rates of optimizers)."""
    return check_float(name, value, low=0.0, high=1.0, high_open=True, what="a number in [0, 1)")


def check_choice(name, value, choices):
    """``value`` (case-insensitive for strings) must be one of ``choices``."""
    key = value.lower() if isinstance(value, str) else value
    lowered = {c.lower() if isinstance(c, str) else c: c for c in choices}
    if not isinstance(key, str) or key not in lowered:
        valid = ", ".join(map(str, choices))
        raise ValueError(f"Unknown {name} {value!r}; valid choices are: {valid}.")
    return lowered[key]


def check_features(name, X, n_features=None, dtype=None) -> np.ndarray:
    """A non-empty, finite, numeric 2-D host array (a 1-D one is rejected with a hint).

    With ``dtype``, the values must also stay finite once cast to it.
    """
    arr = _numeric_array(name, X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}"
                         f"{_reshape_hint(name, arr, n_features)}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); at least one sample is needed.")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"{name} has {arr.shape[1]} features per sample but the first layer expects {n_features}."
        )
    _check_finite(name, arr, dtype)
    return arr


def _reshape_hint(name, arr, n_features) -> str:
    """How to make a 1-D array 2-D: one sample, or one feature per sample (the likelier first)."""
    if arr.ndim != 1:
        return ""
    one_sample = f"{name}.reshape(1, -1) if it is one sample"
    one_feature = f"{name}.reshape(-1, 1) if it is one feature per sample"
    if n_features == 1:
        return f"; use {one_feature}"
    if n_features is not None and arr.shape[0] == n_features:
        return f"; use {one_sample} ({one_feature})"
    return f"; use {one_sample}, or {one_feature}"


def column_names(X) -> list[str] | None:
    """The column names of a data frame (anything with ``columns`` that is not an array), else None."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray):
        return None
    return [str(c) for c in columns]


def check_feature_names(name, expected, got):
    """A ValueError saying how the columns ``got`` differ from the feature names ``expected``."""
    if list(got) == list(expected):
        return
    missing = [c for c in expected if c not in got]
    unexpected = [c for c in got if c not in expected]
    if missing or unexpected:
        parts = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
        detail = ", ".join(parts)
    else:
        detail = f"the same names in another order: {list(got)}, the model's order is {list(expected)}"
    raise ValueError(f"{name}'s columns do not match the features the model was trained on: {detail}.")


def check_targets(name, y, n_samples, x_name="X", dtype=None) -> np.ndarray:
    """A finite numeric host array with one row per sample of ``x_name`` (within ``dtype``'s range if given)."""
    arr = _numeric_array(name, y)
    if arr.ndim == 0 or arr.ndim > 2:
        raise ValueError(f"{name} must be 1-D labels or 2-D targets, got shape {arr.shape}.")
    if arr.shape[0] != n_samples:
        raise ValueError(
            f"{x_name} and {name} have different lengths: {n_samples} samples in {x_name}, {arr.shape[0]} in {name}."
        )
    _check_finite(name, arr, dtype)
    return arr


def check_class_labels(name, y, n_classes) -> np.ndarray:
    """Integer labels in [0, n_classes) (1-D) or one-hot rows of width n_classes (2-D)."""
    if y.ndim == 1:
        if not np.all(np.mod(y, 1) == 0):
            bad = y[np.mod(y, 1) != 0][0]
            raise ValueError(f"{name} must hold integer class labels, got the value {bad.item()!r}.")
        low, high = y.min(), y.max()
        if low < 0 or high >= n_classes:
            values = np.unique(y)
            named = (f" or, if these {values.size} values name the classes, set model.classes_ = "
                     f"{values.astype(np.int64).tolist()} before fit" if values.size == n_classes else "")
            raise ValueError(
                f"{name} holds labels from {low:g} to {high:g} but the output layer has {n_classes} "
                f"classes (labels must be in 0..{n_classes - 1}{named})."
            )
        return y.astype(np.int64)
    if y.shape[1] != n_classes:
        raise ValueError(
            f"{name} has one-hot rows of width {y.shape[1]} but the output layer has {n_classes} classes."
        )
    if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
        row = int(np.flatnonzero(~(((y == 0) | (y == 1)).all(axis=1) & (y.sum(axis=1) == 1)))[0])
        raise ValueError(f"{name} row {row} is not one-hot: {y[row].tolist()!r}.")
    return y


def check_output_targets(name, y, n_outputs) -> np.ndarray:
    """Targets for a loss with one column per output: (n,) is taken as (n, 1)."""
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.shape[1] != n_outputs:
        raise ValueError(f"{name} has {y.shape[1]} columns per sample but the model has {n_outputs} outputs.")
    return y


def host_array(name, value) -> np.ndarray:
    """``value`` as a host NumPy array; a GPU array is copied to the host.

    NumPy cannot convert a CuPy array itself (``np.asarray`` raises), so an object
    with ``__cuda_array_interface__`` is copied through its own method: ``get``
    (CuPy) or ``copy_to_host`` (Numba).
    """
    if hasattr(value, "__cuda_array_interface__"):
        for method in ("get", "copy_to_host"):
            if callable(getattr(value, method, None)):
                return np.asarray(getattr(value, method)())
        raise TypeError(f"{name} is a GPU array of type {type(value).__name__} that nnbackends cannot copy to "
                        "the host; pass a NumPy or CuPy array.")
    return np.asarray(value)


def _numeric_array(name, value) -> np.ndarray:
    if hasattr(value, "__cuda_array_interface__"):
        return _numeric_array(name, host_array(name, value))
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a rectangular numeric array, got a {type(value).__name__} "
                        f"that NumPy cannot convert ({exc}).") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        what = f"dtype {arr.dtype}" if isinstance(value, np.ndarray) else f"{type(value).__name__} of dtype {arr.dtype}"
        raise TypeError(f"{name} must be a numeric (integer or float) array, got {what}.")
    return arr


def _check_finite(name, arr, dtype=None):
    """No NaN or Inf in ``arr``, and none once cast to ``dtype`` (when given).

    One pass and no full-size temporary in the usual case: a sum is finite only
    when every term is, so a finite sum clears the array; a non-finite one (a
    NaN, an Inf, or finite values whose sum overflows) is looked at block by block.
    The range is checked only where a cast can overflow (float64 data, float32 model).
    """
    if np.issubdtype(arr.dtype, np.floating) and arr.size and not _finite_sum(arr):
        bad = _first_nonfinite(arr)
        if bad is not None:
            where = ", ".join(map(str, bad))
            raise ValueError(f"{name} contains NaN or Inf (first at index [{where}]); clean or impute the data first.")
    if dtype is None or arr.size == 0 or not _cast_can_overflow(arr.dtype, np.dtype(dtype)):
        return
    limit = float(np.finfo(dtype).max)
    largest = max(float(arr.max()), -float(arr.min()))
    if largest > limit:
        raise ValueError(
            f"{name} holds values up to {largest:g}, beyond the largest {np.dtype(dtype).name} ({limit:g}); "
            f"scale the data or use dtype='float64'."
        )


def _finite_sum(arr) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(arr.sum()))


def _cast_can_overflow(source, target) -> bool:
    """Whether a value of dtype ``source`` can exceed the float dtype ``target``'s range."""
    largest = np.finfo(source).max if np.issubdtype(source, np.floating) else np.iinfo(source).max
    return float(largest) > float(np.finfo(target).max)


def _first_nonfinite(arr, block_elements=1 << 20):
    """The index of the first NaN or Inf of ``arr`` (None if there is none), a block of rows at a time."""
    rows = max(1, block_elements // max(1, arr[0].size if arr.ndim > 1 else 1))
    for start in range(0, arr.shape[0], rows):
        bad = np.argwhere(~np.isfinite(arr[start:start + rows]))
        if bad.size:
            first = bad[0].copy()
            first[0] += start
            return tuple(int(i) for i in first)
    return None


def check_sample_weight(name, weights, n_samples) -> np.ndarray:
    """One finite, non-negative weight per sample, not all zero, as float64."""
    arr = _numeric_array(name, weights)
    if arr.shape != (n_samples,):
        raise ValueError(f"{name} must hold one weight per sample: expected shape ({n_samples},), got {arr.shape}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or Inf at index {int(np.argmin(np.isfinite(arr)))}; weights must be finite.")
    if (arr < 0).any():
        raise ValueError(f"{name} holds a negative weight at index {int(np.argmax(arr < 0))}; weights must be >= 0.")
    if not arr.any():
        raise ValueError(f"{name} is all zero: nothing would be trained; give some samples a positive weight.")
    return arr


def class_weights_as_sample_weights(class_weight, labels, n_classes) -> np.ndarray:
    """Per-sample weights from a dict ``{class: weight}`` (missing classes weigh 1) and class ``labels``."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict from class index to weight, got {type(class_weight).__name__}.")
    table = np.ones(n_classes)
    for cls, weight in class_weight.items():
        if not _is_int(cls) or not 0 <= cls < n_classes:
            raise ValueError(f"class_weight names class {cls!r}, but the classes are 0..{n_classes - 1}.")
        table[int(cls)] = check_nonnegative_float(f"class_weight[{cls}]", weight)
    index = labels if labels.ndim == 1 else labels.argmax(axis=1)
    return table[index.astype(np.int64)]


def sample_weights(sample_weight, class_weight, labels, n_classes) -> np.ndarray | None:
    """Host float64 weights per sample from ``sample_weight`` and/or ``class_weight`` (their product when
    both are given) for class ``labels``, or None when neither is."""
    weights = None
    if sample_weight is not None:
        weights = check_sample_weight("sample_weight", sample_weight, labels.shape[0])
    if class_weight is not None:
        per_class = class_weights_as_sample_weights(class_weight, labels, n_classes)
        weights = per_class if weights is None else weights * per_class
        weights = check_sample_weight("class_weight's sample weights", weights, labels.shape[0])
    return weights


def check_dtype(name, dtype, choices) -> str:
    """The name of ``dtype`` (a string, a NumPy dtype or a scalar type such as ``np.float32``) among ``choices``."""
    if not isinstance(dtype, str):
        try:
            dtype = str(np.dtype(dtype))
        except TypeError:
            pass  # check_choice names it
    return check_choice(name, dtype, choices)


def split_for_validation(validation_split, *arrays):
    """``(training parts, validation parts)`` of host ``arrays``: the last ``validation_split`` of the rows."""
    fraction = check_float("validation_split", validation_split, low=0.0, high=1.0, low_open=True, high_open=True,
                           what="a fraction in (0, 1)")
    n = arrays[0].shape[0]
    cut = int(n * (1.0 - fraction))
    if cut == 0 or cut == n:
        raise ValueError(f"validation_split={fraction} of {n} samples leaves "
                         f"{'no training' if cut == 0 else 'no validation'} samples; choose a fraction "
                         f"that leaves at least one row on each side.")
    return tuple(a[:cut] for a in arrays), tuple(a[cut:] for a in arrays)
