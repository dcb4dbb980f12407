"""The ``eval`` and ``predict`` commands: a saved model on new data."""
from __future__ import annotations

import numpy as np

from . import data_files
from .cli_common import UsageError, add_backend_argument, add_output_arguments, echo, emit, format_metrics, positive_int
from .cli_data import add_data_arguments, load_data
from .model import load_model


def cmd_eval(args) -> int:
    model = load_model(args.model, backend=args.backend)
    X, y, source, *_ = load_data(args)
    metrics = model.evaluate(X, y)
    name = args.data or source
    result = {"model": args.model, "dataset": name, "samples": len(X), "backend": model.backend.name, **metrics}
    emit(args, result, f"{name} ({len(X)} samples) on {model.backend.name}: {format_metrics(metrics)}")
    return 0


def cmd_predict(args) -> int:
    model = load_model(args.model, backend=args.backend)
    header, values = data_files.read_csv(args.input)
    if args.label_column is not None:
        values = np.delete(values, data_files.column_index(header, values.shape[1], args.label_column), axis=1)
    if values.shape[1] != model.n_inputs:
        hint = " (drop a label column with --label-column)" if values.shape[1] == model.n_inputs + 1 else ""
        raise UsageError(f"{args.input!r} has {values.shape[1]} columns but the model takes {model.n_inputs} "
                         f"features{hint}.")
    out = model.predict(values.astype(np.float32), batch_size=args.batch_size)
    if model.loss.name == "categorical_crossentropy":
        names = ["class"] + [f"p{k}" for k in range(out.shape[1])]
        rows = [[int(k), *map(float, p)] for k, p in zip(out.argmax(axis=1), out)]
    else:
        names = [f"y{k}" for k in range(out.shape[1])]
        rows = out.astype(float).tolist()
    data_files.save_csv(args.output, names, rows)
    echo(args, f"wrote {len(rows)} predictions to {args.output}")
    return 0


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="evaluate a saved model on a dataset",
                       description="Loss and accuracy of a saved model on a built-in dataset or on files.")
    p.add_argument("model", metavar="MODEL", help="a model saved by 'nnbackends train --save'")
    add_data_arguments(p, default_dataset="spiral")
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
    p.add_argument("--output", required=True, metavar="FILE.csv", help="where to write predictions (required)")
    p.add_argument("--label-column", default=None, metavar="COL",
                   help="a column of --input to ignore (name or 0-based index), e.g. the labels of a "
                        "training file (default: use every column)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="samples per forward pass (default: all at once)")
    add_backend_argument(p)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (default: off)")
    p.set_defaults(run=cmd_predict)
