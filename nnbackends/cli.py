"""Command line: ``nnbackends train | eval | predict | export | info | bench`` (a thin layer over the Python API).

Bad arguments end in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from . import bench, cli_training, data_files, datasets, export_command, model_files
from .backends import ENV_VAR
from .distributed import MPIComm, SingleProcess, require_mpiexec
from .errors import BackendUnavailableError, ModelFileError, TrainingDivergedError
from .layers import ACTIVATIONS, Dense, Dropout, Linear, Softmax, activation
from .model import Model, load_model
from .optimizers import OPTIMIZERS

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
PRESET_KEYS = ("hidden", "optimizer", "learning_rate", "decay", "epochs", "batch_size", "validation_split")
ACTIVATION_CHOICES = tuple(a for a in ACTIVATIONS if a not in ("softmax", "linear"))


class UsageError(ValueError):
    """A command-line argument that does not make sense."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nnbackends train: error: ... (see --help)``, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


# ---------------------------------------------------------------------- argument types
def positive_int(text) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_float(text) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def fraction(text) -> float:
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def parse_hidden(text) -> list[int]:
    """``"64,64"`` -> ``[64, 64]``; ``""`` or ``"0"`` means no hidden layer."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--hidden takes comma-separated layer sizes such as 64,64, got {text!r}.") from None
    if sizes == [0]:
        return []
    if any(s <= 0 for s in sizes):
        raise UsageError(f"--hidden sizes must be positive integers, got {text!r}.")
    return sizes


# ---------------------------------------------------------------------- data
def add_data_arguments(parser, *, default_dataset):
    data = parser.add_argument_group("data (a built-in dataset, or files with --data)")
    data.add_argument("--dataset", choices=tuple(p for p in PRESETS if p != "file"), default=None,
                      help=f"built-in dataset (default: {default_dataset} unless --data is given)")
    data.add_argument("--data", metavar="FILE",
                      help="a CSV file with a label column, or MNIST-style IDX images (gzipped or not) "
                           "with --labels (default: none)")
    data.add_argument("--labels", metavar="FILE", help="IDX labels file for IDX images in --data (default: none)")
    data.add_argument("--label-column", default="-1", metavar="COL",
                      help="CSV label column: a header name or a 0-based index, negative from the end "
                           "(default: -1, the last column)")
    data.add_argument("--samples", type=positive_int, default=100,
                      help="spiral/vertical: samples per class; sine: samples in total x10 (default: 100)")
    data.add_argument("--classes", type=positive_int, default=3, help="spiral/vertical: classes (default: 3)")
    data.add_argument("--seed", type=int, default=0,
                      help="seed for the generated data, the weights, the validation split and shuffling; "
                           "evaluate on unseen spiral/vertical points with another seed (default: 0)")
    parser.set_defaults(default_dataset=default_dataset)


def load_data(args):
    """``(X, y, source)`` from the data arguments; ``source`` names the preset (a dataset or "file")."""
    if args.data and args.dataset:
        raise UsageError("give either --dataset or --data, not both.")
    if not args.data:
        if args.labels:
            raise UsageError("--labels goes with IDX images in --data.")
        name = args.dataset or args.default_dataset
        if name == "spiral":
            return (*datasets.spiral_data(args.samples, args.classes, seed=args.seed), name)
        if name == "vertical":
            return (*datasets.vertical_data(args.samples, args.classes, seed=args.seed), name)
        if name == "sine":
            return (*datasets.sine_data(args.samples * 10), name)
        return (*datasets.load_digits(), name)
    if args.labels:
        return (*data_files.load_idx(args.data, args.labels), "file")
    if data_files.is_idx(args.data):
        raise UsageError(f"{args.data!r} is an IDX file; give its labels file with --labels.")
    return (*data_files.load_csv(args.data, args.label_column), "file")


def infer_task(source, y, requested="auto") -> str:
    if requested != "auto":
        return requested
    if source == "sine":
        return "regression"
    integral = y.ndim == 1 and np.all(np.mod(y, 1) == 0) and y.min() >= 0
    return "classification" if integral else "regression"


# ---------------------------------------------------------------------- models
def build_model(n_inputs, n_outputs, hidden, act, task, backend=None, seed=None, dtype="float32",
                l1=0.0, l2=0.0, dropout=0.0):
    """A Dense stack ``n_inputs -> hidden... -> n_outputs`` with ``act`` (and dropout) between layers;
    ``l1``/``l2`` regularize the weights and biases of the hidden layers."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    width = n_inputs
    for size in hidden:
        model.add(Dense(width, size, weight_regularizer_l1=l1, weight_regularizer_l2=l2,
                        bias_regularizer_l1=l1, bias_regularizer_l2=l2))
        model.add(activation(act))
        if dropout:
            model.add(Dropout(dropout))
        width = size
    model.add(Dense(width, n_outputs))
    model.add(Softmax() if task == "classification" else Linear())
    return model


def make_optimizer(args, schedule=None):
    """The optimizer named by ``--optimizer`` with the settings that apply to it (``schedule``: its rate)."""
    cls = OPTIMIZERS[args.optimizer]
    settings = {"learning_rate": schedule or args.learning_rate, "decay": None if schedule else args.decay,
                "epsilon": args.epsilon}
    settings.update({"sgd": {"momentum": args.momentum}, "adagrad": {},
                     "rmsprop": {"rho": args.rho}, "adam": {"beta_1": args.beta_1, "beta_2": args.beta_2}}[args.optimizer])
    if args.optimizer == "sgd":
        del settings["epsilon"]
    return cls(**{k: v for k, v in settings.items() if v is not None})  # None: the optimizer's own default


def echo(args, text):
    """A status line on stderr unless --quiet (stdout stays for results)."""
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def emit(args, result: dict, text: str):
    """The command's result: one JSON object with --json, else ``text``."""
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        print(text)


def _speed(history) -> str:
    """``" (first epoch 1.2 s, then 20,000 steps/s)"``: any compiling happens in the first epoch."""
    if history.steps_per_second is None:
        return ""
    return f" (first epoch {history.first_epoch_seconds:.2f} s, then {history.steps_per_second:,.0f} steps/s)"


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("data_loss", "regularization_loss"))


# ---------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    comm = args.comm
    if not comm.is_root:  # every rank trains; the root alone prints and writes
        args.quiet, args.json = True, False
    if args.save and comm.is_root:
        model_files.check_save_folder(args.save)  # fail now, not after a long run
    X, y, source = load_data(args)
    preset = PRESETS[source]
    keys = PRESET_KEYS
    if args.optimizer not in (None, preset["optimizer"]):  # another optimizer keeps its own defaults
        keys = tuple(k for k in keys if k not in ("learning_rate", "decay"))
    for key in keys:
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, 0.0 if key == "validation_split" else None))
    task = infer_task(source, y, args.task)
    if task == "classification":
        n_outputs = int(y.max()) + 1
    else:
        y = y.reshape(len(y), -1)
        n_outputs = y.shape[1]
    validation = None
    if args.validation_split:
        X, X_val, y, y_val = datasets.train_test_split(X, y, test_size=args.validation_split, seed=args.seed)
        validation = (X_val, y_val)
    if args.resume:
        model = load_model(args.resume, backend=args.backend)
        cli_training.check_resumable(model, args)
    else:
        rate = args.learning_rate if args.learning_rate is not None else OPTIMIZERS[args.optimizer]().learning_rate
        schedule = cli_training.make_schedule(args, rate, cli_training.total_steps(len(X), args.batch_size,
                                                                                     args.epochs))
        model = build_model(X.shape[1], n_outputs, parse_hidden(args.hidden), args.activation, task,
                            backend=args.backend, seed=args.seed, dtype=args.dtype,
                            l1=args.l1, l2=args.l2, dropout=args.dropout)
        model.compile(loss="categorical_crossentropy" if task == "classification" else "mse",
                      optimizer=make_optimizer(args, schedule))
    how = (f" (from {ENV_VAR})" if not args.backend and os.environ.get(ENV_VAR)
           else " (auto)" if (args.backend or "auto").strip().lower() == "auto" else "")
    name = args.data or source
    ranks = f", {comm.size} ranks (MPI)" if comm.size > 1 else ""
    echo(args, f"training on {name}: {len(X)} samples, {X.shape[1]} features, {task}; "
               f"backend {model.backend.name}{how}, {args.dtype}{ranks}")
    history = model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, validation_data=validation,
                        verbose=0 if args.quiet else 1, comm=comm,
                        callbacks=cli_training.make_callbacks(args, validation is not None))
    final = {k: v[-1] for k, v in history.history.items()}
    if args.save:  # on the root; a failure there fails every rank
        comm.on_root(model.save, args.save)
    if args.plot and history.epochs:
        from .plots import training_report

        comm.on_root(training_report, model, X, y, history, args.plot,
                     f"{name}: hidden {args.hidden}, {args.optimizer}, {history.epochs} epochs")
    result = {
        "dataset": name, "task": task, "backend": model.backend.name, "dtype": args.dtype,
        "epochs": history.epochs, "interrupted": history.interrupted, "seconds": history.seconds,
        "first_epoch_seconds": history.first_epoch_seconds, "steps_per_second": history.steps_per_second,
        **final, "saved": args.save, "plot": args.plot, "ranks": comm.size,
    }
    lines = [f"{history.epochs} epochs in {history.seconds:.2f} s{_speed(history)}  {format_metrics(final)}"]
    if history.interrupted:
        lines.append(f"interrupted after {history.epochs} epochs")
    lines += [f"saved the model to {args.save}"] * bool(args.save) + [f"wrote {args.plot}"] * bool(args.plot)
    emit(args, result, "\n".join(lines))
    return 130 if history.interrupted else 0


def cmd_eval(args) -> int:
    model = load_model(args.model, backend=args.backend)
    X, y, source = load_data(args)
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


def cmd_info(args) -> int:
    from .info import collect, render

    report = collect()
    print(json.dumps(report, default=str) if args.json else render(report))
    return 0


# ---------------------------------------------------------------------- parser
def _add_backend_argument(parser):
    parser.add_argument("--backend", default=None,
                        help=f"numpy, numba, cupy or auto (default: ${ENV_VAR} if set, else auto: "
                             "cupy with a usable GPU, else numba if installed, else numpy)")


def _add_output_arguments(parser, what):
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON object (default: off)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (default: off)")


def add_train_parser(sub):
    p = sub.add_parser("train", help="train a model and optionally save and plot it",
                       description="Train a dense network on a built-in dataset or on files. Options left "
                                   "out take the dataset's preset (listed with each option).")
    add_data_arguments(p, default_dataset="spiral")

    def preset(key):
        return ", ".join(f"{name.replace('file', '--data')} {PRESETS[name].get(key, 0.0 if key == 'validation_split' else 'none')}"
                         for name in PRESETS)

    net = p.add_argument_group("network")
    net.add_argument("--hidden", default=None, help=f"hidden layer sizes, comma-separated, 0 for none "
                                                     f"(presets: {preset('hidden')})")
    net.add_argument("--activation", default="relu", choices=ACTIVATION_CHOICES,
                     help="activation after each hidden layer (default: relu)")
    net.add_argument("--task", default="auto", choices=("auto", "classification", "regression"),
                     help="classification (softmax + cross-entropy) or regression (linear + MSE); auto: "
                          "classification when every label is a non-negative integer (default: auto)")
    net.add_argument("--l1", type=nonnegative_float, default=0.0,
                     help="L1 regularization of the hidden layers' weights and biases (default: 0)")
    net.add_argument("--l2", type=nonnegative_float, default=0.0,
                     help="L2 regularization of the hidden layers' weights and biases (default: 0)")
    net.add_argument("--dropout", type=fraction, default=0.0,
                     help="dropout rate after each hidden activation, training only (default: 0)")
    opt = p.add_argument_group("optimizer")
    opt.add_argument("--optimizer", default=None, choices=tuple(OPTIMIZERS), help="optimizer (default: adam)")
    opt.add_argument("--learning-rate", type=nonnegative_float, default=None,
                     help=f"initial learning rate (presets with adam: {preset('learning_rate')}; "
                          "another optimizer: its own default, sgd 1.0, adagrad 1.0, rmsprop 0.001)")
    opt.add_argument("--decay", type=nonnegative_float, default=None,
                     help=f"learning-rate decay, lr / (1 + decay * step) (presets with adam: {preset('decay')}; "
                          "another optimizer: 0)")
    opt.add_argument("--momentum", type=nonnegative_float, default=0.0, help="sgd: momentum (default: 0)")
    opt.add_argument("--beta-1", type=fraction, default=0.9, help="adam: beta_1 (default: 0.9)")
    opt.add_argument("--beta-2", type=fraction, default=0.999, help="adam: beta_2 (default: 0.999)")
    opt.add_argument("--rho", type=fraction, default=0.9, help="rmsprop: rho (default: 0.9)")
    opt.add_argument("--epsilon", type=nonnegative_float, default=None,
                     help="adagrad/rmsprop/adam: epsilon (default: 1e-7)")
    run = p.add_argument_group("training")
    run.add_argument("--epochs", type=positive_int, default=None, help=f"epochs (presets: {preset('epochs')})")
    run.add_argument("--batch-size", type=positive_int, default=None,
                     help=f"samples per step, none = full batch (presets: {preset('batch_size')})")
    run.add_argument("--validation-split", type=fraction, default=None,
                     help=f"fraction of the data held out to validate after each epoch "
                          f"(presets: {preset('validation_split')})")
    _add_backend_argument(run)
    run.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                     help="floating-point type of weights and data (default: float32)")
    out = p.add_argument_group("output")
    run.add_argument("--distributed", action="store_true",
                     help="train data-parallel on the ranks of mpiexec -n N (needs mpi4py: "
                          "pip install 'nnbackends[mpi]'); --batch-size is the global batch, rank 0 prints "
                          "and saves (default: off)")
    out.add_argument("--save", metavar="PATH", help="save the trained model to a .safetensors file (default: none)")
    out.add_argument("--plot", metavar="PATH",
                     help="write a PNG: decision regions (2-D classification data) beside the loss and "
                          "accuracy curves; needs matplotlib (default: none)")
    _add_output_arguments(out, "the final metrics, backend and timings")
    cli_training.add_arguments(p, positive_int, nonnegative_float)
    p.set_defaults(run=cmd_train)


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="evaluate a saved model on a dataset",
                       description="Loss and accuracy of a saved model on a built-in dataset or on files.")
    p.add_argument("model", metavar="MODEL", help="a model saved by 'nnbackends train --save'")
    add_data_arguments(p, default_dataset="spiral")
    _add_backend_argument(p)
    _add_output_arguments(p, "the metrics")
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
    _add_backend_argument(p)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (default: off)")
    p.set_defaults(run=cmd_predict)


def add_info_parser(sub):
    p = sub.add_parser("info", help="versions, backends, native kernels, BLAS, threads and GPU",
                       description="What this installation can run, and with what.")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object (default: off)")
    p.set_defaults(run=cmd_info)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nnbackends",
                    description="Train, evaluate and use small neural networks on the NumPy, Numba or CuPy backend.",
                    epilog="Each command explains its options and their defaults: nnbackends COMMAND --help")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    add_eval_parser(sub)
    add_predict_parser(sub)
    export_command.add_parser(sub)
    add_info_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    args.comm = SingleProcess()
    try:
        if getattr(args, "distributed", False):
            args.comm = MPIComm()
            require_mpiexec(args.comm)
        with args.comm.guard(show_traceback=False):  # a failure on one rank ends every rank
            return args.run(args)
    except TrainingDivergedError as exc:
        return _fail(args, exc, 1)
    except (ValueError, TypeError, OSError, BackendUnavailableError, ModelFileError, ImportError) as exc:
        return _fail(args, exc, 2)


def _fail(args, exc, code) -> int:
    """One line on stderr (the message's own line breaks folded; from the root alone when every rank
    fails alike), then the exit code."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if args.comm.is_root:
        print(f"nnbackends {args.command}: error: {message}", file=sys.stderr)
    return code
