"""Model files: load_model rejects every malformed file with a ModelFileError (a ValueError),
never unpickles anything, and saving is atomic even when the writer is killed midway."""
from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nnbackends as nb
from nnbackends import ModelFileError
from nnbackends.model_files import check_save_folder, read_safetensors, write_safetensors
from nnbackends.layers import Dense, Dropout, ReLU, Softmax

ROOT = pathlib.Path(__file__).resolve().parent.parent
X, Y = nb.datasets.spiral_data(20, 3)


def trained(seed=0, epochs=3):
    model = nb.Model(backend="numpy", seed=seed)
    model.add(Dense(2, 8, weight_regularizer_l2=1e-4)).add(ReLU()).add(Dropout(0.1)).add(Dense(8, 3)).add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer=nb.optimizers.Adam(0.01, decay=1e-3))
    model.fit(X, Y, epochs=epochs, verbose=0)
    return model


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    model = trained()
    model.save(path)
    return model, path


def assert_same_weights(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_round_trip_on_every_backend(saved, backend):
    model, path = saved
    loaded = nb.load_model(path, backend=backend)
    assert loaded.backend is backend
    assert_same_weights(loaded.get_weights(), model.get_weights())
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-5, atol=1e-6)


def rewrite(path, *, tensors=None, metadata=None):
    """Rewrite a saved model with some tensors or metadata entries changed (None values delete)."""
    t, m = read_safetensors(path)
    for name, value in (tensors or {}).items():
        t.pop(name) if value is None else t.__setitem__(name, value)
    for key, value in (metadata or {}).items():
        m.pop(key) if value is None else m.__setitem__(key, value)
    write_safetensors(path, t, m)


def layers_meta(path, edit):
    layers = json.loads(read_safetensors(path)[1]["layers"])
    edit(layers)
    return {"layers": json.dumps(layers)}


def npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


# id -> (corrupt the saved file in place, fragments of the error message)
BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), ["not a valid safetensors file", "0 bytes"]),
    "truncated in header": (lambda p: truncate(p, lambda n: 20), ["header claims", "the file has 20", "truncated"]),
    "truncated in data": (lambda p: truncate(p, lambda n: n - 5), ["tensor", "truncated or corrupt"]),
    "not safetensors (text)": (lambda p: p.write_text("hello, I am a CSV file\n1,2,3\n"),
                               ["not a valid safetensors file", "some other kind of file"]),
    "not safetensors (npy)": (lambda p: p.write_bytes(npy_bytes()), ["not a valid safetensors file", "other kind"]),
    "header not JSON": (lambda p: p.write_bytes(struct.pack("<Q", 8) + b"not json"), ["header is not JSON"]),
    "header not an object": (lambda p: p.write_bytes(struct.pack("<Q", 8) + b"[1,2]   "), ["not a JSON object"]),
    "bad tensor entry": (lambda p: p.write_bytes(struct.pack("<Q", 16) + b'{"w":{"a":1}}   '),
                         ["tensor 'w' has a malformed entry"]),
    "metadata missing": (lambda p: write_safetensors(p, read_safetensors(p)[0], {}),
                         ["not an nnbackends model", "format='nnbackends'"]),
    "metadata key missing": (lambda p: rewrite(p, metadata={"layers": None}), ["lacks the model metadata ['layers']"]),
    "format version": (lambda p: rewrite(p, metadata={"format_version": "99"}), ["format version '99'"]),
    "layers not JSON": (lambda p: rewrite(p, metadata={"layers": "[{"}), ["invalid model metadata"]),
    "unknown layer": (lambda p: rewrite(p, metadata=layers_meta(p, lambda l: l[1].update({"class": "Conv2D"}))),
                      ["invalid model metadata", "Unknown layer class 'Conv2D'", "Dense"]),
    "bad layer config": (lambda p: rewrite(p, metadata=layers_meta(p, lambda l: l[0]["config"].update(n_neurons=-8))),
                         ["invalid model metadata", "n_neurons must be a positive integer, got -8"]),
    "unknown optimizer": (lambda p: rewrite(p, metadata={"optimizer": json.dumps({"name": "lbfgs"})}),
                          ["Unknown optimizer 'lbfgs'"]),
    "unknown dtype": (lambda p: rewrite(p, metadata={"dtype": "float16"}), ["Unknown dtype 'float16'"]),
    "shape mismatch": (lambda p: rewrite(p, tensors={"layers.0.W": np.zeros((2, 9), np.float32)}),
                       ["tensor 'layers.0.W' has shape (2, 9)", "needs (2, 8)"]),
    "missing tensor": (lambda p: rewrite(p, tensors={"layers.3.b": None}), ["missing tensors ['layers.3.b']"]),
    "extra tensor": (lambda p: rewrite(p, tensors={"layers.9.W": np.zeros(1, np.float32)}),
                     ["unexpected tensors ['layers.9.W']"]),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_load_model_rejects_bad_files(saved, case):
    _, path = saved
    corrupt, fragments = BAD_FILES[case]
    corrupt(path)
    with pytest.raises(ModelFileError) as info:
        nb.load_model(path)
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} missing from {info.value}"


class Exploit:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_file_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weights": Exploit(str(marker))}))
    pickle.loads(path.read_bytes())  # the payload works when unpickled...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelFileError):
        nb.load_model(path)
    assert not marker.exists()  # ...and load_model never unpickles it


def test_no_code_path_uses_pickle():
    """No module imports pickle, and every NumPy load forbids it."""
    for source in (ROOT / "nnbackends").rglob("*.py"):
        text = source.read_text()
        assert "import pickle" not in text and "from pickle" not in text, source
        assert "allow_pickle=True" not in text, source
        for call in ("np.load(", "numpy.load("):
            for chunk in text.split(call)[1:]:
                assert "allow_pickle=False" in chunk.split(")")[0], f"{source}: {call} without allow_pickle=False"


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()
    other = trained(seed=1)

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("nnbackends.model_files.os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        other.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_save_into_a_missing_folder_names_it(tmp_path):
    path = tmp_path / "missing" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="the folder .*missing' does not exist"):
        check_save_folder(path)
    with pytest.raises(FileNotFoundError, match="the folder .*missing' does not exist"):
        trained().save(path)
    assert check_save_folder(tmp_path / "model.safetensors") == str(tmp_path)


# The writer saves version 1, then starts saving version 2 and SIGKILLs itself
# after writing part of the data: at the fsync (all bytes written, not yet
# renamed) or inside a write (half a chunk on disk).
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import nnbackends as nb
    from nnbackends.layers import Dense, ReLU, Softmax

    def model(seed):
        m = nb.Model(backend="numpy", seed=seed)
        m.add(Dense(2, 300)).add(ReLU()).add(Dense(300, 3)).add(Softmax())
        return m.compile()

    path, where = sys.argv[1], sys.argv[2]
    model(0).save(path)
    die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    if where == "fsync":
        os.fsync = die
    else:
        real_fdopen = os.fdopen
        class HalfWriter:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *exc): return self.f.__exit__(*exc)
            def write(self, chunk):
                if len(chunk) > 1000:
                    self.f.write(chunk[:len(chunk) // 2]); self.f.flush(); die()
                return self.f.write(chunk)
        os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
    model(1).save(path)
    print("not killed")
""")


@pytest.mark.parametrize("where", ["fsync", "write"])
def test_killed_writer_leaves_the_previous_file_intact(tmp_path, where):
    path = tmp_path / "model.safetensors"
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path), where], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    leftovers = [name for name in os.listdir(tmp_path) if name != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.safetensors.")  # the killed write's temporary
    loaded = nb.load_model(path, backend="numpy")  # version 1, complete
    first = nb.Model(backend="numpy", seed=0)
    first.add(Dense(2, 300)).add(ReLU()).add(Dense(300, 3)).add(Softmax())
    assert_same_weights(loaded.get_weights(), first.get_weights())


def test_files_are_the_safetensors_packages_format(tmp_path):
    """A model file loads with safetensors.numpy, and a file safetensors writes itself loads here."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    X, y = nb.datasets.spiral_data(20, 3)
    model = nb.Model(backend="numpy", seed=0)
    model.add(nb.layers.Dense(2, 4)).add(nb.layers.Softmax())
    model.compile(optimizer="sgd").fit(X, y, epochs=2, verbose=0)
    model.save(tmp_path / "ours.safetensors")
    theirs = safetensors_numpy.load_file(tmp_path / "ours.safetensors")
    assert [theirs["layers.0.W"].tobytes(), theirs["layers.0.b"].tobytes()] == [w.tobytes() for w in model.get_weights()]
    _, metadata = read_safetensors(tmp_path / "ours.safetensors")
    safetensors_numpy.save_file(theirs, tmp_path / "theirs.safetensors", metadata=metadata)
    again = nb.load_model(tmp_path / "theirs.safetensors")
    assert [w.tobytes() for w in again.get_weights()] == [w.tobytes() for w in model.get_weights()]


def test_a_header_the_package_refuses_is_a_model_file_error(tmp_path):
    """Two tensors on the same bytes pass the per-tensor checks; the safetensors package refuses them."""
    head = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(8))
    with pytest.raises(ModelFileError, match="is not a valid safetensors file"):
        read_safetensors(path)
