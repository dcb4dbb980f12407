"""Kernel benchmarks: dense forward/backward, each activation, softmax + cross-entropy, each optimizer."""
import pytest

from nnbackends import bench


@pytest.mark.parametrize("kernel", bench.BENCH_KERNELS)
def test_kernel(run_case, kernel, kernel_size, bench_backend):
    case = bench.KernelCase(kernel, kernel_size, bench_backend, "float32")
    done = run_case(case)
    assert done >= 1
    assert case.cost.flops > 0 and case.cost.bytes > 0
