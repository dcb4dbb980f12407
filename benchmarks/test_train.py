"""Training benchmarks: the named workloads through Model.fit, and PyTorch eager on the same work."""
import math

import numpy as np
import pytest

from nnbackends import bench


@pytest.mark.parametrize("workload", list(bench.WORKLOADS))
def test_train(run_case, smoke_mode, workload, bench_backend):
    case = (bench.TorchTrainCase if bench_backend in bench.PEERS else bench.TrainCase)(
        bench.WORKLOADS[workload], bench_backend, "float32", smoke=smoke_mode)
    steps = run_case(case)
    assert steps >= 1
    assert math.isfinite(case.last_loss), f"{workload} on {bench_backend}: loss {case.last_loss}"


@pytest.mark.parametrize("workload", [name for name, w in bench.WORKLOADS.items() if w.products_row])
def test_train_products_alone(run_case, smoke_mode, workload):
    """The step's matrix products alone, through NumPy: the ceiling of the training rows' % peak."""
    case = bench.ProductsCase(bench.WORKLOADS[workload], "float32", smoke=smoke_mode)
    assert run_case(case) >= 1
    assert all(np.isfinite(out).all() for _, _, out in case.products)
