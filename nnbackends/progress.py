"""Progress reporting for ``Model.fit``.

``verbose=0``: nothing. ``verbose=1``: a progress bar (tqdm) on a terminal,
else about ten plain log lines. ``verbose=2``: one line per epoch.
"""
from __future__ import annotations

import sys
import time


def format_logs(logs: dict) -> str:
    regularized = bool(logs.get("regularization_loss"))
    shown = {k: v for k, v in logs.items() if regularized or k not in ("data_loss", "regularization_loss")}
    return "  ".join(f"{k} {v:.4f}" for k, v in shown.items())


class Silent:
    def epoch_end(self, epoch, logs):
        pass

    def interrupted(self, epoch):
        pass

    def close(self):
        pass


class LogLines(Silent):
    """Plain lines to a stream, every ``every`` epochs and at the last one."""

    def __init__(self, epochs, every, stream=None):
        self.epochs, self.every = epochs, every
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def epoch_end(self, epoch, logs):
        if epoch % self.every == 0 or epoch == self.epochs:
            rate = epoch / max(time.perf_counter() - self.start, 1e-9)
            print(f"epoch {epoch}/{self.epochs}  {format_logs(logs)}  ({rate:.1f} epochs/s)",
                  file=self.stream, flush=True)

    def interrupted(self, epoch):
        print(f"interrupted during epoch {epoch}; keeping the weights of the last completed step",
              file=self.stream, flush=True)


class Bar(Silent):
    """A tqdm bar over epochs with the latest metrics as its postfix."""

    def __init__(self, epochs, tqdm):
        self.bar = tqdm(total=epochs, unit="epoch", dynamic_ncols=True, leave=True)
        self.next_refresh = 0.0

    def epoch_end(self, epoch, logs):
        self.bar.update(1)
        now = time.perf_counter()
        if now >= self.next_refresh:  # formatting every epoch would cost more than a small step
            self.bar.set_postfix_str(format_logs(logs), refresh=False)
            self.next_refresh = now + 0.2

    def interrupted(self, epoch):
        self.bar.write(f"interrupted during epoch {epoch}; keeping the weights of the last completed step")

    def close(self):
        self.bar.close()


def make_progress(verbose, epochs, steps_per_epoch, stream=None):
    if not verbose:
        return Silent()
    if verbose >= 2:
        return LogLines(epochs, 1, stream)
    stream = stream or sys.stderr
    if stream.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return Bar(epochs, tqdm)
    return LogLines(epochs, max(1, epochs // 10), stream)
