"""Soak: 20,000 training steps must not use more memory than 2,000.

Run for real with ``pytest benchmarks/test_soak.py -o addopts="" --benchmark-only -s``
(pyproject's addopts hold ``--benchmark-disable``, under which the same check
runs at a tenth of the size).
For each backend it trains one model for N/10 and then N steps (mini-batches,
so the per-epoch History grows only a little) and reports, for each run, the
peak of Python-traced memory (tracemalloc: NumPy buffers and Python objects)
above what was live before it, and the process RSS after it (which also sees
memory that tracemalloc cannot, such as Numba's allocations).
"""
from __future__ import annotations

import gc
import resource
import tracemalloc

import pytest

import nnbackends as nb
from nnbackends.backends import registered_backends, unavailable_reason
from nnbackends.layers import Dense, ReLU, Softmax

STEPS = 20_000
BATCH = 100
SAMPLES = 10_000  # 100 steps per epoch
#: Allowed growth of the traced peak from N/10 to N steps: History's few floats per epoch, and noise.
SLACK = 128 * 1024
#: Allowed growth of the RSS (allocator noise; a leak of one small array per step exceeds it).
RSS_SLACK = 8 * 2**20


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured_fit(model, X, y, steps) -> dict:
    gc.collect()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    history = model.fit(X, y, epochs=steps * BATCH // SAMPLES, batch_size=BATCH, verbose=0)
    current, peak = tracemalloc.get_traced_memory()
    gc.collect()
    return {"steps": history.epochs * SAMPLES // BATCH, "traced_peak": peak - before,
            "traced_retained": tracemalloc.get_traced_memory()[0] - before, "rss": rss_bytes()}


@pytest.mark.parametrize("name", registered_backends())
def test_soak_memory_does_not_grow_with_steps(benchmark, name):
    reason = unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    steps = STEPS // 10 if benchmark.disabled else STEPS
    X, y = nb.datasets.classification_data(SAMPLES, 2, 3, seed=0)
    model = nb.Model(backend=name, seed=0)
    model.add(Dense(2, 64)).add(ReLU()).add(Dense(64, 3)).add(Softmax())
    model.compile(loss="categorical_crossentropy", optimizer=nb.optimizers.Adam(0.001))
    model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0)  # warm-up: compilation, caches, optimizer state

    tracemalloc.start()
    try:
        short = measured_fit(model, X, y, steps // 10)
        long = benchmark.pedantic(measured_fit, args=(model, X, y, steps), rounds=1, iterations=1)
    finally:
        tracemalloc.stop()

    figures = {f"{k}_{run['steps']}": v for run in (short, long) for k, v in run.items() if k != "steps"}
    figures["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    benchmark.extra_info.update(figures)
    print(f"\nsoak {name}: " + ", ".join(f"{k} {v / 2**20:.3f} MiB" for k, v in figures.items()))
    assert long["steps"] == steps
    assert long["traced_peak"] <= short["traced_peak"] + SLACK, figures
    assert long["traced_retained"] <= short["traced_retained"] + SLACK, figures
    assert long["rss"] <= short["rss"] + RSS_SLACK, figures
