"""Faults on one rank, run under ``mpiexec -n 2`` by ``test_distributed.py``: each must end the whole job.

``python tests/distributed_faults.py bad-data``: rank 1 passes a NaN to ``fit``.
``python tests/distributed_faults.py kill``: rank 1 is killed with SIGKILL during training.
``python tests/distributed_faults.py save PATH``: ``nnbackends train --distributed --save PATH``
with rank 0's write failing as on a full disk.

A rank that gets through without an error prints ``rank R finished``, which the tests must not see.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnbackends import Model  # noqa: E402
from nnbackends.distributed import MPIComm  # noqa: E402
from nnbackends.layers import Dense, ReLU, Softmax  # noqa: E402


def model():
    m = Model(backend="numpy", seed=0)
    m.add(Dense(4, 8)).add(ReLU()).add(Dense(8, 3)).add(Softmax())
    return m.compile()


def data():
    r = np.random.default_rng(0)
    return r.standard_normal((200, 4)), r.integers(0, 3, 200)


def bad_data(comm):
    X, y = data()
    if comm.rank == 1:
        X[5, 2] = np.nan
    model().fit(X, y, epochs=50, batch_size=20, verbose=0, comm=comm)


def kill(comm):
    m = model()
    post_update = m.optimizer.post_update

    def killed_at_step_5():
        post_update()
        if comm.rank == 1 and m.optimizer.iterations == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    m.optimizer.post_update = killed_at_step_5
    m.fit(*data(), epochs=50, batch_size=20, verbose=0, comm=comm)


def failed_save(comm, path):
    from nnbackends import cli, model_files

    if comm.rank == 0:
        def disk_full(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        model_files.os.replace = disk_full
    return cli.main(["train", "--distributed", "--backend", "numpy", "--epochs", "5", "--save", path, "--quiet"])


if __name__ == "__main__":
    comm = MPIComm()
    mode = sys.argv[1]
    code = {"bad-data": bad_data, "kill": kill}[mode](comm) if mode != "save" else failed_save(comm, sys.argv[2])
    if not code:
        print(f"rank {comm.rank} finished", flush=True)
    sys.exit(code)
