"""Progress reporting for ``Model.fit``.

``verbose=0``: nothing. ``verbose=1``: on a terminal, a tqdm bar with the
epoch, the latest loss and accuracy and the speed; elsewhere (a log file, a
pipe) about ten plain lines, plus one whenever ``LogLines.max_silence``
seconds pass without one. ``verbose=2``: one plain line per epoch.
Everything goes to ``stream`` (default: standard error).
"""
from __future__ import annotations

import sys
import time


def format_logs(logs: dict) -> str:
    """``loss 0.1234  accuracy 0.9500 ...``; the loss split is shown only when regularization adds to it."""
    regularized = bool(logs.get("regularization_loss"))
    shown = {k: v for k, v in logs.items() if regularized or k not in ("data_loss", "regularization_loss")}
    return "  ".join(f"{k} {v:.4f}" for k, v in shown.items())


def format_rate(epochs, steps, seconds) -> str:
    """Speed in epochs per second, with steps per second when an epoch has several steps."""
    seconds = max(seconds, 1e-9)
    text = f"{epochs / seconds:,.1f} epochs/s"
    if steps > epochs:
        text += f", {steps / seconds:,.0f} steps/s"
    return text


INTERRUPTED = "interrupted during epoch {}; keeping the weights of the last completed step"


class Silent:
    def epoch_end(self, epoch, logs):
        pass

    def interrupted(self, epoch):
        pass

    def close(self):
        pass


class LogLines(Silent):
    """Plain lines: every ``every`` epochs, at the last one, and after ``max_silence`` seconds without one."""

    max_silence = 10.0

    def __init__(self, epochs, every, steps_per_epoch=1, stream=None):
        self.epochs, self.every, self.steps_per_epoch = epochs, every, steps_per_epoch
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.first_end = None  # the rate leaves out the first epoch, which holds any compiling

    def epoch_end(self, epoch, logs):
        now = time.perf_counter()
        if epoch == 1:
            self.first_end = now
        if epoch % self.every == 0 or epoch == self.epochs or now - self.last >= self.max_silence:
            self.last = now
            if epoch > 1:
                rate = format_rate(epoch - 1, (epoch - 1) * self.steps_per_epoch, now - self.first_end)
            else:
                rate = format_rate(1, self.steps_per_epoch, now - self.start)
            print(f"epoch {epoch}/{self.epochs}  {format_logs(logs)}  ({rate}, {now - self.start:.1f} s)",
                  file=self.stream, flush=True)

    def interrupted(self, epoch):
        print(INTERRUPTED.format(epoch), file=self.stream, flush=True)


class Bar(Silent):
    """A tqdm bar over epochs (its rate is the speed) with the latest metrics as its postfix."""

    refresh_seconds = 0.2  # formatting the postfix every epoch would cost more than a small step

    def __init__(self, epochs, tqdm, steps_per_epoch=1, stream=None):
        self.bar = tqdm(total=epochs, desc="training", unit="epoch", file=stream or sys.stderr,
                        dynamic_ncols=True, leave=True)
        self.steps_per_epoch = steps_per_epoch
        self.next_refresh = 0.0

    def epoch_end(self, epoch, logs):
        self.bar.update(1)
        now = time.perf_counter()
        if now >= self.next_refresh or epoch == self.bar.total:
            postfix = format_logs(logs)
            if self.steps_per_epoch > 1:
                postfix += f"  {self.steps_per_epoch} steps/epoch"
            self.bar.set_postfix_str(postfix, refresh=epoch == self.bar.total)
            self.next_refresh = now + self.refresh_seconds

    def interrupted(self, epoch):
        self.bar.write(INTERRUPTED.format(epoch))

    def close(self):
        self.bar.close()


def make_progress(verbose, epochs, steps_per_epoch, stream=None):
    """The reporter for ``fit(verbose=...)``: Silent, Bar (terminal with tqdm) or LogLines."""
    if not verbose:
        return Silent()
    stream = stream or sys.stderr
    if verbose >= 2:
        return LogLines(epochs, 1, steps_per_epoch, stream)
    if _is_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return Bar(epochs, tqdm, steps_per_epoch, stream)
    return LogLines(epochs, max(1, epochs // 10), steps_per_epoch, stream)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
