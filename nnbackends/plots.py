"""Pictures of models and training runs (matplotlib, the optional ``[plot]`` extra).

Each function returns a ``matplotlib.figure.Figure`` and, given ``path``,
also writes it in the format its suffix names (``IMAGE_FORMATS``; PNG without
one). Figures are made without ``pyplot``, so no global state changes and no
display is needed.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from .model_files import check_output_path
from .validation import check_features

DPI = 100
PANEL = (5.0, 4.2)  # inches per panel: 500 x 420 pixels at DPI


#: The picture formats written, by file suffix.
IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf", ".webp": "webp",
                 ".tif": "tiff", ".tiff": "tiff", ".eps": "eps"}


def image_format(path) -> str:
    """The format a picture at ``path`` is written in, from its suffix; a ValueError for an unknown one."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix and suffix not in IMAGE_FORMATS:
        raise ValueError(f"Cannot write a picture to {os.fspath(path)!r}: {suffix} is not a picture format "
                         f"written here; end the name in one of {', '.join(IMAGE_FORMATS)}.")
    return IMAGE_FORMATS.get(suffix, "png")


def check_picture_path(path) -> None:
    """Before a long run: matplotlib is installed, ``path``'s suffix names a format, and its folder takes a file."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(_NEEDS_MATPLOTLIB)
    image_format(path)
    check_output_path(path, "Cannot write the picture", "training.png")


_NEEDS_MATPLOTLIB = 'Plotting needs matplotlib, which is not installed: pip install "nnbackends[plot]"'


def _figure(panels):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_NEEDS_MATPLOTLIB) from None
    fig = Figure(figsize=(PANEL[0] * panels, PANEL[1]), dpi=DPI, layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _finish(fig, path):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=DPI, format=image_format(path))
    return fig


def _log_axis(ax, fmt):
    """A logarithmic y axis labelled with plain numbers (0.1, 1, 10) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.format(v)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _class_colors(n):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def is_classifier(model) -> bool:
    """Whether ``model`` is compiled with a classification loss (its outputs are class scores)."""
    return getattr(getattr(model, "loss", None), "name", None) in ("categorical_crossentropy", "binary_crossentropy")


def _predicted_classes(model, X):
    out = model.predict(X)
    return out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(np.int64)


def draw_decision_boundary(ax, model, X, y, resolution=300, title=None):
    """Draw the data coloured by class over the model's predicted class regions on ``ax``."""
    X = check_features("X", X, 2)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    names = getattr(model, "classes_", None)
    y = model.class_indices(y) if names is not None else y.reshape(len(y)).astype(np.int64)
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-6)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.c_[gx.ravel(), gy.ravel()]
    regions = _predicted_classes(model, grid).reshape(gx.shape)
    n_classes = int(max(regions.max(), y.max())) + 1
    colors = _class_colors(n_classes)
    ax.contourf(gx, gy, regions, levels=np.arange(n_classes + 1) - 0.5, colors=colors, alpha=0.25)
    for c in range(n_classes):
        pts = X[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colors[c], edgecolors="black", linewidths=0.3,
                   label=f"class {names[c]}" if names is not None and c < len(names) else f"class {c}")
    accuracy = float(np.mean(_predicted_classes(model, X) == y))
    ax.set_title(title or f"Decision regions (accuracy {accuracy:.1%})")
    ax.set_xlabel("feature 0")
    ax.set_ylabel("feature 1")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    return ax


#: How the metrics of ``nnbackends.metrics`` are named on a plot.
METRIC_LABELS = {"accuracy": "accuracy", "r2": "R²", "mae": "MAE", "mse": "MSE", "rmse": "RMSE"}


def metric_key(logs) -> str | None:
    """The metric a History holds (its one entry besides the losses and ``val_`` entries), or None."""
    return next((k for k in logs if k not in ("loss", "data_loss", "regularization_loss")
                 and not k.startswith("val_")), None)


def draw_history(ax_loss, ax_metric, history):
    """Draw loss (log scale) and the metric against epochs, validation dashed where present."""
    from matplotlib.ticker import MaxNLocator

    logs = getattr(history, "history", history)
    if "loss" not in logs:
        raise ValueError(f"history has no 'loss' entry (it has {sorted(logs)}); pass Model.fit's History.")
    metric = metric_key(logs)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_metric, metric, METRIC_LABELS.get(metric, metric))):
        if ax is None:
            continue
        for prefix, style, who in (("", "-", "training"), ("val_", "--", "validation")):
            values = logs.get(prefix + key)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style, label=who, linewidth=1.0)
        ax.set_title(f"{label[0].upper() + label[1:]} per epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    losses = [v for k in ("loss", "val_loss") for v in logs.get(k, ())]
    if ax_loss is not None and min(losses) > 0 and max(losses) >= 10 * min(losses):  # spans a decade
        _log_axis(ax_loss, "{:g}")
    if ax_metric is not None and metric == "accuracy":
        ax_metric.set_ylim(0, 1.02)


def decision_boundary(model, X, y, path=None, title=None):
    """A figure of 2-D data coloured by class over the model's decision regions."""
    fig, (ax,) = _figure(1)
    draw_decision_boundary(ax, model, X, y, title=title)
    return _finish(fig, path)


def history(history, path=None, title=None):
    """A figure of loss and metric curves against epochs (validation where present)."""
    return training_report(None, None, None, history, path, title)


def training_report(model, X, y, history, path=None, title=None):
    """Loss and metric curves, with the decision regions beside them when ``model`` is given
    and the data are 2-D with classes."""
    logs = getattr(history, "history", history)
    has_metric = metric_key(logs) is not None
    regions = is_classifier(model) and np.ndim(X) == 2 and np.shape(X)[1] == 2
    fig, axes = _figure(1 + has_metric + regions)
    if regions:
        draw_decision_boundary(axes[0], model, X, y)
    draw_history(axes[int(regions)], axes[-1] if has_metric else None, logs)
    if title:
        fig.suptitle(title, fontweight="bold")
    return _finish(fig, path)


def speedup(ratios, path=None, baseline="numpy", title=None):
    """Grouped bars of speed-up over ``baseline`` by backend and problem size.

    ``ratios`` maps backend -> {size label: baseline time / backend time}; a
    missing size (a backend that did not run it) leaves a gap. Above 1 is faster.
    """
    if not ratios or not any(ratios.values()):
        raise ValueError("speedup() needs at least one backend with one measured size.")
    sizes = list(dict.fromkeys(size for by_size in ratios.values() for size in by_size))
    fig, (ax,) = _figure(1)
    fig.set_size_inches(max(PANEL[0], 1.2 * len(sizes) + 2), PANEL[1])
    width = 0.8 / len(ratios)
    colors = _class_colors(len(ratios))
    for i, (backend, by_size) in enumerate(ratios.items()):
        xs = [j + (i - (len(ratios) - 1) / 2) * width for j, size in enumerate(sizes) if size in by_size]
        ax.bar(xs, [by_size[size] for size in sizes if size in by_size], width, label=backend, color=colors[i])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label=f"{baseline} (1x)")
    values = [v for by_size in ratios.values() for v in by_size.values()]
    if max(values) >= 10 * min(values):
        _log_axis(ax, "{:g}x")
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_title(title or f"Speed-up over {baseline} by backend and size")
    ax.set_xlabel("problem size")
    ax.set_ylabel(f"speed-up over {baseline} (x, higher is faster)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, path)
