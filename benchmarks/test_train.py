"""Training benchmarks: the named workloads through Model.fit, and PyTorch eager on the same work."""
import math

import pytest

from nnbackends import bench


@pytest.mark.parametrize("workload", list(bench.WORKLOADS))
def test_train(run_case, smoke_mode, workload, bench_backend):
    case = (bench.TorchTrainCase if bench_backend in bench.PEERS else bench.TrainCase)(
        bench.WORKLOADS[workload], bench_backend, "float32", smoke=smoke_mode)
    steps = run_case(case)
    assert steps >= 1
    assert math.isfinite(case.last_loss), f"{workload} on {bench_backend}: loss {case.last_loss}"
