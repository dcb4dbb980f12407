"""Backend registry and selection.

Precedence when a backend is chosen: an explicit name (``Model(backend=...)``,
``--backend``) > the innermost ``use_backend(...)`` block > the environment
variable ``NNBACKENDS_BACKEND`` > ``"auto"``. ``"auto"`` picks ``cupy`` when a
usable GPU is present, else ``numba`` when it imports, else ``numpy``.
A backend that cannot run here raises ``BackendUnavailableError``; nothing
ever falls back silently to another backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

from ..errors import BackendUnavailableError, UnknownBackendError
from .base import KERNELS, ArrayBackend, Backend

__all__ = [
    "KERNELS",
    "ArrayBackend",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "current_backend",
    "get_backend",
    "register_backend",
    "registered_backends",
    "resolve_backend",
    "use_backend",
]

ENV_VAR = "NNBACKENDS_BACKEND"
AUTO_ORDER = ("cupy", "numba", "numpy")
log = logging.getLogger("nnbackends")


@dataclass(frozen=True)
class _Entry:
    factory: Callable[[], Backend]
    install: str  # how to make it available, quoted in errors


_registry: dict[str, _Entry] = {}
_instances: dict[str, Backend] = {}
_failures: dict[str, BackendUnavailableError] = {}  # so a missing GPU is probed once
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("nnbackends_backend", default=None)


def register_backend(name: str, factory: Callable[[], Backend], install: str = "") -> None:
    """Register ``factory`` (a zero-argument callable returning a Backend) under ``name``.

    The factory may raise ``ImportError`` or ``BackendUnavailableError``; both
    become a ``BackendUnavailableError`` that quotes ``install``.
    """
    _registry[name] = _Entry(factory, install)
    _instances.pop(name, None)
    _failures.pop(name, None)


def _lazy(module: str, cls: str) -> Callable[[], Backend]:
    def factory():
        return getattr(importlib.import_module(module, __name__), cls)()

    return factory


register_backend("numpy", _lazy(".numpy_backend", "NumpyBackend"))
register_backend("numba", _lazy(".numba_backend", "NumbaBackend"), 'pip install "nnbackends[numba]"')
register_backend(
    "cupy",
    _lazy(".cupy_backend", "CupyBackend"),
    'pip install "nnbackends[cuda12]" (CUDA 12 driver) or "nnbackends[cuda13]" (CUDA 13), never both',
)


def registered_backends() -> list[str]:
    """Every registered backend name, runnable here or not."""
    return list(_registry)


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend instance for ``name`` (``None``: the current one; ``"auto"``: the best here)."""
    if isinstance(name, Backend):
        return name
    if name is not None and not isinstance(name, str):
        raise TypeError(f"backend must be a backend name or a Backend, got {name!r} ({type(name).__name__}).")
    name = resolve_backend(name)
    if name in _instances:
        return _instances[name]
    if name in _failures:
        raise _failures[name]
    entry = _registry[name]
    try:
        _instances[name] = entry.factory()
    except BackendUnavailableError as exc:
        _failures[name] = exc
        raise
    except ImportError as exc:
        _failures[name] = BackendUnavailableError(
            f"The {name!r} backend cannot run here: {exc}. Install it with: {entry.install}"
        )
        raise _failures[name] from exc
    return _instances[name]


def resolve_backend(name: str | None = None) -> str:
    """The concrete backend name that ``name`` stands for under the selection rules."""
    origin = ""
    if name is None:
        name = _current.get()
        if name is None and os.environ.get(ENV_VAR):
            name, origin = os.environ[ENV_VAR], f" (from the environment variable {ENV_VAR})"
    name = (name or "auto").strip().lower()
    if name == "auto":
        return _auto()
    if name not in _registry:
        valid = ", ".join(["auto", *_registry])
        fix = f"; set {ENV_VAR} to one of them or unset it" if origin else ""
        raise UnknownBackendError(f"Unknown backend {name!r}{origin}; valid names are: {valid}{fix}.")
    return name


def _auto() -> str:
    for name in AUTO_ORDER:
        if is_available(name):
            log.info("auto selected the %r backend", name)
            return name
    raise BackendUnavailableError("No backend can run here.")  # numpy always can


def is_available(name: str) -> bool:
    """Whether ``name`` can run here (creates the backend on first success)."""
    return unavailable_reason(name) is None


def unavailable_reason(name: str) -> str | None:
    """None when ``name`` can run here, else the message its creation raises."""
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def available_backends() -> list[str]:
    """The registered backends that can run on this machine."""
    return [name for name in _registry if is_available(name)]


def current_backend() -> Backend:
    """The backend that ``Model(backend=None)`` would use now."""
    return get_backend(None)


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Make ``name`` the current backend inside a ``with`` block (per thread and task)."""
    backend = get_backend(name)
    token = _current.set(backend.name)
    try:
        yield backend
    finally:
        _current.reset(token)
