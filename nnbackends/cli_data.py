"""The command line's data: the dataset presets, the data options, and loading what they name."""
from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np

from . import data_files, datasets, labels
from .cli_common import UsageError, echo, positive_int

#: Per-dataset defaults for the options a user leaves out; "file" is for --data.
PRESETS = {
    "spiral": dict(hidden="64", optimizer="adam", learning_rate=0.05, decay=5e-7, epochs=10_000),
    "vertical": dict(hidden="128,128", optimizer="adam", learning_rate=0.005, decay=0.0, epochs=5_000),
    "sine": dict(hidden="64,64", optimizer="adam", learning_rate=0.005, decay=1e-3, epochs=3_000),
    "digits": dict(hidden="128", optimizer="adam", learning_rate=0.001, decay=0.0, epochs=30, batch_size=32,
                   validation_split=0.2),
    "file": dict(hidden="128", optimizer="adam", learning_rate=0.001, decay=0.0, epochs=10, batch_size=128,
                 validation_split=0.1),
}
SAMPLES, CLASSES = 100, 3  # of the generated datasets, when --samples and --classes are left out
PRESET_KEYS = ("hidden", "optimizer", "learning_rate", "decay", "epochs", "batch_size", "validation_split")


def add_data_arguments(parser, *, default_dataset):
    data = parser.add_argument_group("data (a built-in dataset, or files with --data)")
    data.add_argument("--dataset", choices=tuple(p for p in PRESETS if p != "file"), default=None,
                      help=f"built-in dataset; digits is scikit-learn's, so it needs pip install \"nnbackends[datasets]\" "
                           f"(default: {default_dataset} unless --data is given)")
    data.add_argument("--data", metavar="FILE",
                      help="a CSV file with a label column, or MNIST-style IDX images (gzipped or not) "
                           "with --labels (default: none)")
    data.add_argument("--labels", metavar="FILE", help="IDX labels file for IDX images in --data (default: none)")
    data.add_argument("--label-column", default="-1", metavar="COL",
                      help="CSV label column: a header name or a 0-based index, negative from the end "
                           "(default: -1, the last column)")
    add_csv_arguments(data)
    # --samples and --classes: None when not given, so that giving them with other data is warned of.
    data.add_argument("--samples", type=positive_int, default=None,
                      help=f"spiral/vertical: samples per class; sine: samples in total x10 (default: {SAMPLES})")
    data.add_argument("--classes", type=positive_int, default=None, help=f"spiral/vertical: classes (default: {CLASSES})")
    data.add_argument("--seed", type=int, default=0,
                      help="seed for the generated data, the weights, the validation split and shuffling; "
                           "evaluate on unseen spiral/vertical points with another seed (default: 0)")
    parser.set_defaults(default_dataset=default_dataset)


def add_csv_arguments(group):
    """``--delimiter`` and ``--missing``: how a CSV file is read (train, eval and predict)."""
    group.add_argument("--delimiter", type=delimiter, default=None, metavar="CHAR",
                       help="CSV field separator, such as ';' or tab (default: detected among comma, "
                            "semicolon and tab)")
    group.add_argument("--missing", choices=data_files.MISSING_CHOICES, default="error",
                       help="CSV rows with a missing value (empty, NA, NaN): stop at the first with its line "
                            "and column, or drop them and say how many (default: error)")


class Data(NamedTuple):
    """What the data options name: features, labels or targets, and where they come from."""

    X: np.ndarray
    y: np.ndarray
    source: str  # the preset: a dataset's name or "file"
    feature_names: list[str] | None = None  # from a file's header
    label_name: str | None = None  # the label column's name, from a file's header


def load_data(args) -> Data:
    """The ``Data`` the data arguments name."""
    if args.data and args.dataset:
        raise UsageError("give either --dataset or --data, not both.")
    if not args.data:
        if args.labels:
            raise UsageError("--labels goes with IDX images in --data.")
        name = args.dataset or args.default_dataset
        if name == "spiral":
            return Data(*datasets.spiral_data(args.samples or SAMPLES, args.classes or CLASSES, seed=args.seed), name)
        if name == "vertical":
            return Data(*datasets.vertical_data(args.samples or SAMPLES, args.classes or CLASSES, seed=args.seed), name)
        if name == "sine":
            return Data(*datasets.sine_data((args.samples or SAMPLES) * 10), name)
        return Data(*datasets.load_digits(), name)
    if args.labels:
        return Data(*data_files.load_idx(args.data, args.labels), "file")
    if data_files.is_idx(args.data):
        raise UsageError(f"{args.data!r} is an IDX file; give its labels file with --labels.")
    csv = data_files.load_csv_data(args.data, args.label_column, delimiter=args.delimiter, missing=args.missing)
    report_dropped(args, csv.dropped, args.data)
    return Data(csv.X, csv.y, "file", csv.feature_names, csv.label_name)


def report_dropped(args, dropped, path) -> None:
    """Say on stderr how many rows of ``path`` ``--missing drop`` left out."""
    if dropped:
        echo(args, f"dropped {dropped} row{'s' * (dropped != 1)} of {path} with a missing value (--missing drop)")


def delimiter(text) -> str:
    """A ``--delimiter`` value: one character; ``tab`` and ``\\t`` name the tab."""
    text = "\t" if text.lower() in ("tab", "\\t") else text
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not one character; give one such as ';' or tab")
    return text


def infer_task(source, y, requested="auto") -> str:
    if requested != "auto":
        return requested
    if source == "sine":
        return "regression"
    if labels.are_names(y):
        return "classification"
    integral = y.ndim == 1 and np.all(np.mod(y, 1) == 0) and y.min() >= 0
    return "classification" if integral else "regression"
