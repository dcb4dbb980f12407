"""Command line: ``nnbackends train | eval | predict | export | info | bench`` (a thin layer over the Python API).

Bad arguments end in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from . import __version__, bench, cli_predict, cli_training, datasets, export_command, labels, model_files, plots
from .cli_common import (Parser, UsageError, add_backend_argument, add_output_arguments, echo, emit, fraction,
                         format_metrics, nonnegative_float, positive_int)
from .backends import ENV_VAR
from .cli_data import PRESET_KEYS, PRESETS, add_data_arguments, infer_task, load_data
from .distributed import MPIComm, SingleProcess, require_mpiexec
from .errors import BackendUnavailableError, ModelFileError, TrainingDivergedError
from .layers import ACTIVATIONS, Dense, Dropout, Linear, Softmax, activation
from .model import Model, load_model
from .optimizers import OPTIMIZERS
from .preprocessing import Standardize

ACTIVATION_CHOICES = tuple(a for a in ACTIVATIONS if a not in ("softmax", "linear"))


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


def _speed(history) -> str:
    """``" (first epoch 1.2 s, then 20,000 steps/s)"``: any compiling happens in the first epoch."""
    if history.steps_per_second is None:
        return ""
    return f" (first epoch {history.first_epoch_seconds:.2f} s, then {history.steps_per_second:,.0f} steps/s)"


# ---------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    comm = args.comm
    if not comm.is_root:  # every rank trains; the root alone prints and writes
        args.quiet, args.json = True, False
    if comm.is_root:  # fail now, not after a long run
        if args.save:
            model_files.check_save_folder(args.save)
        if args.plot:
            plots.check_picture_path(args.plot)
        cli_training.check_paths(args)
    data = load_data(args)
    X, y, source = data.X, data.y, data.source
    warn_unused_settings(args, source)
    preset = PRESETS[source]
    keys = PRESET_KEYS
    if args.optimizer not in (None, preset["optimizer"]):  # another optimizer keeps its own defaults
        keys = tuple(k for k in keys if k not in ("learning_rate", "decay"))
    for key in keys:
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, 0.0 if key == "validation_split" else None))
    task = infer_task(source, y, args.task)
    if task == "classification":
        n_outputs = len(np.unique(y)) if labels.are_names(y) else int(y.max()) + 1
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
        model.feature_names_, model.label_name_ = data.feature_names, data.label_name
        if args.standardize:
            model.preprocess = Standardize()
    how = (f" (from {ENV_VAR})" if not args.backend and os.environ.get(ENV_VAR)
           else " (auto)" if (args.backend or "auto").strip().lower() == "auto" else "")
    name = args.data or source
    ranks = f", {comm.size} ranks (MPI)" if comm.size > 1 else ""
    echo(args, f"training on {name}: {len(X)} samples, {X.shape[1]} features, {task}; "
               f"backend {model.backend.name}{how}, {args.dtype}{ranks}")
    history = model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, validation_data=validation,
                        verbose=0 if args.quiet else 1, comm=comm, on_interrupt="return",  # saved, then exit 130
                        callbacks=cli_training.make_callbacks(args, validation is not None))
    final = {k: v[-1] for k, v in history.history.items()}
    if model.preprocess is None and history.epochs:
        hint = scale_hint(X, y, history["loss"][0], task)
        if hint:
            echo(args, hint)
    saved, save_failure = args.save, None
    if args.save:  # on the root; a failure there fails every rank
        saved, save_failure = comm.on_root(cli_training.save, model, args.save) or (args.save, None)
    if save_failure:  # shown even with --quiet
        print(f"nnbackends train: error: could not save to {args.save!r} ({save_failure}); "
              f"saved the trained model to {saved!r} instead", file=sys.stderr)
    if args.plot and history.epochs:
        comm.on_root(plots.training_report, model, X, y, history, args.plot,
                     f"{name}: hidden {args.hidden}, {args.optimizer}, {history.epochs} epochs")
    result = {
        "dataset": name, "task": task, "backend": model.backend.name, "dtype": args.dtype,
        "epochs": history.epochs, "interrupted": history.interrupted, "seconds": history.seconds,
        "first_epoch_seconds": history.first_epoch_seconds, "steps_per_second": history.steps_per_second,
        **final, "saved": saved, "plot": args.plot, "ranks": comm.size,
    }
    lines = [f"{history.epochs} epochs in {history.seconds:.2f} s{_speed(history)}  {format_metrics(final)}"]
    if history.interrupted:
        lines.append(f"interrupted after {history.epochs} epochs")
    lines += [f"saved the model to {saved}"] * bool(saved) + [f"wrote {args.plot}"] * bool(args.plot)
    emit(args, result, "\n".join(lines))
    return 130 if history.interrupted else 1 if save_failure else 0


def scale_hint(X, y, first_loss, task) -> str | None:
    """A hint to standardize when the features are far from unit scale and the first epoch's loss is
    far above what predicting the mean (regression) or equal odds (classification) would give."""
    largest = float(np.abs(X).max())
    baseline = float(np.var(y, axis=0).mean()) if task == "regression" else math.log(max(2, len(np.unique(y))))
    if largest <= 100 or not first_loss > 10 * baseline:
        return None
    what = "the targets' variance" if task == "regression" else "that of equal odds"
    return (f"hint: the features reach {largest:g} and the first epoch's loss ({first_loss:.4g}) is far above "
            f"{what} ({baseline:.4g}); try --standardize.")


#: Optimizer options, and the optimizers they apply to.
OPTIMIZER_SETTINGS = {"momentum": ("sgd",), "beta_1": ("adam",), "beta_2": ("adam",), "rho": ("rmsprop",),
                      "epsilon": ("adagrad", "rmsprop", "adam")}


def warn_unused_settings(args, source):
    """A warning on stderr for each option given that does nothing with the other options."""
    optimizer = args.optimizer or PRESETS[source]["optimizer"]
    unused = [(f"--{key.replace('_', '-')}", f"the {optimizer} optimizer")
              for key, users in OPTIMIZER_SETTINGS.items() if getattr(args, key) is not None and optimizer not in users]
    if args.samples is not None and source not in ("spiral", "vertical", "sine"):
        unused.append(("--samples", f"{'--data' if source == 'file' else 'the ' + source + ' dataset'}"))
    if args.classes is not None and source not in ("spiral", "vertical"):
        unused.append(("--classes", f"{'--data' if source == 'file' else 'the ' + source + ' dataset'}"))
    for option, context in unused:
        echo(args, f"nnbackends train: warning: {option} does nothing with {context}; leave it out.")


def cmd_info(args) -> int:
    from .info import collect, render

    report = collect()
    print(json.dumps(report, default=str) if args.json else render(report))
    return 0


# ---------------------------------------------------------------------- parser
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
    net.add_argument("--standardize", action="store_true",
                     help="centre and scale each feature by its training mean and standard deviation; the "
                          "step is saved with the model, so eval and predict apply it (default: off)")
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
    # None: not given (the optimizer's own default, listed), so that a setting given to another optimizer is warned of.
    opt.add_argument("--momentum", type=nonnegative_float, default=None, help="sgd: momentum (default: 0)")
    opt.add_argument("--beta-1", type=fraction, default=None, help="adam: beta_1 (default: 0.9)")
    opt.add_argument("--beta-2", type=fraction, default=None, help="adam: beta_2 (default: 0.999)")
    opt.add_argument("--rho", type=fraction, default=None, help="rmsprop: rho (default: 0.9)")
    opt.add_argument("--epsilon", type=nonnegative_float, default=None,
                     help="adagrad/rmsprop/adam: epsilon (default: 1e-7)")
    run = p.add_argument_group("training")
    run.add_argument("--epochs", type=positive_int, default=None, help=f"epochs (presets: {preset('epochs')})")
    run.add_argument("--batch-size", type=positive_int, default=None,
                     help=f"samples per step, none = full batch (presets: {preset('batch_size')})")
    run.add_argument("--validation-split", type=fraction, default=None,
                     help=f"fraction of the data held out to validate after each epoch "
                          f"(presets: {preset('validation_split')})")
    add_backend_argument(run)
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
    add_output_arguments(out, "the final metrics, backend and timings")
    cli_training.add_arguments(p, positive_int, nonnegative_float)
    p.set_defaults(run=cmd_train)


def add_info_parser(sub):
    p = sub.add_parser("info", help="versions, backends, native kernels, BLAS, threads and GPU",
                       description="What this installation can run, and with what.")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object (default: off)")
    p.set_defaults(run=cmd_info)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nnbackends",
                    description="Train, evaluate and use small neural networks on the NumPy, Numba or CuPy backend.",
                    epilog="Each command explains its options and their defaults: nnbackends COMMAND --help")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    cli_predict.add_eval_parser(sub)
    cli_predict.add_predict_parser(sub)
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
    except BrokenPipeError:  # the reader left (| head): stop quietly, as a command killed by SIGPIPE does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except (ValueError, TypeError, OSError, BackendUnavailableError, ModelFileError, ImportError) as exc:
        return _fail(args, exc, 2)


def _fail(args, exc, code) -> int:
    """One line on stderr (the message's own line breaks folded; from the root alone when every rank
    fails alike), then the exit code."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if args.comm.is_root:
        print(f"nnbackends {args.command}: error: {message}", file=sys.stderr)
    return code
