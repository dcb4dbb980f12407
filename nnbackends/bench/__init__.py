"""Benchmarks: named workloads and kernels timed on every backend side by side.

A *case* is one piece of work (a training workload or a kernel at a size) on
one backend (or on a PyTorch eager peer, ``"torch"`` or ``"torch-cuda"``). Cases of the same work are
set up first (``backend.warmup()``, then a first untimed call, both timed and
reported apart), then timed in rounds, every case's round k before any case's
round k+1, so that a shared machine's drift weighs on each alike; where the
next round runs on another thread pool (NumPy and Numba share OpenBLAS's,
PyTorch has its own), a rest lets the pool left behind stop spinning first
(``runner.measure``). Each figure is the median over rounds of the time per
step (training) or per call (kernels). A BLAS-bound training workload also gets
a ``products alone`` row: its step's matrix products and nothing else
(``cases.ProductsCase``), the ceiling of a step's "% peak".

FLOPs: matrix products count exactly (2·n·i·o each, plus the bias additions);
elementwise work counts a nominal number of operations per element
(``ELEMENTWISE`` and ``UPDATES``). "% peak" is the achieved FLOP rate over a
square float32 matrix product measured with NumPy in the same run.

Modules: ``cost`` (FLOPs and bytes), ``cases`` (workloads and kernel cases), ``runner``
(plan, timing, the JSON report), ``report`` (table, comparison, plot, README section) and
``command`` (``nnbackends bench``). ``benchmarks/`` (pytest-benchmark) uses the same cases.
"""
from .cases import (BENCH_KERNELS, KERNEL_SIZES, PEERS, PRODUCTS, TORCH, WORKLOADS, KernelCase, ProductsCase,
                    TorchTrainCase, TrainCase, Workload, step_products)
from .command import add_parser
from .cost import ELEMENTWISE, UPDATES, Cost, step_cost
from .report import README_END, README_START, compare, format_seconds, format_table, plot, update_readme
from .runner import (Plan, availability, calibrate, measure_peak, pytest_benchmark, run, thread_limit,
                     torch_unavailable_reason)

__all__ = [
    "ELEMENTWISE", "BENCH_KERNELS", "KERNEL_SIZES", "PEERS", "PRODUCTS", "README_END", "README_START", "TORCH",
    "UPDATES", "WORKLOADS", "Cost", "KernelCase", "Plan", "ProductsCase", "TorchTrainCase", "TrainCase", "Workload",
    "add_parser", "availability", "calibrate", "compare", "format_seconds", "format_table", "measure_peak", "plot",
    "pytest_benchmark", "run", "step_cost", "step_products", "thread_limit", "torch_unavailable_reason",
    "update_readme",
]


def __getattr__(name):
    if name == "KERNEL_NAMES":  # the name before BENCH_KERNELS (CUDA functions are cupy_device.CUDA_FUNCTIONS)
        import warnings

        warnings.warn("nnbackends.bench.KERNEL_NAMES is deprecated; use BENCH_KERNELS.", DeprecationWarning,
                      stacklevel=2)
        return BENCH_KERNELS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
