"""``nnbackends bench --distributed``: N ranks x 1 thread against 1 rank x N threads on the same training.

Each configuration runs in processes of its own (threads are fixed when a BLAS
library loads): ``mpiexec -n N`` with one thread per rank, and one process
without MPI with N threads. Launches alternate (A, B, A, B, ...) so that a
shared machine's drift weighs on both alike. In each, every workload trains
one warm-up epoch, then rounds of ``fit``; a round's figure is its loop time
per step (``History.seconds / steps``), and the median over all rounds is
reported. The gradient sum's share is the time rank 0 spends in
``comm.sum_inplace`` (the one allreduce of each step, including any wait for
the slower rank) over the loop time; the Ctrl-C agreement's tiny allreduce is
reported beside it.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .cases import WORKLOADS

#: The workloads compared by default: 784-256-256-10 at batch 128 and 4096.
DEFAULT_WORKLOADS = ("mnist-shaped", "big-batch")
#: Steps per epoch of the data set each workload trains on here (by batch size), and epochs per round.
STEPS_PER_EPOCH, EPOCHS = {4096: 4}, {4096: 2}


def mpiexec_path() -> str:
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError('bench --distributed needs mpiexec: pip install "nnbackends[mpi]" (mpi4py, mpich).')
    return found


def thread_env(threads) -> dict:
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    root = str(Path(__file__).resolve().parents[2])  # this checkout, ahead of any installed copy
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def launch(ranks, job) -> dict:
    """One configuration in fresh processes: ``ranks`` ranks of one thread, or one of ``-ranks`` threads."""
    command = [sys.executable, "-m", "nnbackends.bench.distributed", json.dumps(job)]
    if ranks > 1:
        command = [mpiexec_path(), "-n", str(ranks), *command]
    proc = subprocess.run(command, env=thread_env(1 if ranks > 1 else job["threads"]), capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ranks=2, backend="numba", workloads=DEFAULT_WORKLOADS, launches=3, rounds=3, dtype="float32",
        progress=print) -> dict:
    """The comparison's figures: per workload and configuration, the rounds and their medians."""
    job = {"backend": backend, "workloads": list(workloads), "rounds": rounds, "dtype": dtype, "threads": ranks}
    configs = {f"{ranks} ranks x 1 thread": ranks, f"1 rank x {ranks} threads": 1}
    rounds_of = {(w, c): {"step_s": [], "allreduce_share": [], "agree_share": []} for w in workloads for c in configs}
    for i in range(launches):
        for name, n in configs.items():
            progress(f"[{i + 1}/{launches}] {name}")
            for w, figures in launch(n, job).items():
                for key, values in figures.items():
                    rounds_of[(w, name)][key] += values
    rows = []
    for (w, name), r in rounds_of.items():
        median = statistics.median(r["step_s"])
        rows.append({"workload": w, "size": WORKLOADS[w].size, "config": name, "rounds": len(r["step_s"]),
                     "step_s": median, "min_s": min(r["step_s"]), "max_s": max(r["step_s"]),
                     **{key: statistics.median(r[key]) if r[key] else None
                        for key in ("allreduce_share", "agree_share")}})
    for row in rows:
        alone = next(o for o in rows if o["workload"] == row["workload"] and o["config"] == f"1 rank x {ranks} threads")
        row["speed_vs_one_rank"] = alone["step_s"] / row["step_s"]
    return {"backend": backend, "dtype": dtype, "ranks": ranks, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "rows": rows}


def format_table(report) -> str:
    lines = [f"{report['backend']} {report['dtype']}, fused step where it has one; CPU: {report['cpu']} "
             f"({report['cpu_count']} logical cores)",
             f"{'workload':<14} {'size':<22} {'configuration':<22} {'ms/step':>9} {'range':>15} "
             f"{'speed':>6} {'allreduce':>9} {'agree':>6}"]
    for r in report["rows"]:
        share = "" if r["allreduce_share"] is None else f"{100 * r['allreduce_share']:.1f}%"
        agree = "" if r["agree_share"] is None else f"{100 * r['agree_share']:.2f}%"
        lines.append(f"{r['workload']:<14} {r['size']:<22} {r['config']:<22} {1e3 * r['step_s']:>9.2f} "
                     f"{1e3 * r['min_s']:>7.2f}-{1e3 * r['max_s']:<7.2f} {r['speed_vs_one_rank']:>5.2f}x "
                     f"{share:>9} {agree:>6}")
    lines.append(f"medians of {report['rows'][0]['rounds']} rounds; speed: against 1 rank of the same work; "
                 "allreduce: rank 0's share of the step in the gradient sum (with any wait for the other ranks), "
                 "agree: in the Ctrl-C agreement")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


# ---------------------------------------------------------------------- the worker (one configuration)
class TimedComm:
    """A communicator that adds up the seconds spent in its gradient sums and Ctrl-C agreements."""

    def __init__(self, comm):
        self.comm, self.allreduce_s, self.agree_s = comm, 0.0, 0.0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def sum_inplace(self, buffer):
        start = time.perf_counter()
        self.comm.sum_inplace(buffer)
        self.allreduce_s += time.perf_counter() - start

    def agreed(self, flag):
        inner = self.comm.agreed(flag)

        def timed():
            start = time.perf_counter()
            value = inner()
            self.agree_s += time.perf_counter() - start
            return value
        return timed


def worker(job) -> dict | None:
    """Train each workload; rank 0 returns its rounds' figures."""
    from .. import datasets
    from ..distributed import MPIComm, launched_by_mpiexec

    comm = TimedComm(MPIComm()) if launched_by_mpiexec() else None
    figures = {}
    for name in job["workloads"]:
        w = WORKLOADS[name]
        batch = w.batch_size
        X, y = datasets.classification_data(batch * STEPS_PER_EPOCH.get(batch, 32), w.layers[0], w.layers[-1])
        model = w.build(job["backend"], job["dtype"])
        model.fit(X, y, epochs=1, batch_size=batch, verbose=0, comm=comm)  # compiles, fills caches
        rows = figures[name] = {"step_s": [], "allreduce_share": [], "agree_share": []}
        for _ in range(job["rounds"]):
            if comm is not None:
                comm.allreduce_s = comm.agree_s = 0.0
            history = model.fit(X, y, epochs=EPOCHS.get(batch, 3), batch_size=batch, verbose=0, comm=comm)
            rows["step_s"].append(history.seconds / history.steps)
            if comm is not None:
                rows["allreduce_share"].append(comm.allreduce_s / history.seconds)
                rows["agree_share"].append(comm.agree_s / history.seconds)
    return figures if comm is None or comm.is_root else None


if __name__ == "__main__":
    result = worker(json.loads(sys.argv[1]))
    if result is not None:
        print(json.dumps(result))
