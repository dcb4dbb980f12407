"""History: what ``Model.fit`` returns, one entry per completed epoch."""
from __future__ import annotations


class History:
    """Per-epoch metrics: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``, ..."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epochs = 0
        self.steps = 0  # training steps completed
        self.seconds = 0.0  # wall-clock time of the training loop
        self.first_epoch_seconds = None  # includes compiling, where a backend compiles on first use
        self.interrupted = False

    @property
    def steps_per_second(self):
        """Steady-state speed: steps after the first epoch per second after it (None before a second epoch)."""
        if self.epochs < 2 or self.seconds <= self.first_epoch_seconds:
            return None
        return (self.steps - self.steps / self.epochs) / (self.seconds - self.first_epoch_seconds)

    def append(self, logs: dict):
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self.epochs += 1

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = {k: round(float(v[-1]), 6) for k, v in self.history.items()}  # no np.float64(...) under NumPy 2
        return f"History(epochs={self.epochs}, last={last})"
