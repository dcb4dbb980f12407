"""The ``eval`` and ``predict`` commands: a saved model on new data."""
from __future__ import annotations

import sys

import numpy as np

from . import data_files, labels
from .cli_common import UsageError, add_backend_argument, add_output_arguments, echo, emit, format_metrics, positive_int
from .cli_data import add_csv_arguments, add_data_arguments, load_data, report_dropped
from .model import load_model
from .validation import check_feature_names


def cmd_eval(args) -> int:
    model = load_model(args.model, backend=args.backend)
    if not (args.data or args.dataset):
        raise UsageError("give the data to evaluate on: --data FILE or --dataset NAME.")
    data = load_data(args)
    check_columns(model, args.data, data.feature_names)
    metrics = model.evaluate(data.X, data.y)
    name = args.data or data.source
    result = {"model": args.model, "dataset": name, "samples": len(data.X), "backend": model.backend.name, **metrics}
    emit(args, result, f"{name} ({len(data.X)} samples) on {model.backend.name}: {format_metrics(metrics)}")
    return 0


def cmd_predict(args) -> int:
    model = load_model(args.model, backend=args.backend)
    by_name = model.label_name_ if args.label_column is None else None  # the label column the model was trained on
    features = data_files.load_features(args.input, args.label_column, args.delimiter, args.missing, by_name)
    report_dropped(args, features.dropped, args.input)
    check_columns(model, args.input, features.names)
    values = features.values
    if values.shape[1] != model.n_inputs:
        hint = " (drop a label column with --label-column)" if values.shape[1] == model.n_inputs + 1 else ""
        raise UsageError(f"{args.input!r} has {values.shape[1]} columns but the model takes {model.n_inputs} "
                         f"features{hint}.")
    out = model.predict(values.astype(np.float32), batch_size=args.batch_size)
    names, rows = prediction_table(model, out)
    if args.output == "-":
        data_files.write_csv(sys.stdout, names, rows)
    else:
        data_files.save_csv(args.output, names, rows)
        echo(args, f"wrote {len(rows)} predictions to {args.output}")
    return 0


def check_columns(model, path, names) -> None:
    """A file's feature names checked against the model's, when both have them."""
    if names is not None and model.feature_names_ is not None:
        check_feature_names(repr(path), model.feature_names_, names)


def prediction_table(model, out):
    """The header and rows ``predict`` writes: a classifier's class (its name) and one probability per
    class, or one column per regression output (named after the label column it was trained on)."""
    if model.loss.classifies:
        classes = model.classes_ or list(range(out.shape[1]))
        names = ["class"] + [f"p{c}" if isinstance(c, int) else f"p_{c}" for c in classes]
        best = labels.decode(out.argmax(axis=1), classes)
        return names, [[c, *map(shortest, p)] for c, p in zip(best.tolist(), out)]
    names = ([model.label_name_] if out.shape[1] == 1 and model.label_name_ else
             [f"{model.label_name_ or 'y'}{k}" for k in range(out.shape[1])])
    return names, [list(map(shortest, row)) for row in out]


def shortest(value) -> str:
    """The shortest text that reads back as the same number in the model's precision."""
    return str(value) if isinstance(value, np.floating) else repr(value)


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="evaluate a saved model on a dataset",
                       description="Loss and accuracy of a saved model on a built-in dataset or on files.")
    p.add_argument("model", metavar="MODEL", help="a model saved by 'nnbackends train --save'")
    add_data_arguments(p, default_dataset=None)
    add_backend_argument(p)
    add_output_arguments(p, "the metrics")
    p.set_defaults(run=cmd_eval)


def add_predict_parser(sub):
    p = sub.add_parser("predict", help="predict with a saved model from a CSV file into a CSV file",
                       description="Read samples from a CSV file (one row each, optional header) and write "
                                   "the model's outputs: for classifiers a 'class' column and one "
                                   "probability column per class, for regression one column per output.")
    p.add_argument("model", metavar="MODEL", help="a model saved by 'nnbackends train --save'")
    p.add_argument("--input", required=True, metavar="FILE.csv", help="samples to predict (required)")
    p.add_argument("--output", required=True, metavar="FILE.csv",
                   help="where to write predictions; - for standard output (required)")
    p.add_argument("--label-column", default=None, metavar="COL",
                   help="a column of --input to ignore (name or 0-based index), e.g. the labels of a "
                        "training file (default: the model's label column when the header has it, "
                        "else none)")
    add_csv_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="samples per forward pass (default: all at once)")
    add_backend_argument(p)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (default: off)")
    p.set_defaults(run=cmd_predict)
