"""The command line through its real entry point (``python -m nnbackends``)."""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import struct

import numpy as np
import pytest
from cli_helpers import png_size, run_cli
from conftest import PACKAGE_BACKENDS

from nnbackends import load_model, plots
from nnbackends.backends import KERNELS
from nnbackends.cli import make_parser
from nnbackends.datasets import spiral_data
from nnbackends.progress import make_progress


def one_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print one line, got {proc.stdout!r}"
    return json.loads(lines[0])


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small spiral model trained and plotted through ``train``: (folder, json result)."""
    folder = tmp_path_factory.mktemp("train")
    proc = run_cli("train", "--dataset", "spiral", "--hidden", "16", "--epochs", "200", "--backend", "numpy",
                   "--save", "model.safetensors", "--plot", "run.png", "--json", cwd=folder)
    return folder, one_json(proc)


def test_train_reports_saves_and_plots(trained):
    folder, result = trained
    assert result["backend"] == "numpy" and result["epochs"] == 200 and result["task"] == "classification"
    assert 0.0 <= result["accuracy"] <= 1.0 and result["loss"] > 0
    model = load_model(folder / "model.safetensors", backend="numpy")
    X, y = spiral_data(100, 3)
    assert model.evaluate(X, y)["accuracy"] == pytest.approx(
        float(np.mean(model.predict(X).argmax(axis=1) == y)))
    # Three panels (decision regions, loss, accuracy) of the documented size.
    assert png_size(folder / "run.png") == (round(3 * plots.PANEL[0] * plots.DPI), round(plots.PANEL[1] * plots.DPI))


def test_eval_on_any_backend_matches_the_python_api(trained, package_backend):
    backend = package_backend
    folder, _ = trained
    result = one_json(run_cli("eval", "model.safetensors", "--dataset", "spiral", "--seed", "1",
                              "--backend", backend.name, "--json", cwd=folder))
    expected = load_model(folder / "model.safetensors", backend="numpy").evaluate(*spiral_data(100, 3, seed=1))
    assert result["backend"] == backend.name and result["samples"] == 300
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1 / 300)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-4)


def test_predict_csv_round_trip(trained):
    folder, _ = trained
    X, y = spiral_data(20, 3, seed=5)
    with open(folder / "points.csv", "w", newline="") as f:  # a header, and a label column to ignore
        writer = csv.writer(f)
        writer.writerow(["x", "label", "y"])
        writer.writerows([[a, int(c), b] for (a, b), c in zip(X.tolist(), y)])
    proc = run_cli("predict", "model.safetensors", "--input", "points.csv", "--output", "out.csv",
                   "--label-column", "label", "--backend", "numpy", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    with open(folder / "out.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "p0", "p1", "p2"]
    classes = np.array([int(r[0]) for r in rows[1:]])
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    expected = load_model(folder / "model.safetensors", backend="numpy").predict(X)
    assert len(classes) == len(X)
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))


def write_idx(path, array, code):
    """An IDX file written byte by byte (independently of the package's reader)."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def test_trains_and_evaluates_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200).astype(np.uint8)
    images = rng.integers(0, 60, size=(200, 6, 6)).astype(np.uint8)
    images[labels == 1, :3] += 180  # class 1: a bright top half
    images[labels == 0, 3:] += 180  # class 0: a bright bottom half
    write_idx(tmp_path / "images-idx3-ubyte.gz", images, 0x08)
    write_idx(tmp_path / "labels-idx1-ubyte", labels, 0x08)
    data = ["--data", "images-idx3-ubyte.gz", "--labels", "labels-idx1-ubyte"]
    result = one_json(run_cli("train", *data, "--hidden", "8", "--epochs", "20", "--batch-size", "20",
                              "--backend", "numpy", "--save", "idx.safetensors", "--json", cwd=tmp_path))
    assert result["task"] == "classification" and result["epochs"] == 20
    assert result["accuracy"] >= 0.95 and result["val_accuracy"] >= 0.95  # --data preset: 10 % validation
    model = load_model(tmp_path / "idx.safetensors")
    assert model.n_inputs == 36 and model.n_outputs == 2
    evaluated = one_json(run_cli("eval", "idx.safetensors", *data, "--backend", "numpy", "--json", cwd=tmp_path))
    assert evaluated["samples"] == 200 and evaluated["accuracy"] >= 0.95


def test_trains_on_csv_with_a_named_label_column(tmp_path):
    X, y = spiral_data(50, 2, seed=3)
    rows = ["a,kind,b"] + [f"{a},{c},{b}" for (a, b), c in zip(X.tolist(), y)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    result = one_json(run_cli("train", "--data", "data.csv", "--label-column", "kind", "--hidden", "32",
                              "--epochs", "300", "--batch-size", "100", "--learning-rate", "0.02",
                              "--validation-split", "0", "--backend", "numpy", "--json", cwd=tmp_path))
    assert result["task"] == "classification" and "val_loss" not in result
    assert result["accuracy"] >= 0.9


def test_progress_lines_when_not_a_terminal_and_silence_with_quiet(tmp_path):
    args = ("train", "--dataset", "vertical", "--epochs", "50", "--backend", "numpy")
    loud = run_cli(*args, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    epoch_lines = [l for l in loud.stderr.splitlines() if l.startswith("epoch ")]
    assert [l.split()[1] for l in epoch_lines] == [f"{e}/50" for e in range(5, 51, 5)]
    assert all("loss" in l and "accuracy" in l and "epochs/s" in l for l in epoch_lines)
    quiet = run_cli(*args, "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = make_progress(1, epochs=3, steps_per_epoch=1, stream=stream)
    for epoch in (1, 2, 3):
        bar.epoch_end(epoch, {"loss": 0.5 / epoch, "accuracy": 0.3 * epoch})
    bar.close()
    text = stream.getvalue()
    assert "3/3" in text and "epoch/s" in text and "loss 0.1667" in text and "accuracy 0.9000" in text
    silent = io.StringIO()
    make_progress(0, epochs=3, steps_per_epoch=1, stream=silent).epoch_end(1, {"loss": 1.0})
    assert silent.getvalue() == ""


@pytest.mark.parametrize("args, fragments", [
    (["train", "--epochs", "zero"], ["--epochs", "'zero'", "positive integer"]),
    (["train", "--dataset", "moons"], ["--dataset", "'moons'"]),
    (["train", "--hidden", "64,x", "--epochs", "1"], ["--hidden", "'64,x'"]),
    (["train", "--data", "missing.csv"], ["missing.csv"]),
    (["train", "--backend", "fortran", "--epochs", "1"], ["'fortran'", "numpy"]),
    (["eval", "missing.safetensors"], ["missing.safetensors"]),
])
def test_bad_arguments_give_one_line_and_exit_code_2(tmp_path, args, fragments):
    one_line_error(run_cli(*args, cwd=tmp_path), *fragments)


def test_bad_csv_value_names_the_line(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,oops,1\n")
    one_line_error(run_cli("train", "--data", "bad.csv", "--epochs", "1", cwd=tmp_path), "line 3", "'oops'")


def test_every_option_documents_its_default(tmp_path):
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                text = action.help or ""
                assert any(w in text for w in ("default", "presets", "required")), f"{name} {action.option_strings}"
        proc = run_cli(name, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and "default" in proc.stdout


def test_info_reports_every_backend(tmp_path):
    report = one_json(run_cli("info", "--json", cwd=tmp_path))
    assert report["dependencies"]["numpy"] == np.__version__
    assert set(report["backends"]) == set(PACKAGE_BACKENDS)
    numpy_backend = report["backends"]["numpy"]
    assert numpy_backend["available"] and numpy_backend["native_kernels"] == list(KERNELS)
    assert "dense_forward" in numpy_backend["blas_kernels"]
    for name, entry in report["backends"].items():
        assert entry["available"] or name in entry["reason"], entry  # an unavailable one says why
    assert isinstance(report["blas"], list) and all("threads" in lib for lib in report["blas"])
    text = run_cli("info", cwd=tmp_path)
    assert text.returncode == 0 and all(f"  {name}:" in text.stdout for name in PACKAGE_BACKENDS)
