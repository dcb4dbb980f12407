"""What every command of the command line shares: the parser class, argument types, output helpers."""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys

from .backends import ENV_VAR


class UsageError(ValueError):
    """A command-line argument that does not make sense."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nnbackends train: error: ... (see --help)``, exit code 2,
    with a "did you mean" for a misspelled option or choice."""

    def error(self, message):
        hint = self.suggestion(message)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see: {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option is reported by the command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._subcommands().get(getattr(parsed, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _subcommands(self) -> dict:
        return next((action.choices for action in self._actions
                     if isinstance(action, argparse._SubParsersAction)), {})

    def suggestion(self, message) -> str:
        """``"; did you mean --learning-rate?"`` for the first unknown option or invalid choice in ``message``."""
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            known = list(self._option_string_actions)
            for word in unknown.group(1).split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1) if word.startswith("-") else []
                if close:
                    return f"; did you mean {close[0]}?"
            return ""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = [c.strip(" '") for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            return f"; did you mean {close[0]!r}?" if close else ""
        return ""


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


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("data_loss", "regularization_loss"))


def add_backend_argument(parser):
    parser.add_argument("--backend", default=None,
                        help=f"numpy, numba, cupy or auto (default: ${ENV_VAR} if set, else auto: "
                             "cupy with a usable GPU, else numba if installed, else numpy)")


def add_output_arguments(parser, what):
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON object (default: off)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (default: off)")
