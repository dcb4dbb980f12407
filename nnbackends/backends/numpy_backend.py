"""The NumPy backend: the reference every other backend is checked against."""
from __future__ import annotations

import numpy as np

from .base import KERNELS, ArrayBackend


class NumpyBackend(ArrayBackend):
    """The kernel table's array-module defaults, run on NumPy arrays."""

    name = "numpy"

    def native_kernels(self) -> list[str]:
        return list(KERNELS)

    def describe(self) -> dict:
        return {"device": "cpu", "numpy": np.__version__}
