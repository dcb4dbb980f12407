"""The ``train`` command's options for callbacks, learning-rate schedules and resuming."""
from __future__ import annotations

import math
import os
import tempfile
import time

from . import callbacks, schedules
from .model_files import check_output_path

SCHEDULES = ("step", "exponential", "cosine")


def add_arguments(parser, positive_int, nonnegative_float):
    """The option group; ``positive_int`` and ``nonnegative_float`` are the CLI's argument types."""
    g = parser.add_argument_group("schedules, callbacks and resuming")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule instead of --decay: step (x --lr-gamma every --lr-step-size "
                        "steps), exponential (x --lr-gamma every step), cosine (to --lr-final over "
                        "--lr-decay-steps, default: the whole run) (default: none)")
    g.add_argument("--lr-step-size", type=positive_int, default=None, help="step schedule: steps per decay (required by it)")
    g.add_argument("--lr-gamma", type=nonnegative_float, default=None,
                   help="step/exponential schedule: the factor, in (0, 1] (required by them)")
    g.add_argument("--lr-decay-steps", type=positive_int, default=None, help="cosine schedule: steps of decay (default: the run's steps after the warm-up)")
    g.add_argument("--lr-final", type=nonnegative_float, default=0.0, help="cosine schedule: final rate (default: 0)")
    g.add_argument("--warmup-steps", type=int, default=0,
                   help="cosine schedule: linear warm-up steps from 0 (default: 0)")
    g.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without improvement of val_loss (loss without "
                        "validation) and keep the best epoch's weights (default: off)")
    g.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="save the best model so far (by val_loss, else loss) to PATH after each epoch that "
                        "improves it; {epoch} in PATH is replaced by the epoch (default: off)")
    g.add_argument("--csv-log", metavar="PATH", default=None, help="write each epoch's metrics to a CSV file (default: none)")
    g.add_argument("--resume", metavar="MODEL", default=None,
                   help="go on training a model saved with --save (its optimizer state and epoch count "
                        "included); the network options are taken from the file (default: a new model)")


def make_schedule(args, learning_rate, total_steps):
    """The schedule ``--lr-schedule`` asks for, or None; a ValueError naming a missing or bad parameter."""
    kind = args.lr_schedule
    if kind is None:
        if args.warmup_steps:
            raise ValueError("--warmup-steps needs --lr-schedule cosine.")
        return None
    if kind in ("step", "exponential") and args.lr_gamma is None:
        raise ValueError(f"--lr-schedule {kind} needs --lr-gamma (the factor, in (0, 1]).")
    if kind == "step":
        if args.lr_step_size is None:
            raise ValueError("--lr-schedule step needs --lr-step-size (steps between decays).")
        return schedules.StepDecay(learning_rate, args.lr_step_size, args.lr_gamma)
    if kind == "exponential":
        return schedules.ExponentialDecay(learning_rate, args.lr_gamma)
    decay_steps = args.lr_decay_steps or max(1, total_steps - args.warmup_steps)
    return schedules.CosineDecay(learning_rate, decay_steps, args.lr_final, args.warmup_steps)


def make_callbacks(args, validated) -> list:
    """The callbacks the options ask for; ``validated``: whether val_ metrics will be logged."""
    monitor = "val_loss" if validated else "loss"
    chosen = []
    if args.early_stopping is not None:
        chosen.append(callbacks.EarlyStopping(monitor, patience=args.early_stopping, restore_best_weights=True))
    if args.checkpoint:
        chosen.append(callbacks.ModelCheckpoint(args.checkpoint, monitor, save_best_only=True))
    if args.csv_log:
        chosen.append(callbacks.CSVLogger(args.csv_log, append=bool(args.resume)))
    return chosen


def check_paths(args) -> None:
    """The files ``--checkpoint`` and ``--csv-log`` name can be written (before a long run, not after it)."""
    if args.checkpoint:
        check_output_path(callbacks.checkpoint_path(args.checkpoint, 1), "--checkpoint")
    if args.csv_log:
        check_output_path(args.csv_log, "--csv-log", "log.csv")


def total_steps(n_samples, batch_size, epochs) -> int:
    return epochs * math.ceil(n_samples / (batch_size or n_samples))


def check_resumable(model, args):
    """A ValueError when the options ask for another optimizer than the saved model's."""
    if args.optimizer is not None and args.optimizer != model.optimizer.name:
        raise ValueError(f"--resume: {args.resume!r} was trained with {model.optimizer.name}, not "
                         f"{args.optimizer}; resume with the same optimizer (leave --optimizer out), or train "
                         "a new model.")


def save(model, path) -> tuple[str, str | None]:
    """Save ``model`` to ``path``: ``(path, None)``. When that fails after a long run (the folder was
    removed or filled meanwhile), ``(where it went instead, why path failed)``: beside ``path``, else in
    the working folder, else in the temporary folder, so a trained model is never lost. The first
    ``OSError`` only when no place takes it."""
    try:
        model.save(path)
        return path, None
    except OSError as exc:
        failure = exc
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "model"
    name = f"{stem}.rescued-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"
    for folder in (os.path.dirname(os.path.abspath(path)), os.getcwd(), tempfile.gettempdir()):
        try:
            model.save(os.path.join(folder, name))
        except OSError:
            continue
        return os.path.join(folder, name), " ".join(str(failure).split()) or type(failure).__name__
    raise failure

