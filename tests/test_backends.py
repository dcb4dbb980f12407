"""Backend registry and selection: explicit > use_backend > NNBACKENDS_BACKEND > auto.

Tests that register extra backends work on copies of the registry's tables
(``registry`` fixture), so nothing they add outlives the test.
"""
from __future__ import annotations

import threading

import pytest

import nnbackends
from nnbackends import BackendUnavailableError, Model, available_backends, get_backend, use_backend
from nnbackends import backends as registry_module
from nnbackends.backends import (
    ENV_VAR,
    current_backend,
    register_backend,
    registered_backends,
    resolve_backend,
    unavailable_reason,
)
from nnbackends.backends.numpy_backend import NumpyBackend


class Renamed(NumpyBackend):
    """A runnable stand-in backend (the NumPy kernels under another name)."""

    def __init__(self, name):
        self.name = name


def broken(message):
    def factory():
        raise BackendUnavailableError(message)

    return factory


def missing_module():
    raise ImportError("No module named 'imaginary_gpu_lib'")


@pytest.fixture
def registry(monkeypatch):
    """Private copies of the registry tables; returns ``register_backend``."""
    for table in ("_registry", "_instances", "_failures"):
        monkeypatch.setattr(registry_module, table, dict(getattr(registry_module, table)))
    return register_backend


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_use_backend_sets_and_restores(registry):
    registry("other", lambda: Renamed("other"))
    before = current_backend().name
    with use_backend("other") as be:
        assert be.name == "other"
        assert current_backend() is be
        assert Model().backend is be
    assert current_backend().name == before


def test_use_backend_restores_when_the_block_raises(registry):
    registry("other", lambda: Renamed("other"))
    before = current_backend().name
    with pytest.raises(KeyError, match="boom"):
        with use_backend("other"):
            raise KeyError("boom")
    assert current_backend().name == before


def test_use_backend_nests(registry):
    registry("a", lambda: Renamed("a"))
    registry("b", lambda: Renamed("b"))
    with use_backend("a"):
        with use_backend("b"):
            assert current_backend().name == "b"
        assert current_backend().name == "a"


def test_use_backend_is_per_thread(registry):
    registry("other", lambda: Renamed("other"))
    seen = []
    with use_backend("other"):
        worker = threading.Thread(target=lambda: seen.append(resolve_backend()))
        worker.start()
        worker.join()
    assert seen == [resolve_backend()] and seen != ["other"]


def test_environment_variable(registry, monkeypatch):
    registry("other", lambda: Renamed("other"))
    monkeypatch.setenv(ENV_VAR, "other")
    assert resolve_backend() == "other"
    assert Model().backend.name == "other"
    monkeypatch.setenv(ENV_VAR, "  NumPy ")  # case and surrounding blanks do not matter
    assert resolve_backend() == "numpy"


def test_precedence_explicit_over_context_over_env_over_auto(registry, monkeypatch):
    for name in ("by_env", "by_context", "explicit"):
        registry(name, lambda name=name: Renamed(name))
    assert resolve_backend() == resolve_backend("auto")
    monkeypatch.setenv(ENV_VAR, "by_env")
    assert resolve_backend() == "by_env"
    with use_backend("by_context"):
        assert resolve_backend() == "by_context"
        assert Model().backend.name == "by_context"
        assert Model(backend="explicit").backend.name == "explicit"
        assert resolve_backend("explicit") == "explicit"


def test_unknown_backend_lists_the_valid_names(monkeypatch):
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("tensorflow")
    message = str(info.value)
    assert "'tensorflow'" in message
    assert isinstance(info.value, ValueError)  # also a bad argument, as the API's other bad names are
    for name in ["auto", *registered_backends()]:
        assert name in message
    monkeypatch.setenv(ENV_VAR, "tensorflow")  # a bad environment value fails the same way
    with pytest.raises(BackendUnavailableError, match="'tensorflow'"):
        Model()


def test_error_is_a_runtime_error():
    assert issubclass(BackendUnavailableError, RuntimeError)
    assert nnbackends.BackendUnavailableError is BackendUnavailableError


def test_unavailable_backend_names_what_is_missing_and_the_install_command(registry):
    registry("gpu_thing", missing_module, 'pip install "nnbackends[gpu_thing]"')
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("gpu_thing")
    assert "imaginary_gpu_lib" in str(info.value)
    assert 'pip install "nnbackends[gpu_thing]"' in str(info.value)
    assert unavailable_reason("gpu_thing") == str(info.value)
    with pytest.raises(BackendUnavailableError):  # and never falls back to something else
        Model(backend="gpu_thing")


def test_available_backends(registry):
    registry("works", lambda: Renamed("works"))
    registry("no_gpu", broken("no CUDA device"))
    names = available_backends()
    assert "numpy" in names and "works" in names and "no_gpu" not in names
    assert set(names) <= set(registered_backends())
    assert unavailable_reason("no_gpu") == "no CUDA device"
    assert unavailable_reason("numpy") is None
    assert nnbackends.available_backends is available_backends


def test_auto_prefers_cupy_then_numba_then_numpy(registry):
    registry("cupy", broken("no CUDA device"))
    registry("numba", missing_module)
    assert resolve_backend("auto") == "numpy"
    registry("numba", lambda: Renamed("numba"))
    assert resolve_backend("auto") == "numba"
    registry("cupy", lambda: Renamed("cupy"))
    assert resolve_backend("auto") == "cupy"
    assert get_backend("auto").name == "cupy"


def test_get_backend_returns_one_instance_per_name():
    assert get_backend("numpy") is get_backend("numpy")
    be = get_backend("numpy")
    assert get_backend(be) is be


def test_every_backend_names_itself(backend):
    assert backend.name in available_backends()
    assert get_backend(backend.name) is backend
