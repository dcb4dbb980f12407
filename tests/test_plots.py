"""Pictures: valid PNGs of the documented size, with titles, labelled axes and the right content."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from cli_helpers import png_size

pytest.importorskip("matplotlib", reason="plots need matplotlib (the [plot] extra)")

from nnbackends import Model, plots  # noqa: E402
from nnbackends.cli import build_model  # noqa: E402
from nnbackends.datasets import sine_data, vertical_data  # noqa: E402

PANEL_PIXELS = (round(plots.PANEL[0] * plots.DPI), round(plots.PANEL[1] * plots.DPI))


@pytest.fixture(scope="module")
def vertical_run():
    X, y = vertical_data(40, 3)
    model = build_model(2, 3, [8], "relu", "classification", backend="numpy", seed=0)
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    history = model.fit(X, y, epochs=30, validation_data=(X[::2], y[::2]), verbose=0)
    return model, X, y, history


def assert_labelled(ax):
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_decision_boundary_png(vertical_run, tmp_path):
    model, X, y, _ = vertical_run
    fig = plots.decision_boundary(model, X, y, path=tmp_path / "regions.png")
    assert png_size(tmp_path / "regions.png") == PANEL_PIXELS
    (ax,) = fig.axes
    assert_labelled(ax)
    accuracy = np.mean(model.predict(X).argmax(axis=1) == y)
    assert f"{accuracy:.1%}" in ax.get_title()
    points = [c for c in ax.collections if c.get_offsets().shape[0] > 0 and c.get_label().startswith("class")]
    assert sorted(c.get_label() for c in points) == ["class 0", "class 1", "class 2"]
    assert sum(c.get_offsets().shape[0] for c in points) == len(X)


def test_history_png_with_validation(vertical_run, tmp_path):
    *_, history = vertical_run
    fig = plots.history(history, path=tmp_path / "curves.png")
    assert png_size(tmp_path / "curves.png") == (2 * PANEL_PIXELS[0], PANEL_PIXELS[1])
    loss_ax, acc_ax = fig.axes
    for ax in fig.axes:
        assert_labelled(ax)
        assert [line.get_label() for line in ax.lines] == ["training", "validation"]
        assert all(len(line.get_xdata()) == history.epochs for line in ax.lines)
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), history["loss"])
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), history["val_accuracy"])


def test_loss_axis_is_logarithmic_only_across_a_decade():
    steep = plots.history({"loss": [2.0, 0.5, 0.1], "accuracy": [0.3, 0.6, 0.9]})
    flat = plots.history({"loss": [1.1, 1.05, 1.0]})
    assert steep.axes[0].get_yscale() == "log"
    assert len(flat.axes) == 1 and flat.axes[0].get_yscale() == "linear"


def test_training_report_skips_regions_for_regression(tmp_path):
    X, y = sine_data(100)
    model = build_model(1, 1, [8], "relu", "regression", backend="numpy", seed=0)
    model.compile(loss="mse", optimizer="adam")
    history = model.fit(X, y, epochs=5, verbose=0)
    fig = plots.training_report(model, X, y, history, path=tmp_path / "sine.png", title="sine")
    assert [ax.get_title() for ax in fig.axes] == ["Loss per epoch", "R² per epoch"]  # regression's default metric
    assert png_size(tmp_path / "sine.png") == (2 * PANEL_PIXELS[0], PANEL_PIXELS[1])


def test_the_metric_panel_shows_the_metric_the_model_logs():
    logs = {"loss": [1.0, 0.5], "mae": [0.9, 0.4], "val_loss": [1.1, 0.6], "val_mae": [1.0, 0.5]}
    ax = plots.history(logs).axes[1]
    assert ax.get_title() == "MAE per epoch"
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [logs["mae"], logs["val_mae"]]


def test_decision_boundary_needs_two_features():
    model = Model(backend="numpy")
    with pytest.raises(ValueError, match="X has 3 features per sample but the first layer expects 2"):
        plots.decision_boundary(model, np.zeros((4, 3)), np.zeros(4))


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"nnbackends\[plot\]"):
        plots.history({"loss": [1.0]})


def test_speedup_bars(tmp_path):
    ratios = {"numpy": {"64": 1.0, "512": 1.0}, "numba": {"64": 3.0, "512": 1.5}, "cupy": {"512": 40.0}}
    fig = plots.speedup(ratios, path=tmp_path / "speedup.png")
    assert png_size(tmp_path / "speedup.png")[1] == PANEL_PIXELS[1]
    (ax,) = fig.axes
    assert_labelled(ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "512"]
    assert sorted(round(p.get_height(), 6) for p in ax.patches) == [1.0, 1.0, 1.5, 3.0, 40.0]
    assert ax.get_yscale() == "log"  # 1 to 40 spans more than a decade
    with pytest.raises(ValueError, match="at least one backend"):
        plots.speedup({})
