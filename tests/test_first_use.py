"""What a new user meets first, on the command line and in Python: their own CSV files, labels and
output paths, settings that do nothing, Ctrl-C in a script and the small things of a first session."""
from __future__ import annotations

import csv
import io
import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import cli_env, run_cli

import nnbackends as nb
from nnbackends import cli, cli_training, data_files
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, ReLU, Softmax

SPECIES = np.array(["setosa", "versicolor", "virginica"])


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def flowers(path, delimiter=",", samples=40):
    """A CSV file of spiral points labelled with species names, header x0,x1,species."""
    X, y = spiral_data(samples, 3, seed=3)
    return write_csv(path, ["x0", "x1", "species"], [[*map(float, x), SPECIES[k]] for x, k in zip(X, y)], delimiter)


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one_line_error(proc, *fragments, code=2):
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- 1, 11: labels and names kept in files
def test_string_labels_train_and_predict_by_name_on_the_command_line(tmp_path):
    flowers(tmp_path / "flowers.csv")
    ok(run_cli("train", "--data", "flowers.csv", "--label-column", "species", "--epochs", "3", "--backend", "numpy",
               "--save", "m.safetensors", cwd=tmp_path))
    out = ok(run_cli("predict", "m.safetensors", "--input", "flowers.csv", "--output", "-", cwd=tmp_path)).stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["class", "p_setosa", "p_versicolor", "p_virginica"]  # the label column left out by name
    assert len(rows) == 121 and {r[0] for r in rows[1:]} <= set(SPECIES)
    model = nb.load_model(tmp_path / "m.safetensors", backend="numpy")
    assert model.classes_ == list(SPECIES) and model.feature_names_ == ["x0", "x1"] and model.label_name_ == "species"


def test_a_file_with_its_columns_in_another_order_is_refused_naming_them(tmp_path):
    flowers(tmp_path / "flowers.csv")
    ok(run_cli("train", "--data", "flowers.csv", "--epochs", "1", "--backend", "numpy", "--save", "m.safetensors",
               cwd=tmp_path))
    X, y = spiral_data(5, 3)
    write_csv(tmp_path / "swapped.csv", ["x1", "x0", "species"], [[x[1], x[0], SPECIES[k]] for x, k in zip(X, y)])
    line = one_line_error(run_cli("eval", "m.safetensors", "--data", "swapped.csv", cwd=tmp_path))
    assert "the same names in another order" in line and "['x0', 'x1']" in line
    one_line_error(run_cli("predict", "m.safetensors", "--input", "swapped.csv", "--output", "p.csv", cwd=tmp_path),
                   "another order")


def test_regression_predictions_are_headed_by_the_label_column_in_shortest_digits(tmp_path):
    X = np.linspace(-1, 1, 50)[:, None]
    write_csv(tmp_path / "prices.csv", ["size", "price"], [[float(x), float(2 * x + 1)] for x in X[:, 0]])
    ok(run_cli("train", "--data", "prices.csv", "--task", "regression", "--epochs", "2", "--backend", "numpy",
               "--save", "m.safetensors", cwd=tmp_path))
    write_csv(tmp_path / "new.csv", ["size"], [[0.5], [0.25]])
    out = ok(run_cli("predict", "m.safetensors", "--input", "new.csv", "--output", "-", cwd=tmp_path)).stdout
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header == ["price"]
    predicted = nb.load_model(tmp_path / "m.safetensors", backend="numpy").predict(np.array([[0.5], [0.25]]))
    for (text,), value in zip(rows, predicted[:, 0]):
        assert np.float32(text) == value and len(text) <= 12  # float32's shortest text, not 17 digits


# ---------------------------------------------------------------------- 3: output paths
def test_output_paths_are_checked_before_training(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    for args, fragments in [
        (["--save", "folder"], ["that is a folder, not a file", "folder/model.safetensors"]),
        (["--save", "file/m.safetensors"], ["is a file, not a folder"]),
        (["--plot", "missing/run.png"], ["does not exist"]),
        (["--plot", "run.gif"], [".gif is not a picture format", ".png"]),
        (["--csv-log", "missing/log.csv"], ["--csv-log", "does not exist"]),
        (["--checkpoint", "folder/"], ["that is a folder"]),
    ]:
        proc = run_cli("train", "--epochs", "100000", "--backend", "numpy", *args, cwd=tmp_path)
        one_line_error(proc, *fragments)
        assert "epochs in" not in proc.stdout  # nothing trained


def test_a_save_that_fails_after_training_keeps_the_model_beside_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    asked = str(tmp_path / "m.safetensors")
    save = nb.Model.save

    def full_disk(model, path, include_optimizer=True):
        if str(path) == asked:
            raise OSError(28, "No space left on device")
        save(model, path, include_optimizer)

    monkeypatch.setattr(nb.Model, "save", full_disk)
    assert cli.main(["train", "--epochs", "2", "--backend", "numpy", "--save", asked]) == 1
    err = capsys.readouterr().err
    rescued = re.search(r"saved the trained model to '([^']+)' instead", err).group(1)
    assert "No space left on device" in err and rescued.startswith(str(tmp_path / "m.rescued-"))
    assert nb.load_model(rescued, backend="numpy").epochs_trained == 2


def test_a_save_falls_back_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nb.Model([Dense(2, 3), Softmax()], backend="numpy", seed=0).compile()
    where, why = cli_training.save(model, tmp_path / "gone" / "m.safetensors")
    assert where.startswith(str(tmp_path / "m.rescued-")) and "gone" in why
    np.testing.assert_array_equal(nb.load_model(where).get_weights()[0], model.get_weights()[0])


def test_plot_writes_the_format_its_suffix_names(tmp_path):
    ok(run_cli("train", "--epochs", "2", "--backend", "numpy", "--plot", "run.jpg", cwd=tmp_path))
    assert (tmp_path / "run.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes


# ---------------------------------------------------------------------- 6: CSV files as they come
def test_semicolons_and_tabs_are_detected_and_a_decimal_comma_is_named(tmp_path):
    for delimiter in (";", "\t"):
        X, y = data_files.load_csv(flowers(tmp_path / "f.csv", delimiter), "species")
        assert X.shape == (120, 2) and set(y) == set(SPECIES)
    (tmp_path / "d.csv").write_text("a;b\n1,5;0\n2,5;1\n")
    with pytest.raises(ValueError, match=r"line 2, column 1 \('a'\).*decimal commas are not read"):
        data_files.load_csv(tmp_path / "d.csv")
    ok(run_cli("train", "--data", flowers(tmp_path / "f.csv", ";"), "--epochs", "1", "--backend", "numpy",
               cwd=tmp_path))


def test_a_file_split_at_the_wrong_delimiter_says_which_to_give(tmp_path):
    (tmp_path / "s.csv").write_text("a;b;c\n1;2;0\n3;4;1\n")
    line = one_line_error(run_cli("train", "--data", "s.csv", "--delimiter", ",", "--epochs", "1", cwd=tmp_path))
    assert "split at ','" in line and "--delimiter ';'" in line


def test_missing_values_name_their_file_line_and_column_or_are_dropped(tmp_path):
    rows = [[1.0, 2.0, 0], [3.0, "NA", 1], [5.0, 6.0, 0], ["", 8.0, 1]] + [[float(i), 1.0, i % 2] for i in range(20)]
    write_csv(tmp_path / "m.csv", ["a", "b", "label"], rows)
    line = one_line_error(run_cli("train", "--data", "m.csv", "--epochs", "1", cwd=tmp_path))
    assert "'m.csv' line 3, column 2 ('b'): missing value 'NA'" in line and "--missing drop" in line
    proc = ok(run_cli("train", "--data", "m.csv", "--missing", "drop", "--epochs", "1", "--backend", "numpy",
                      cwd=tmp_path))
    assert "dropped 2 rows of m.csv with a missing value" in proc.stderr
    assert "training on m.csv: 20 samples" in proc.stderr  # 22 rows kept, 10% of them held out for validation


def test_a_nan_is_reported_at_its_file_line_not_a_shuffled_index(tmp_path):
    rows = [[float(i), float(i % 2)] for i in range(30)]
    rows[20][0] = "inf"
    write_csv(tmp_path / "n.csv", ["x", "label"], rows)
    one_line_error(run_cli("train", "--data", "n.csv", "--epochs", "1", cwd=tmp_path),
                   "'n.csv' line 22, column 1 ('x'): 'inf' is not a finite number")


def test_a_headerless_file_keeps_a_first_row_that_holds_na(tmp_path):
    (tmp_path / "h.csv").write_text("NA,1\n2,0\n3,1\n")
    with pytest.raises(ValueError, match="line 1, column 1: missing value 'NA'"):
        data_files.load_csv(tmp_path / "h.csv")
    data = data_files.load_csv_data(tmp_path / "h.csv", missing="drop")
    assert data.feature_names is None and data.dropped == 1 and data.X.tolist() == [[2.0], [3.0]]


# ---------------------------------------------------------------------- 7: Ctrl-C in Python
def test_ctrl_c_in_a_script_raises_with_the_history(monkeypatch):
    """A sweep of fits stops at the first Ctrl-C (see test_interrupt for real signals)."""
    import signal

    X, y = spiral_data(20, 3)
    model = nb.Model([Dense(2, 8), ReLU(), Dense(8, 3), Softmax()], backend="numpy", seed=0).compile()
    post_update = model.optimizer.post_update

    def press_ctrl_c():
        post_update()
        if model.optimizer.iterations == 4:
            signal.raise_signal(signal.SIGINT)

    model.optimizer.post_update = press_ctrl_c
    with pytest.raises(KeyboardInterrupt) as info:
        for _ in range(10):
            model.fit(X, y, epochs=3, verbose=0)
    assert isinstance(info.value, nb.TrainingInterrupted) and "fit(on_interrupt='return')" in str(info.value)
    assert info.value.history.interrupted and info.value.history.epochs == 1 and model.optimizer.iterations == 4


# ---------------------------------------------------------------------- 8: bench --smoke on a default install
def test_a_workload_whose_data_needs_an_extra_is_skipped_with_the_install_command(monkeypatch):
    from nnbackends import datasets
    from nnbackends.bench import cases, report, runner

    why = 'load_digits needs scikit-learn, which is not installed: pip install "nnbackends[datasets]"'

    def no_sklearn():
        raise ImportError(why)

    monkeypatch.setattr(datasets, "load_digits", no_sklearn)
    cases.load_data.cache_clear()
    try:
        plan = runner.Plan("train", ["numpy"], ["spiral", "digits"], smoke=True, peer_check=False)
        result = runner.run(plan)
    finally:
        cases.load_data.cache_clear()
    assert result["errors"] == [] and [r["workload"] for r in result["results"]] == ["spiral"]
    assert result["skipped"] == [{"work": "train digits", "reason": why}]
    assert 'train digits: skipped: load_digits needs scikit-learn' in report.format_table(result)


# ---------------------------------------------------------------------- 9, 10: scale hints and settings that do nothing
def test_unscaled_features_get_a_hint_to_standardize(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(1e5, 5e5, (60, 2))
    write_csv(tmp_path / "houses.csv", ["area", "rooms", "price"], [[*x, x[0] / 1e5] for x in X])
    proc = ok(run_cli("train", "--data", "houses.csv", "--task", "regression", "--epochs", "2", "--backend", "numpy",
                      cwd=tmp_path))
    assert "try --standardize" in proc.stderr
    proc = ok(run_cli("train", "--data", "houses.csv", "--task", "regression", "--epochs", "2", "--backend", "numpy",
                      "--standardize", cwd=tmp_path))
    assert "try --standardize" not in proc.stderr


def test_settings_that_do_nothing_are_warned_of(tmp_path):
    proc = ok(run_cli("train", "--optimizer", "adam", "--momentum", "0.9", "--epochs", "1", "--backend", "numpy",
                      cwd=tmp_path))
    assert "warning: --momentum does nothing with the adam optimizer" in proc.stderr
    proc = ok(run_cli("train", "--dataset", "sine", "--classes", "4", "--epochs", "1", "--backend", "numpy",
                      cwd=tmp_path))
    assert "warning: --classes does nothing with the sine dataset" in proc.stderr
    proc = ok(run_cli("train", "--optimizer", "sgd", "--momentum", "0.9", "--epochs", "1", "--backend", "numpy",
                      cwd=tmp_path))
    assert "warning" not in proc.stderr


def test_a_bad_backend_in_the_environment_names_the_variable(tmp_path):
    one_line_error(run_cli("train", "--epochs", "1", cwd=tmp_path, NNBACKENDS_BACKEND="numby"),
                   "'numby' (from the environment variable NNBACKENDS_BACKEND)", "unset it")


# ---------------------------------------------------------------------- 12: the small things
def test_version_did_you_mean_and_eval_without_data(tmp_path):
    assert ok(run_cli("--version", cwd=tmp_path)).stdout.strip() == f"nnbackends {nb.__version__}"
    one_line_error(run_cli("train", "--learnig-rate", "0.1", cwd=tmp_path), "did you mean --learning-rate?")
    one_line_error(run_cli("train", "--optimizer", "adma", cwd=tmp_path), "did you mean 'adam'?")
    ok(run_cli("train", "--epochs", "1", "--backend", "numpy", "--save", "m.safetensors", cwd=tmp_path))
    one_line_error(run_cli("eval", "m.safetensors", cwd=tmp_path), "--data FILE or --dataset NAME")


def test_summary_rows_stay_in_their_columns_and_print_once(capsys):
    model = nb.Model([Dense(2, 64, activation="relu", weight_regularizer_l2=1e-4), Dense(3), Softmax()],
                     backend="numpy", seed=0)
    assert model.summary() is None
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:6]] == ["Dense(2,", "ReLU()", "Dense(64,", "Softmax()"]
    assert len({len(line) for line in lines[1:6]}) == 1  # one width: the columns line up
    assert model.summary(print_fn=None).splitlines() == lines


def test_layers_as_users_write_them():
    model = nb.Model([Dense(2, 16, activation="tanh"), Dense(3, activation="softmax")], backend="numpy", seed=0)
    assert [str(layer) for layer in model.layers] == ["Dense(2, 16)", "Tanh()", "Dense(16, 3)", "Softmax()"]
    with pytest.raises(ValueError, match=r"first Dense layer, so it needs its input size too: Dense\(n_inputs, 8\)"):
        nb.Model([Dense(8)], backend="numpy")
    with pytest.warns(DeprecationWarning, match="Model\\(backend=...\\)"):
        assert nb.Model("numpy").backend.name == "numpy"


def test_history_repr_shows_plain_numbers():
    X, y = spiral_data(10, 3)
    history = nb.Model([Dense(2, 3), Softmax()], backend="numpy", seed=0).compile().fit(X, y, epochs=2, verbose=0)
    assert "np.float" not in repr(history) and re.search(r"'loss': \d\.\d+", repr(history))


def test_predictions_piped_into_head_end_quietly(tmp_path):
    ok(run_cli("train", "--epochs", "1", "--backend", "numpy", "--save", "m.safetensors", cwd=tmp_path))
    write_csv(tmp_path / "many.csv", ["x", "y"], np.zeros((20_000, 2)).tolist())
    predict = [sys.executable, "-m", "nnbackends", "predict", "m.safetensors", "--input", "many.csv", "--output", "-"]
    proc = subprocess.run(["bash", "-c", f"{shlex.join(predict)} | head -1"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout == "class,p0,p1,p2\n" and proc.stderr == ""


def test_the_json_of_train_names_where_the_model_went(tmp_path):
    out = ok(run_cli("train", "--epochs", "1", "--backend", "numpy", "--save", "m.safetensors", "--json",
                     cwd=tmp_path)).stdout
    assert json.loads(out)["saved"] == "m.safetensors"
