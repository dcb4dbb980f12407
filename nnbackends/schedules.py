"""Learning-rate schedules: ``schedule(step)`` is the rate of optimizer step ``step``, counted from 0.

Every optimizer takes a schedule as its ``learning_rate`` (a number is a
constant rate, ``decay=`` the shorthand for ``InverseTimeDecay``). Optimizers
evaluate the schedule on the host before each step and fused steps read the
result, so no schedule changes which path trains.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from .validation import (check_choice, check_float, check_learning_rate, check_nonnegative_float,
                         check_nonnegative_int, check_positive_int)


class Schedule:
    name: str

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def rates(self, first: int, count: int) -> np.ndarray:
        """The rates of steps ``first`` to ``first + count - 1``, as float64."""
        return np.array([self(step) for step in range(first, first + count)], dtype=np.float64)

    def config(self) -> dict:
        return {"name": self.name, **vars(self)}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class InverseTimeDecay(Schedule):
    """``learning_rate / (1 + decay * step)``: the nnfs book's rule."""

    name = "inverse_time"

    def __init__(self, learning_rate, decay):
        self.learning_rate = check_learning_rate("learning_rate", learning_rate)
        self.decay = check_nonnegative_float("decay", decay)

    def __call__(self, step):
        return self.learning_rate / (1.0 + self.decay * step)


class StepDecay(Schedule):
    """``learning_rate * gamma ** (step // step_size)`` (PyTorch's StepLR)."""

    name = "step"

    def __init__(self, learning_rate, step_size, gamma=0.1):
        self.learning_rate = check_learning_rate("learning_rate", learning_rate)
        self.step_size = check_positive_int("step_size", step_size)
        self.gamma = check_float("gamma", gamma, low=0.0, high=1.0, low_open=True, what="a number in (0, 1]")

    def __call__(self, step):
        return self.learning_rate * self.gamma ** (step // self.step_size)


class ExponentialDecay(Schedule):
    """``learning_rate * gamma ** step`` (PyTorch's ExponentialLR)."""

    name = "exponential"

    def __init__(self, learning_rate, gamma):
        self.learning_rate = check_learning_rate("learning_rate", learning_rate)
        self.gamma = check_float("gamma", gamma, low=0.0, high=1.0, low_open=True, what="a number in (0, 1]")

    def __call__(self, step):
        return self.learning_rate * self.gamma ** step


class CosineDecay(Schedule):
    """Linear warm-up from 0 over ``warmup_steps``, then half a cosine from ``learning_rate`` to
    ``final_learning_rate`` over ``decay_steps`` (PyTorch's CosineAnnealingLR), flat after."""

    name = "cosine"

    def __init__(self, learning_rate, decay_steps, final_learning_rate=0.0, warmup_steps=0):
        self.learning_rate = check_learning_rate("learning_rate", learning_rate)
        self.decay_steps = check_positive_int("decay_steps", decay_steps)
        self.final_learning_rate = check_float("final_learning_rate", final_learning_rate, low=0.0,
                                               high=self.learning_rate, what="a number in [0, learning_rate]")
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.learning_rate * step / self.warmup_steps
        t = min(step - self.warmup_steps, self.decay_steps)
        low = self.final_learning_rate
        return low + (self.learning_rate - low) * (1.0 + math.cos(math.pi * t / self.decay_steps)) / 2.0


class PiecewiseConstant(Schedule):
    """``values[i]`` from step ``boundaries[i - 1]`` (``values[0]`` before the first boundary)."""

    name = "piecewise_constant"

    def __init__(self, boundaries, values):
        self.boundaries = [check_nonnegative_int("boundaries", b) for b in boundaries]
        self.values = [check_learning_rate("values", v) for v in values]
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"PiecewiseConstant needs one more value than boundaries, got {len(self.boundaries)} "
                             f"boundaries and {len(self.values)} values.")
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"PiecewiseConstant boundaries must increase, got {self.boundaries}.")

    def __call__(self, step):
        return self.values[bisect.bisect_right(self.boundaries, step)]


class Constant(Schedule):
    """The same rate at every step (what a number as ``learning_rate`` means)."""

    name = "constant"

    def __init__(self, learning_rate):
        self.learning_rate = check_learning_rate("learning_rate", learning_rate)

    def __call__(self, step):
        return self.learning_rate

    def rates(self, first, count):
        return np.full(count, self.learning_rate)


SCHEDULES = {cls.name: cls for cls in (Constant, InverseTimeDecay, StepDecay, ExponentialDecay, CosineDecay,
                                       PiecewiseConstant)}


def schedule_from_config(config: dict) -> Schedule:
    config = dict(config)
    return SCHEDULES[check_choice("schedule", config.pop("name"), tuple(SCHEDULES))](**config)
