"""Command line: ``nnbackends train | info | bench`` (a thin layer over the Python API).

Bad arguments end in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import bench, datasets
from .backends import available_backends, registered_backends, resolve_backend, unavailable_reason
from .backends import get_backend
from .errors import BackendUnavailableError, ModelFileError, TrainingDivergedError
from .layers import Dense, Linear, Softmax, activation
from .model import Model
from .optimizers import OPTIMIZERS
from .validation import check_choice, check_positive_int

#: Per-dataset defaults for the options a user leaves out.
PRESETS = {
    "spiral": dict(hidden="64", learning_rate=0.05, decay=5e-7, epochs=10_000, task="classification"),
    "vertical": dict(hidden="64", learning_rate=0.05, decay=5e-7, epochs=1_000, task="classification"),
    "sine": dict(hidden="64,64", learning_rate=0.005, decay=1e-3, epochs=3_000, task="regression"),
    "digits": dict(hidden="128", learning_rate=0.001, decay=0.0, epochs=30, task="classification",
                   batch_size=32),
}


class UsageError(ValueError):
    """A command-line argument that does not make sense."""


def load_dataset(args):
    name = args.dataset
    if name == "spiral":
        return datasets.spiral_data(args.samples, args.classes, seed=args.seed)
    if name == "vertical":
        return datasets.vertical_data(args.samples, args.classes, seed=args.seed)
    if name == "sine":
        return datasets.sine_data(args.samples * 10)
    return datasets.load_digits()


def parse_hidden(text) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--hidden takes comma-separated layer sizes such as 64,64, got {text!r}.") from None
    for s in sizes:
        check_positive_int("--hidden size", s)
    return sizes


def build_model(n_inputs, n_outputs, hidden, act, task, backend=None, seed=None, dtype="float32"):
    """A Dense stack ``n_inputs -> hidden... -> n_outputs`` with ``act`` between layers."""
    model = Model(backend=backend, seed=seed, dtype=dtype)
    width = n_inputs
    for size in hidden:
        model.add(Dense(width, size))
        model.add(activation(act))
        width = size
    model.add(Dense(width, n_outputs))
    model.add(Softmax() if task == "classification" else Linear())
    return model


def cmd_train(args) -> int:
    preset = PRESETS[args.dataset]
    for key in ("hidden", "learning_rate", "decay", "epochs", "batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key))
    X, y = load_dataset(args)
    task = preset["task"]
    n_outputs = int(y.max()) + 1 if task == "classification" else y.shape[1]
    requested = args.backend
    model = build_model(X.shape[1], n_outputs, parse_hidden(args.hidden), args.activation, task,
                        backend=requested, seed=args.seed, dtype=args.dtype)
    opt_args = {"learning_rate": args.learning_rate, "decay": args.decay}
    if args.optimizer == "sgd":
        opt_args["momentum"] = args.momentum
    model.compile(loss="categorical_crossentropy" if task == "classification" else "mse",
                  optimizer=OPTIMIZERS[args.optimizer](**opt_args))
    if not args.quiet and not args.json:
        how = " (auto)" if (requested or "auto") == "auto" else ""
        print(f"training {args.dataset} on backend {model.backend.name}{how}, {args.dtype}", file=sys.stderr)
    start = time.perf_counter()
    verbose = 0 if (args.quiet or args.json) else 1
    history = model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, verbose=verbose)
    seconds = time.perf_counter() - start
    final = {k: v[-1] for k, v in history.history.items()}
    if args.save:
        model.save(args.save)
    result = {
        "dataset": args.dataset, "backend": model.backend.name, "dtype": args.dtype,
        "epochs": history.epochs, "interrupted": history.interrupted, "seconds": seconds,
        "steps_per_second": history.epochs * _steps(len(X), args.batch_size) / seconds,
        **final, "saved": args.save,
    }
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        metrics = "  ".join(f"{k} {final[k]:.4f}" for k in ("loss", "accuracy") if k in final)
        print(f"{history.epochs} epochs in {seconds:.2f} s ({result['steps_per_second']:.0f} steps/s)  {metrics}")
        if args.save:
            state = f"interrupted after {history.epochs} epochs; saved the model so far" if history.interrupted else "saved"
            print(f"{state} to {args.save}")
    return 130 if history.interrupted else 0


def _steps(n, batch_size):
    return -(-n // (batch_size or n))


def cmd_info(args) -> int:
    import numpy

    from . import __version__

    print(f"nnbackends {__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}")
    print(f"auto selects: {resolve_backend('auto')}")
    for name in registered_backends():
        reason = unavailable_reason(name)
        if reason:
            print(f"  {name:<6} not available: {reason}")
            continue
        backend = get_backend(name)
        print(f"  {name:<6} available; native kernels: {len(backend.native_kernels())}; "
              f"BLAS: {', '.join(backend.blas_kernels) or 'none'}; {backend.describe()}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="nnbackends", description=__doc__.splitlines()[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on a built-in dataset", formatter_class=fmt)
    train.add_argument("--dataset", choices=tuple(PRESETS), default="spiral", help="training data")
    train.add_argument("--samples", type=int, default=100, help="samples per class (sine: x10 in total)")
    train.add_argument("--classes", type=int, default=3, help="classes for spiral and vertical")
    train.add_argument("--hidden", default=None, help="hidden layer sizes, comma-separated (dataset preset)")
    train.add_argument("--activation", default="relu", help="hidden activation: relu, leaky_relu, sigmoid, tanh")
    train.add_argument("--optimizer", default="adam", choices=tuple(OPTIMIZERS), help="optimizer")
    train.add_argument("--learning-rate", type=float, default=None, help="learning rate (dataset preset)")
    train.add_argument("--decay", type=float, default=None, help="learning-rate decay (dataset preset)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--epochs", type=int, default=None, help="epochs (dataset preset)")
    train.add_argument("--batch-size", type=int, default=None, help="batch size (default: full batch)")
    train.add_argument("--seed", type=int, default=0, help="seed for data, weights and shuffling")
    train.add_argument("--backend", default=None,
                       help="numpy, numba, cupy or auto (default: $NNBACKENDS_BACKEND, else auto)")
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="float type")
    train.add_argument("--save", metavar="PATH", help="save the trained model (.safetensors)")
    train.add_argument("--json", action="store_true", help="print one JSON object with the results")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.set_defaults(run=cmd_train)

    info = sub.add_parser("info", help="versions, backends and their kernels", formatter_class=fmt)
    info.set_defaults(run=cmd_info)

    bench.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, BackendUnavailableError, ModelFileError, ImportError) as exc:
        print(f"nnbackends {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"nnbackends {args.command}: error: {exc}", file=sys.stderr)
        return 1
