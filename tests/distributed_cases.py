"""Training cases for ``test_distributed.py``: run on every rank of ``mpiexec``, and in one process as the reference.

``mpiexec -n N python tests/distributed_cases.py OUT`` trains every case of ``CASES``
on each rank and writes ``OUT/rank{r}.npz``; ``train(case, comm=None)`` trains one
case in this process on the whole data set. All cases are float64.

A case: a network (``NETS``), a path (backend and ``fused``), an optimizer, and the
data mode: every rank passing the whole data set, or its own uneven part of it
(``sharded=True``). Extra cases: divergence caused by one rank's rows, Ctrl-C on
one rank, dropout, and a fused step that cannot sum across ranks.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnbackends import Model, TrainingDivergedError  # noqa: E402
from nnbackends.backends import register_backend, registered_backends  # noqa: E402
from nnbackends.backends.cupy_backend import CupyArrayCode  # noqa: E402
from nnbackends.errors import TrainingInterrupted  # noqa: E402
from nnbackends.layers import Dense, Dropout, Linear, ReLU, Softmax, Tanh  # noqa: E402
from nnbackends.metrics import RegressionAccuracy  # noqa: E402
from nnbackends.optimizers import SGD, Adam  # noqa: E402

if CupyArrayCode.name not in registered_backends():
    register_backend(CupyArrayCode.name, CupyArrayCode)  # the CuPy backend's array code on NumPy

#: Networks: input width, hidden widths, outputs, rows, global batch, epochs (20 or 21 steps, the last
#: batch of each epoch short), and the hidden activation. "blas" is wide enough for the Numba step's
#: BLAS pass, "loops" thin enough (with shares of 64 rows or more) for its loop pass.
NETS = {
    "blas": dict(features=8, hidden=(32, 32), outputs=4, rows=150, batch=32, epochs=4, act=ReLU),
    "loops": dict(features=2, hidden=(16,), outputs=3, rows=450, batch=200, epochs=7, act=ReLU),
    "regression": dict(features=3, hidden=(16,), outputs=2, rows=120, batch=25, epochs=4, act=Tanh),
}
OPTIMIZERS = {"adam": lambda: Adam(learning_rate=0.01, decay=1e-3),
              "momentum": lambda: SGD(learning_rate=0.1, decay=1e-3, momentum=0.9)}
#: Where the sharded cases cut the data set between ranks (fractions of the rows): uneven parts.
CUTS = {2: (0.4,), 3: (0.2, 0.7)}


def case(net, backend, fused, optimizer, sharded, **extra):
    name = "-".join([net, backend, {None: "auto", False: "layers", True: "fused"}[fused], optimizer,
                     "sharded" if sharded else "whole", *extra])
    return name, dict(net=net, backend=backend, fused=fused, optimizer=optimizer, sharded=sharded, **extra)


CASES = dict(
    [case(net, backend, fused, opt, sharded)
     for net in ("blas", "loops") for backend, fused in (("numpy", False), ("numba", False), ("numba", True))
     for opt in OPTIMIZERS for sharded in (False, True)]
    + [case("blas", "cupy-numpy", True, opt, sharded) for opt in OPTIMIZERS for sharded in (False, True)]
    + [case("regression", backend, fused, "adam", sharded)
       for backend, fused in (("numpy", False), ("numba", True)) for sharded in (False, True)]
    + [case("regression", backend, fused, "adam", True, diverge="diverge")
       for backend, fused in (("numpy", False), ("numba", True))]
    + [case("blas", "numpy", False, "adam", False, interrupt="interrupt"),
       case("blas", "numpy", False, "adam", False, dropout="dropout")]
)
#: Cases that run only distributed (no one-process reference): what they check is in ``test_distributed``.
DISTRIBUTED_ONLY = {
    "blas-numpy-layers-adam-whole-mismatch": dict(net="blas", backend="numpy", fused=False, optimizer="adam",
                                                  sharded=False, mismatch="epochs"),
}


def data(spec):
    net = NETS[spec["net"]]
    r = np.random.default_rng(7)
    X = r.standard_normal((net["rows"], net["features"]))
    if spec["net"] == "regression":
        y = np.tanh(X @ r.standard_normal((net["features"], net["outputs"])))
        if spec.get("diverge"):
            y[-3] = 1e200  # in the last rank's part: its squared error overflows
    else:
        y = r.integers(0, net["outputs"], net["rows"])
    return X, y


def build(spec):
    net = NETS[spec["net"]]
    model = Model(backend=spec["backend"], seed=3, dtype="float64")
    width = net["features"]
    for i, size in enumerate(net["hidden"]):
        model.add(Dense(width, size, weight_regularizer_l1=1e-4 * (i == 0), weight_regularizer_l2=1e-3,
                        bias_regularizer_l2=1e-3))
        model.add(net["act"]())
        if spec.get("dropout"):
            model.add(Dropout(0.2))
        width = size
    model.add(Dense(width, net["outputs"]))
    regression = spec["net"] == "regression"
    model.add(Linear() if regression else Softmax())
    # Diverging targets would overflow the precision that RegressionAccuracy learns from them.
    metric = RegressionAccuracy(0.05) if spec.get("diverge") else "accuracy"
    return model.compile(loss="mse" if regression else "categorical_crossentropy",
                         optimizer=OPTIMIZERS[spec["optimizer"]](), metrics=[metric])


def part(n, rank, size):
    """This rank's contiguous, uneven part of ``n`` rows for the sharded cases."""
    cuts = [0, *(int(n * c) for c in CUTS[size]), n]
    return slice(cuts[rank], cuts[rank + 1])


def train(spec, comm=None) -> dict:
    """Train one case; a dict of float64 arrays: weights, history, steps, where it diverged, the pass."""
    X, y = data(spec)
    if comm is not None and spec["sharded"]:
        rows = part(len(X), comm.rank, comm.size)
        X, y = X[rows], y[rows]
    model = build(spec)
    if spec.get("interrupt") and (comm is None or comm.rank == comm.size - 1):
        post_update = model.optimizer.post_update

        def interrupt_at_step_7():  # Ctrl-C reaching one rank only
            post_update()
            if model.optimizer.iterations == 7:
                os.kill(os.getpid(), signal.SIGINT)
        model.optimizer.post_update = interrupt_at_step_7
    net = NETS[spec["net"]]
    diverged, message = (0, 0), ""
    try:
        epochs = net["epochs"] + (comm.rank if spec.get("mismatch") else 0)
        history = model.fit(X, y, epochs=epochs, batch_size=net["batch"], verbose=0, fused=spec["fused"],
                            comm=comm, sharded=spec["sharded"])
    except TrainingDivergedError as exc:
        history, diverged = exc.history, (exc.epoch, exc.step)
    except TrainingInterrupted as exc:  # raised on every rank together
        history = exc.history
    except ValueError as exc:  # a DistributedError, raised on every rank
        history, message = None, f"{type(exc).__name__}: {exc}"
    fused_step = model._fused_step
    dropout = [layer.rng.random() for layer in model.layers if isinstance(layer, Dropout)]
    return {
        "weights": np.concatenate([w.ravel() for w in model.get_weights()]),
        "loss": np.array(history["loss"] if history and history.epochs else []),
        "accuracy": np.array(history["accuracy"] if history and history.epochs else []),
        "steps": np.array([history.steps if history else -1, model.optimizer.iterations]),
        "diverged": np.array(diverged),
        "interrupted": np.array([bool(history and history.interrupted)]),
        "blas": np.array([-1 if getattr(fused_step, "blas", None) is None else int(fused_step.blas)]),
        "summed_shares": np.array([len(getattr(fused_step, "shares", ()))]),  # CuPy: batch shapes summed_step ran
        "dropout_draw": np.array(dropout),
        "message": np.array(message),
    }


def main(out):
    from nnbackends.distributed import MPIComm

    comm = MPIComm()
    results = {}
    for name, spec in {**CASES, **DISTRIBUTED_ONLY}.items():
        for key, value in train(spec, comm).items():
            results[f"{name}:{key}"] = value
    results["mpi:cuda_aware"] = np.array([comm.cuda_aware])
    results["mpi:library"] = np.array(comm.MPI.Get_library_version().split("\n")[0])
    np.savez(Path(out) / f"rank{comm.rank}.npz", **results)


if __name__ == "__main__":
    main(sys.argv[1])
