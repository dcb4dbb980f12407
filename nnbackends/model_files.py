"""Model files in the safetensors format, written atomically and read without executing anything.

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length, a JSON header naming each tensor's dtype, shape and byte range,
then the raw little-endian tensor bytes. The ``safetensors`` package encodes and
decodes the files; this module checks a header before the package reads it, so
that a bad file gets a ``ModelFileError`` saying what is wrong with it. Our header's ``__metadata__`` holds
the architecture and compile settings as JSON strings; what they mean is the
model's business (``Model.save``, ``load_model``), this module only checks
that a file says it is a model file of a version it reads.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile

import numpy as np
import safetensors
from safetensors.numpy import load as decode_tensors, save as encode_tensors

from .errors import ModelFileError

FORMAT = "nnbackends"
FORMAT_VERSION = "1"
MAX_HEADER = 100 * 1024 * 1024
_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2"),
           "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "U8": np.dtype("u1")}
_CODES = {v: k for k, v in _DTYPES.items()}


# ---------------------------------------------------------------------- raw format
def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` to ``path`` with the safetensors package, atomically: a failure leaves an
    existing file intact."""
    arrays = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype.newbyteorder("<") not in _CODES:
            raise TypeError(f"Cannot save tensor {name!r} of dtype {array.dtype}.")
        arrays[name] = array.astype(array.dtype.newbyteorder("<"), copy=False)
    atomic_write(path, [encode_tensors(arrays, metadata=metadata)])


def atomic_write(path, chunks) -> None:
    """Write ``chunks`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = os.fspath(path)
    folder = check_save_folder(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_save_folder(path) -> str:
    """The folder ``path`` would be saved in, checked as ``check_output_path`` does.

    Callers that work long before saving (``nnbackends train --save``) check up front.
    """
    return check_output_path(path, "Cannot save to")


def check_output_path(path, what, example="model.safetensors") -> str:
    """The folder a file written to ``path`` goes in, once it is sure a file can be written there.

    Otherwise an ``OSError`` that starts with ``what`` and ``path`` and says the fix: ``IsADirectoryError``
    when ``path`` names a folder (an existing one, or it ends in a separator; ``example`` is the file
    name suggested in it), ``FileNotFoundError`` when its folder is missing, ``NotADirectoryError``
    when that "folder" is a file, ``PermissionError`` when it is not writable.
    """
    path = os.fspath(path)
    where = f"{what} {path!r}"
    if os.path.isdir(path) or path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise IsADirectoryError(f"{where}: that is a folder, not a file; name a file in it, e.g. "
                                f"{os.path.join(path, example)!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{where}: {folder!r} is a file, not a folder; choose a path in a folder.")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{where}: the folder {folder!r} does not exist; create it first "
                                "or choose a path in an existing folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{where}: the folder {folder!r} is not writable; choose a folder you can write to.")
    return folder


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file; raise ``ModelFileError`` naming what is wrong with it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    where = f"{path!r} is not a valid safetensors file"
    if len(data) < 8:
        raise ModelFileError(f"{where}: it has {len(data)} bytes, fewer than the 8-byte header length.")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        raise ModelFileError(f"{where}: its first 8 bytes do not hold a plausible header length ({n} bytes); "
                             "it is some other kind of file.")
    if 8 + n > len(data):
        raise ModelFileError(f"{where}: its header claims {n} bytes but the file has {len(data)} (truncated?).")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{where}: its header is not JSON ({exc}).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{where}: its header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    buffer = memoryview(data)[8 + n:]
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: tensor {name!r} has a malformed entry ({exc!r}).") from None
        if not 0 <= begin <= end <= len(buffer) or end - begin != dtype.itemsize * int(np.prod(shape)):
            raise ModelFileError(
                f"{where}: tensor {name!r} needs bytes {begin}..{end} of a {len(buffer)}-byte data section "
                f"for shape {shape} (truncated or corrupt)."
            )
    try:
        tensors = decode_tensors(data)
    except safetensors.SafetensorError as exc:  # what the checks above do not name (overlapping tensors, ...)
        raise ModelFileError(f"{where}: {exc}.") from None
    return tensors, metadata


# ---------------------------------------------------------------------- model files
#: Metadata entries every model file holds besides the format marks (JSON strings but ``dtype``).
MODEL_METADATA = ("dtype", "layers", "loss", "optimizer", "metric")


def write_model_file(path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a model's ``tensors`` and ``metadata`` (the ``MODEL_METADATA`` entries), atomically."""
    write_safetensors(path, tensors, {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata})


def read_model_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a file ``write_model_file`` wrote; ``ModelFileError`` naming what is wrong."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{os.fspath(path)!r} is a safetensors file but not an nnbackends model "
            f"(its metadata has no format={FORMAT!r}); save models with Model.save()."
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{os.fspath(path)!r} has format version {meta.get('format_version')!r}; "
                             f"this nnbackends reads version {FORMAT_VERSION}.")
    missing = [key for key in MODEL_METADATA if key not in meta]
    if missing:
        raise ModelFileError(f"{os.fspath(path)!r} lacks the model metadata {missing}; save models with Model.save().")
    return tensors, meta
