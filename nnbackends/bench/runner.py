"""Plans, timing (calibration, rounds, the machine's sgemm peak) and the JSON report."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..backends import get_backend, registered_backends, unavailable_reason
from ..backends.autotune import cpu_name
from .cases import (BENCH_KERNELS, KERNEL_SIZES, PEERS, PRODUCTS, QUICK_SIZES, TORCH, TORCH_INSTALL,
                    WARMUP_SECONDS, WORKLOADS, KernelCase, ProductsCase, TorchTrainCase, TrainCase,
                    data_unavailable_reason)
from .peer_check import PeerCheckFailed, TorchAlone, agreement


SCHEMA = 1


@dataclass
class Plan:
    suite: str = "all"
    backends: list[str] | None = None  # None: every registered backend and the PyTorch peer
    workloads: list[str] | None = None  # None: all; names of training workloads and kernels
    dtype: str = "float32"
    quick: bool = False
    smoke: bool = False  # tiny sizes, one round: checks the suite runs, figures mean nothing
    threads: int | None = None  # None: every library's default (as many as cores)
    peer_check: bool = True  # time PyTorch again in a process of its own, round for round (``peer_check``)

    @property
    def repeats(self):
        return 1 if self.smoke else 5 if self.quick else 11

    @property
    def min_round_s(self):
        return 0.0 if self.smoke else 0.03 if self.quick else 0.1

    @property
    def idle_s(self):
        """The pause that lets the previous pool's threads stop spinning before a block of rounds."""
        return 0.0 if self.smoke else 0.5

    def backend_names(self):
        return list(self.backends) if self.backends else [*registered_backends(), *PEERS]

    def command(self) -> str:
        """The ``nnbackends bench`` command line that runs this plan."""
        parts = ["nnbackends bench", f"--suite {self.suite}"]
        parts += [f"--backends {','.join(self.backends)}"] if self.backends else []
        parts += [f"--workloads {','.join(self.workloads)}"] if self.workloads else []
        parts += [f"--dtype {self.dtype}"] if self.dtype != "float32" else []
        parts += ["--quick"] if self.quick else []
        parts += ["--smoke"] if self.smoke else []
        parts += [f"--threads {self.threads}"] if self.threads else []
        parts += [] if self.peer_check else ["--no-peer-check"]
        return " ".join(parts)

    def wanted(self, name):
        return self.workloads is None or name in self.workloads


def torch_unavailable_reason(peer=TORCH) -> str | None:
    """None when the PyTorch ``peer`` can run here, else why not."""
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch (the peer) cannot be imported: {exc}. Install it with: {TORCH_INSTALL}"
    if PEERS[peer] == "cuda" and not torch.cuda.is_available():
        return "PyTorch finds no usable CUDA device here (torch.cuda.is_available() is False)."
    return None


def availability(names) -> dict[str, str | None]:
    """Each name -> None when it can run here, else why not."""
    return {n: torch_unavailable_reason(n) if n in PEERS else unavailable_reason(n) for n in names}


def make_groups(plan: Plan, runnable, skipped):
    """[(title, [cases])]: the cases of one piece of work, for every runnable backend (and, for a
    workload with ``products_row`` where NumPy runs, its products alone). A training workload whose
    data cannot load here goes to the list ``skipped`` as ``{"work": ..., "reason": why}``."""
    groups = []
    if plan.suite in ("train", "all"):
        for w in WORKLOADS.values():
            reason = data_unavailable_reason(w, plan.smoke) if plan.wanted(w.name) else None
            if reason:
                skipped.append({"work": f"train {w.name}", "reason": reason})
            elif plan.wanted(w.name):
                cases = [(TorchTrainCase if b in PEERS else TrainCase)(w, b, plan.dtype, plan.smoke, plan.threads)
                         for b in runnable]
                if w.products_row and "numpy" in runnable:
                    cases.append(ProductsCase(w, plan.dtype, plan.smoke, plan.threads))
                groups.append((f"train {w.name} ({w.description}, {w.size})", cases))
    if plan.suite in ("kernels", "all"):
        sizes = ("tiny",) if plan.smoke else QUICK_SIZES if plan.quick else tuple(KERNEL_SIZES)
        for kernel in BENCH_KERNELS:
            if plan.wanted(kernel):
                for size in sizes:
                    groups.append((f"kernel {kernel} {size}", [
                        KernelCase(kernel, size, b, plan.dtype) for b in runnable if b not in PEERS
                    ]))
    return groups


def calibrate(case, min_round_s) -> int:
    """How many calls make a round of about ``min_round_s`` (untimed calls, extra warm-up)."""
    number = 1
    while min_round_s > 0:
        done, elapsed = case.timed_run(number)
        if elapsed >= min_round_s / 4 or number >= 1 << 16:
            return max(1, round(done * min_round_s / max(elapsed, 1e-9)))
        number *= 4
    return number


class Rests:
    """Sleeps ``idle_s`` whenever the work moves to another thread pool, so that the pool left
    behind (OpenBLAS's, OpenMP's workers spin for a while after each call) is idle first."""

    def __init__(self, idle_s):
        self.idle_s, self.pool = idle_s, None

    def enter(self, pool):
        if pool != self.pool:
            time.sleep(self.idle_s)
            self.pool = pool


def by_pool(cases):
    """The cases grouped by thread pool (``Case.pool``), pools in the order they first appear."""
    pools = list(dict.fromkeys(c.pool for c in cases))
    return sorted(cases, key=lambda c: pools.index(c.pool))


def measure(cases, repeats, min_round_s, idle_s=0.0, alone=None) -> dict:
    """Per case the per-call times of ``repeats`` rounds.

    The cases take their rounds in turn, round k of each, then round k+1: a
    shared machine's speed drifts for seconds at a time, and taking turns lets
    that drift weigh on each of them alike, so the ratios between them hold.
    Cases on one thread pool (NumPy and Numba share OpenBLAS's) follow each
    other directly; where the next case runs on another pool, a rest of
    ``idle_s`` comes first, so that each pool's rounds start with the others
    idle. A case that ``alone`` (a ``peer_check.TorchAlone``) wants has each
    of its rounds followed by the same round there (a pool of its own).
    """
    order, rests = by_pool(cases), Rests(idle_s)
    numbers = {}
    for c in order:
        rests.enter(c.pool)
        numbers[id(c)] = calibrate(c, min_round_s)
    times = {id(c): [] for c in cases}
    for _ in range(repeats):
        for c in order:
            rests.enter(c.pool)
            done, seconds = c.timed_run(numbers[id(c)])
            times[id(c)].append(seconds / done)
            if alone is not None and alone.wants(c):
                rests.enter("alone")
                alone.round(c, done, seconds / done)
    return times


def measure_user_view(cases, repeats, idle_s=0.0) -> dict:
    """Per training case with a user view, the seconds of ``repeats`` user-view fits (in turn, as in ``measure``)."""
    order, rests = by_pool([c for c in cases if getattr(c, "user_rows", lambda: None)()]), Rests(idle_s)
    times = {id(c): [] for c in order}
    for _ in range(repeats):
        for c in order:
            rests.enter(c.pool)
            times[id(c)].append(c.user_fit())
    return times


def summarize(case, per_call, dtype, user_fits=None) -> dict:
    """The figures of one case from its per-call times (``percent_peak`` comes later)."""
    median = statistics.median(per_call)
    q = statistics.quantiles(per_call, n=4) if len(per_call) > 1 else [median] * 3
    result = {
        "suite": case.suite, "workload": case.workload, "size": case.size, "backend": case.backend,
        "dtype": dtype, "device": case.device, "rounds": len(per_call),
        "median_s": median, "min_s": min(per_call), "iqr_s": q[2] - q[0],
        "calls_per_s": 1.0 / median,
        "samples_per_s": case.samples_per_call / median if case.samples_per_call else None,
        "flops": case.cost.flops, "bytes": case.cost.bytes,
        "gflops_per_s": case.cost.flops / median / 1e9, "gbytes_per_s": case.cost.bytes / median / 1e9,
        "first_call_s": case.first_call_s,
    }
    if user_fits:
        result["user_fit_s"] = statistics.median(user_fits)
        result["user_rows"] = case.user_rows()
        result["user_samples_per_s"] = case.user_rows() / result["user_fit_s"]
    if case.suite == "train":
        result["batch_size"] = case.batch
        result["rate_unit"] = "samples/s" if case.w.batch_size else "steps/s"
    else:
        result["rate_unit"] = "calls/s"
    result["rate"] = result["samples_per_s"] if result["rate_unit"] == "samples/s" else result["calls_per_s"]
    return result


def add_ratios(results, peak):
    """``percent_peak``, ``speedup_vs_numpy``, ``speedup_vs_torch`` and ``products_share`` (from the
    rows of the same work).

    ``speedup_vs_torch`` compares with the PyTorch peer on the same kind of device
    (``torch_peer``: ``torch`` for CPU rows, ``torch-cuda`` for the others). ``products_share``:
    the share of a CPU backend's step that its matrix products alone take (the ``PRODUCTS`` row's
    median over this one's), where the work has that row; not for the PyTorch peer, whose
    products are not NumPy's. The ``PRODUCTS`` row itself is compared with nothing.
    """
    by_work = {}
    for r in results:
        by_work.setdefault((r["suite"], r["workload"], r["size"]), {})[r["backend"]] = r
    for r in results:
        r["percent_peak"] = 100.0 * r["gflops_per_s"] / peak["gflops_per_s"]
        peers = {} if r["backend"] == PRODUCTS else by_work[(r["suite"], r["workload"], r["size"])]
        r["torch_peer"] = TORCH if r["device"] == "cpu" else "torch-cuda"
        for key, peer in (("numpy", "numpy"), ("torch", r["torch_peer"])):
            other = peers.get(peer)
            r[f"speedup_vs_{key}"] = other["median_s"] / r["median_s"] if other else None
            if "user_fit_s" in r:
                r[f"user_speedup_vs_{key}"] = other["user_fit_s"] / r["user_fit_s"] \
                    if other and "user_fit_s" in other else None
        products = peers.get(PRODUCTS) if r["device"] == "cpu" and r["backend"] not in PEERS else None
        r["products_share"] = products["median_s"] / r["median_s"] if products else None
    return results


def measure_peak(quick=False, smoke=False) -> dict:
    """This machine's float32 square matrix-product rate through NumPy.

    The fastest of several rounds: the machine's capability, which load can only
    lower. ``run`` measures it before and after the cases and keeps the faster.
    """
    n = 256 if smoke else 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = a @ b  # warm-up
    times = []
    for _ in range(1 if smoke else 5 if quick else 11):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return {"sgemm_n": n, "best_s": min(times), "median_s": statistics.median(times),
            "gflops_per_s": 2 * n**3 / min(times) / 1e9}


def machine_info() -> dict:
    info = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_name(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_"))},
    }
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for p in threadpool_info()]
    except ImportError:
        pass
    return info


@contextlib.contextmanager
def thread_limit(threads):
    """Limit the BLAS/OpenMP pools loaded so far and Numba's to ``threads`` (None: no limit).

    PyTorch's pool is set by its cases. Busy shared machines give steadier
    figures with one thread: a parallel region waits for its slowest thread.
    """
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    numba = sys.modules.get("numba")
    before = numba.get_num_threads() if numba else None
    with threadpool_limits(limits=threads):
        if numba:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            if numba:
                numba.set_num_threads(before)


def run(plan: Plan, progress=None) -> dict:
    """Run ``plan``; returns the report (the JSON document) with every figure."""
    names = plan.backend_names()
    reasons = availability(names)  # creates the backends: their BLAS is loaded before the limit
    with thread_limit(plan.threads):
        return _run(plan, names, reasons, progress)


def set_up(cases, title, errors, say) -> list:
    """The cases whose ``setup`` worked; each failure goes to ``errors`` (one backend failing must
    not hide the others' figures)."""
    ready = []
    for case in cases:
        try:
            case.setup()
            ready.append(case)
        except Exception as exc:
            errors.append({"work": title, "backend": case.backend, "error": f"{type(exc).__name__}: {exc}"})
            say(f"  {case.backend} failed: {type(exc).__name__}: {exc}")
    return ready


def _run(plan, names, reasons, progress):
    say = progress or (lambda text: None)
    start = time.perf_counter()
    for name, reason in reasons.items():
        if reason:
            say(f"{name}: not available: {reason}")
    runnable = [n for n in names if not reasons[n]]
    say("measuring this machine's float32 matrix-product rate ...")
    peak = measure_peak(plan.quick, plan.smoke)
    say(f"peak: {peak['gflops_per_s']:.1f} GFLOP/s (NumPy sgemm {peak['sgemm_n']}x{peak['sgemm_n']}); "
        "measured again at the end")
    skipped = []
    groups = make_groups(plan, runnable, skipped)
    for skip in skipped:
        say(f"{skip['work']}: skipped: {skip['reason']}")
    checked = plan.peer_check and len(runnable) > 1 and any(TorchAlone.wants(c) for _, cases in groups for c in cases)
    if checked:
        say("PyTorch rounds are each followed by the same round in a process of its own (--no-peer-check: not)")
    results, errors, check = [], [], None
    with TorchAlone() if checked else contextlib.nullcontext() as alone:
        for index, (title, cases) in enumerate(groups, 1):
            say(f"[{index}/{len(groups)}] {title}: {', '.join(c.backend for c in cases)} "
                f"({time.perf_counter() - start:.0f} s)")
            ready = set_up(cases, title, errors, say)
            try:
                times = measure(ready, plan.repeats, plan.min_round_s, plan.idle_s, alone)
            except PeerCheckFailed as exc:  # the PyTorch-alone process failed: time the rest without it
                say(f"  PyTorch alone failed: {exc}; timing without it")
                check, alone = {"error": str(exc)}, None
                times = measure(ready, plan.repeats, plan.min_round_s, plan.idle_s)
            user = measure_user_view(ready, 1 if plan.smoke else 3 if plan.quick else 5, plan.idle_s)
            results += [summarize(c, times[id(c)], plan.dtype, user.get(id(c))) for c in ready]
    peak = max(peak, measure_peak(plan.quick, plan.smoke), key=lambda p: p["gflops_per_s"])
    if alone is not None:
        check = agreement(alone.pairs) or None  # None: no PyTorch round ran
    versions = {name: get_backend(name).describe() for name in runnable if name not in PEERS}
    for peer in PEERS:
        if peer in runnable:
            import torch
            versions[peer] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": PEERS[peer]}
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plan": {"command": plan.command(), "suite": plan.suite, "quick": plan.quick, "smoke": plan.smoke,
                 "dtype": plan.dtype, "threads": plan.threads, "repeats": plan.repeats,
                 "min_round_s": plan.min_round_s},
        "machine": machine_info(), "backends": versions,
        "warmup_s": {f"{b}/{d}": s for (b, d), s in WARMUP_SECONDS.items() if b in runnable},
        "unavailable": {n: r for n, r in reasons.items() if r}, "errors": errors, "skipped": skipped,
        "peak": peak, "results": add_ratios(results, peak), "torch_alone": check,
        "seconds": time.perf_counter() - start,
    }




def pytest_benchmark(benchmark, case, smoke):
    """Time ``case`` with pytest-benchmark: set up (untimed), record ``extra_info``, run rounds.

    pytest-benchmark's own figures are per round; ``extra_info`` holds the
    calls (steps) per round and the median per call. Returns the calls per round.
    """
    case.setup()
    info = benchmark.extra_info
    info.update(case.extra_info())
    number = 1 if smoke else calibrate(case, 0.05)
    done = benchmark.pedantic(case.run, args=(number,), rounds=1 if smoke else 7, iterations=1)
    info["calls_per_round"] = done
    if benchmark.stats is not None:  # None when benchmarks are disabled
        info["median_per_call_s"] = benchmark.stats.stats.median / done
    return done


