"""pytest-benchmark suite over every registered backend (and the PyTorch peers for training).

``pytest benchmarks/ --benchmark-only`` times every size. The normal test run
(pyproject's ``--benchmark-disable``) runs each benchmark once at its tiny size,
so the suite cannot rot without slowing the tests down.
"""
from __future__ import annotations

import pytest

from nnbackends import bench
from nnbackends.backends import autotune, registered_backends


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject's addopts disable benchmarks; asking for --benchmark-only turns them back on.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True


def smoke(config) -> bool:
    """True in the normal test run: benchmarks disabled, each runs once at a tiny size."""
    return bool(config.getoption("benchmark_disable", False)) and not config.getoption("benchmark_enable", False)


def _backend_param(name):
    return pytest.param(name, id=name, marks=[pytest.mark.gpu] if name in ("cupy", "torch-cuda") else [])


def pytest_generate_tests(metafunc):
    if "kernel_size" in metafunc.fixturenames:
        sizes = ["tiny"] if smoke(metafunc.config) else list(bench.KERNEL_SIZES)
        metafunc.parametrize("kernel_size", sizes)
    if "bench_backend" in metafunc.fixturenames:
        names = registered_backends() + (list(bench.PEERS) if "workload" in metafunc.fixturenames else [])
        metafunc.parametrize("bench_backend", [_backend_param(n) for n in names], indirect=True)


@pytest.fixture
def bench_backend(request):
    """A backend name that can run here (others skip with the reason they cannot)."""
    name = request.param
    reason = bench.availability([name])[name]
    if reason:
        pytest.skip(reason)
    return name


@pytest.fixture
def smoke_mode(request) -> bool:
    return smoke(request.config)


@pytest.fixture(scope="session", autouse=True)
def autotune_cache(request, tmp_path_factory):
    """In the normal test run, the Numba step's measured decisions go to a temporary folder, not the
    user's cache; a real benchmark run measures and caches as a user's run does."""
    if not smoke(request.config):
        yield None
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(autotune.DIR_ENV_VAR, str(tmp_path_factory.mktemp("autotune")))
        yield


@pytest.fixture
def run_case(benchmark, smoke_mode):
    """Time a bench case: warm-up untimed, ``extra_info`` filled, rounds per the mode."""
    def run(case):
        try:
            return bench.pytest_benchmark(benchmark, case, smoke_mode)
        except ImportError as exc:  # a workload's data needs an optional package
            pytest.skip(str(exc))
    return run
