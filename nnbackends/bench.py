"""Benchmarks: named workloads and kernels timed on every backend side by side.

A *case* is one piece of work (a training workload or a kernel at a size) on
one backend (or on a PyTorch eager peer, ``"torch"`` or ``"torch-cuda"``). Cases of the same work are
set up first (``backend.warmup()``, then a first untimed call, both timed and
reported apart), then timed backend after backend, each in consecutive rounds.
Backends are not interleaved round by round: NumPy's and SciPy's OpenBLAS and
PyTorch's OpenMP keep separate thread pools that spin for a while after each
call, and alternating them on a small machine made each slow down the next
(a Numba round after a PyTorch one ran up to 8 times slower here). Each figure
is the median over rounds of the time per step (training) or per call (kernels).

FLOPs: matrix products count exactly (2·n·i·o each, plus the bias additions);
elementwise work counts a nominal number of operations per element
(``ELEMENTWISE`` and ``UPDATES``). "% peak" is the achieved FLOP rate over a
square float32 matrix product measured with NumPy in the same run.

Used by ``nnbackends bench`` (``add_parser``) and by ``benchmarks/`` (pytest-benchmark).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import datasets
from .backends import get_backend, registered_backends, unavailable_reason
from .layers import ACTIVATIONS, Activation, Dense, Param, ReLU, Softmax
from .model import Model
from .optimizers import OPTIMIZERS
from .validation import check_positive_int

TORCH = "torch"
#: PyTorch eager peers and the torch device each runs on.
PEERS = {TORCH: "cpu", "torch-cuda": "cuda"}
TORCH_INSTALL = 'pip install "nnbackends[peers]"'
SCHEMA = 1


# ---------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class Cost:
    """Floating-point operations and bytes moved by one call or step."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other):
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


#: Nominal (flops, arrays of n·k touched) per element for an activation's forward + backward.
ELEMENTWISE = {
    "relu": (2, 5), "leaky_relu": (3, 5), "sigmoid": (7, 5), "tanh": (6, 5), "softmax": (8, 5),
    "linear": (0, 0),
    "softmax_cce": (7, 4),  # softmax forward, loss, fused gradient
}
#: Nominal (flops, arrays touched) per parameter element for one optimizer update.
UPDATES = {"sgd": (2, 3), "sgd_momentum": (4, 5), "adagrad": (5, 5), "rmsprop": (7, 5), "adam": (13, 7)}


def dense_forward_cost(n, i, o, itemsize) -> Cost:
    return Cost(2 * n * i * o + n * o, itemsize * (n * i + i * o + o + n * o))


def dense_backward_cost(n, i, o, itemsize, need_dx=True) -> Cost:
    """dW = xᵀ·dy, db = Σ dy and, when needed, dx = dy·Wᵀ."""
    flops = 2 * n * i * o + n * o + (2 * n * i * o if need_dx else 0)
    moved = n * i + i * o + n * o + i * o + o + (n * i if need_dx else 0)
    return Cost(flops, itemsize * moved)


def elementwise_cost(kind, elements, itemsize) -> Cost:
    flops, arrays = ELEMENTWISE[kind]
    return Cost(flops * elements, arrays * elements * itemsize)


def update_cost(optimizer, elements, itemsize) -> Cost:
    kind = optimizer.name + ("_momentum" if getattr(optimizer, "momentum", 0) else "")
    flops, arrays = UPDATES[kind]
    return Cost(flops * elements, arrays * elements * itemsize)


def step_cost(model, batch) -> Cost:
    """FLOPs and bytes of one training step of a compiled ``model`` on ``batch`` samples."""
    itemsize = np.dtype(model.dtype).itemsize
    total, width, first = Cost(), model.n_inputs, True
    for index, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            total += dense_forward_cost(batch, layer.n_inputs, layer.n_neurons, itemsize)
            total += dense_backward_cost(batch, layer.n_inputs, layer.n_neurons, itemsize, need_dx=not first)
            width, first = layer.n_neurons, False
        elif isinstance(layer, Activation):
            last = index == len(model.layers) - 1
            kind = "softmax_cce" if last and model.softmax_cce else layer.kernel
            total += elementwise_cost(kind, batch * width, itemsize)
    total += Cost(batch * width, batch * width * itemsize)  # accuracy: a row-wise argmax
    for p in model.params():
        total += update_cost(model.optimizer, p.value.size, itemsize)
    return total


# ---------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """A named training job: data, a Dense/ReLU/Softmax network, a batch size and an optimizer."""

    name: str
    description: str
    data: str  # key of DATA
    layers: tuple[int, ...]
    batch_size: int | None  # None: full batch
    optimizer: str
    optimizer_args: dict = field(default_factory=dict)

    def make_optimizer(self):
        return OPTIMIZERS[self.optimizer](**self.optimizer_args)

    def build(self, backend, dtype, seed=0) -> Model:
        model = Model(backend=backend, seed=seed, dtype=dtype)
        for i, (n_in, n_out) in enumerate(zip(self.layers, self.layers[1:])):
            model.add(Dense(n_in, n_out))
            model.add(Softmax() if i == len(self.layers) - 2 else ReLU())
        return model.compile(loss="categorical_crossentropy", optimizer=self.make_optimizer())

    @property
    def size(self) -> str:
        return "-".join(map(str, self.layers)) + (f" b{self.batch_size}" if self.batch_size else " full")


WORKLOADS = {w.name: w for w in (
    Workload("spiral", "nnfs spiral data, 300 samples, full batch", "spiral", (2, 64, 3), None,
             "adam", {"learning_rate": 0.05, "decay": 5e-7}),
    Workload("digits", "scikit-learn digits, 1,797 samples", "digits", (64, 128, 10), 32,
             "adam", {"learning_rate": 0.001}),
    Workload("mnist-shaped", "60,000 random MNIST-shaped samples", "mnist-shaped", (784, 256, 256, 10), 128,
             "sgd", {"learning_rate": 0.01, "momentum": 0.9}),
    Workload("big-batch", "the mnist-shaped job at batch 4096 (BLAS-bound)", "mnist-shaped",
             (784, 256, 256, 10), 4096, "sgd", {"learning_rate": 0.01, "momentum": 0.9}),
)}


@functools.lru_cache(maxsize=None)
def load_data(name, smoke=False):
    """Host (X, y) of a workload's data; ``smoke`` takes a small slice of the big one."""
    if name == "spiral":
        return datasets.spiral_data(10 if smoke else 100, 3)
    if name == "digits":
        return datasets.load_digits()
    if name == "mnist-shaped":
        return datasets.classification_data(4096 if smoke else 60_000, 784, 10)
    raise ValueError(f"unknown data set {name!r}")


# ---------------------------------------------------------------------------- cases
class Case:
    """One piece of work on one backend: ``setup()`` once, then ``run(number)`` repeatedly."""

    suite: str
    workload: str
    size: str
    backend: str
    dtype: str
    device = "cpu"
    samples_per_call: int | None = None
    cost = Cost()
    first_call_s = 0.0

    def setup(self):
        """Warm up: the backend's ``warmup()`` and a first call (timed apart, never in the figures)."""
        self._warmup()
        start = time.perf_counter()
        self.run(1)
        self.first_call_s = time.perf_counter() - start

    def _warmup(self):
        pass

    def run(self, number) -> int:
        """Do the work ``number`` times (at least); return how many times it was done."""
        raise NotImplementedError

    def timed_run(self, number) -> tuple[int, float]:
        """``run(number)``: how many times the work was done, and the seconds it took."""
        start = time.perf_counter()
        done = self.run(number)
        return done, time.perf_counter() - start

    def extra_info(self) -> dict:
        """What pytest-benchmark records beside its timings."""
        return {"backend": self.backend, "dtype": self.dtype, "device": self.device, "flops": self.cost.flops,
                "bytes": self.cost.bytes, "backend_warmup_s": _warmed.get((self.backend, self.dtype), 0.0),
                "first_call_s": self.first_call_s}


_warmed: dict[tuple[str, str], float] = {}


def warm_backend(backend, dtype):
    """``backend.warmup`` once per process and dtype, its time kept in ``_warmed``."""
    key = (backend.name, dtype)
    if key not in _warmed:
        start = time.perf_counter()
        backend.warmup((dtype,))
        _warmed[key] = time.perf_counter() - start


def _batches(steps, n, batch):
    """(rows, epochs): a round of at least ``steps`` steps over the first rows, no shuffling.

    Rows are capped at 32 batches so that validating and moving the data, done
    once per ``fit`` call, stays a small part of a round.
    """
    per_epoch = max(1, min(steps, n // batch, 32))
    return per_epoch * batch, math.ceil(steps / per_epoch)


class TrainCase(Case):
    """``Model.fit`` on a workload (the backend's compiled step is used whenever it has one)."""

    suite = "train"

    def __init__(self, workload: Workload, backend_name, dtype, smoke=False, threads=None):
        self.w, self.dtype, self.smoke, self.threads = workload, dtype, smoke, threads
        self.workload, self.size, self.backend = workload.name, workload.size, backend_name

    def _load(self):
        self.X, self.y = load_data(self.w.data, self.smoke)
        self.batch = self.samples_per_call = self.w.batch_size or len(self.X)

    def _warmup(self):
        self._load()
        be = get_backend(self.backend)
        self.device = str(be.describe().get("device", "cpu"))
        warm_backend(be, self.dtype)
        self.model = self.w.build(be, self.dtype)
        self.cost = step_cost(self.model, self.batch)

    def run(self, number):
        return self.timed_run(number)[0]

    def timed_run(self, number):
        """Steps done and the time of ``fit``'s training loop (``history.seconds``): the steady
        state, without the checking and moving of the data that each ``fit`` call does once."""
        rows, epochs = _batches(number, len(self.X), self.batch)
        history = self.model.fit(self.X[:rows], self.y[:rows], epochs=epochs, batch_size=self.batch,
                                 shuffle=False, verbose=0)
        self.last_loss = history["loss"][-1]
        return history.steps, history.seconds


class TorchTrainCase(TrainCase):
    """PyTorch eager on the same network, initial weights, data, batches and optimizer."""

    timed_run = Case.timed_run  # its loop is all of run()

    def _warmup(self):
        import torch

        self._load()
        self.device = PEERS[self.backend]
        if self.device == "cpu":
            torch.set_num_threads(self.threads or os.cpu_count() or 1)
        self.torch = torch
        reference = self.w.build("numpy", self.dtype)  # same seed: same initial weights
        self.cost = step_cost(reference, self.batch)
        weights = reference.get_weights()
        modules = []
        for i in range(0, len(weights), 2):
            linear = torch.nn.Linear(*weights[i].shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weights[i].T.copy()))
                linear.bias.copy_(torch.from_numpy(weights[i + 1]))
            modules += [linear, torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*modules[:-1]).to(self.device, getattr(torch, self.dtype))
        args = dict(self.w.optimizer_args)
        self.lr, self.decay = args.pop("learning_rate"), args.pop("decay", 0.0)
        if self.w.optimizer == "adam":
            self.opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, eps=1e-7)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, **args)
        self.iterations = 0
        self.xt = torch.from_numpy(self.X.astype(self.dtype, copy=False)).to(self.device)
        self.yt = torch.from_numpy(self.y.astype(np.int64)).to(self.device)

    def run(self, number):
        torch, b = self.torch, self.batch
        rows, epochs = _batches(number, len(self.X), b)
        for _ in range(epochs):
            loss_sum = acc_sum = 0.0
            for s in range(0, rows, b):
                xb, yb = self.xt[s:s + b], self.yt[s:s + b]
                if self.decay:
                    self.opt.param_groups[0]["lr"] = self.lr / (1.0 + self.decay * self.iterations)
                logits = self.net(xb)
                loss = torch.nn.functional.cross_entropy(logits, yb)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.iterations += 1
                weight = b / rows
                loss_sum = loss_sum + loss.detach() * weight
                acc_sum = acc_sum + (logits.detach().argmax(1) == yb).to(logits.dtype).mean() * weight
            self.last_loss = float(loss_sum)  # waits for the device, as the trainer's report does
            float(acc_sum)  # the trainer reports accuracy too
        return epochs * (rows // b)


#: (n samples, inputs, outputs) of each kernel size, tiny to BLAS-bound.
KERNEL_SIZES = {
    "tiny": (32, 16, 16),
    "small": (128, 64, 64),
    "medium": (128, 256, 256),
    "large": (512, 784, 256),
    "blas": (1024, 1024, 1024),
}
QUICK_SIZES = ("tiny", "medium", "blas")
#: Optimizers benchmarked as kernels, with their arguments.
KERNEL_OPTIMIZERS = {
    "sgd": {"learning_rate": 0.01, "momentum": 0.9},
    "adagrad": {"learning_rate": 0.01},
    "rmsprop": {},
    "adam": {},
}
KERNEL_NAMES = ("dense_forward", "dense_backward", *(a for a in ACTIVATIONS if a != "linear"),
                "softmax_cce", *(f"{o}_update" for o in KERNEL_OPTIMIZERS))


class KernelCase(Case):
    """One kernel of the table (activations: their layer's forward + backward) at one size."""

    suite = "kernels"

    def __init__(self, kernel, size, backend_name, dtype):
        if kernel not in KERNEL_NAMES:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNEL_NAMES)}")
        self.workload, self.size, self.backend, self.dtype = kernel, size, backend_name, dtype
        self.n, self.i, self.o = KERNEL_SIZES[size]

    def _warmup(self):
        be = self.be = get_backend(self.backend)
        self.device = str(be.describe().get("device", "cpu"))
        warm_backend(be, self.dtype)
        rng = np.random.default_rng(0)
        n, i, o, dt = self.n, self.i, self.o, self.dtype
        itemsize = np.dtype(dt).itemsize

        def arr(*shape):
            return be.asarray(rng.standard_normal(shape).astype(dt))

        kernel = self.workload
        if kernel == "dense_forward":
            x, W, b = arr(n, i), arr(i, o), arr(o)
            self.call, self.cost = (lambda: be.dense_forward(x, W, b)), dense_forward_cost(n, i, o, itemsize)
        elif kernel == "dense_backward":
            x, W, dy = arr(n, i), arr(i, o), arr(n, o)
            self.call, self.cost = (lambda: be.dense_backward(x, W, dy)), dense_backward_cost(n, i, o, itemsize)
        elif kernel == "softmax_cce":
            z, y = arr(n, o), be.asarray(rng.integers(0, o, n))

            def call():
                p = be.softmax_forward(z)
                be.cce_loss(p, y)
                be.softmax_cce_backward(p, y)
            self.call, self.cost = call, elementwise_cost("softmax_cce", n * o, itemsize)
        elif kernel.endswith("_update"):
            name = kernel[: -len("_update")]
            opt = OPTIMIZERS[name](**KERNEL_OPTIMIZERS[name])
            param = Param("W", arr(i, o))
            param.grad = be.asarray(0.01 * rng.standard_normal((i, o)).astype(dt))
            opt.build(be, [param])

            def call():
                opt.pre_update()
                opt.update(param)
                opt.post_update()
            self.call, self.cost = call, update_cost(opt, i * o, itemsize)
        else:
            layer = ACTIVATIONS[kernel]()
            layer.build(be, dt, rng, o)
            z, dy = arr(n, o), arr(n, o)

            def call():
                layer.forward(z, True)
                layer.backward(dy)
            self.call, self.cost = call, elementwise_cost(kernel, n * o, itemsize)

    def run(self, number):
        call = self.call
        for _ in range(number):
            call()
        self.be.synchronize()
        return number


# ---------------------------------------------------------------------------- plan
@dataclass
class Plan:
    suite: str = "all"
    backends: list[str] | None = None  # None: every registered backend and the PyTorch peer
    workloads: list[str] | None = None  # None: all; names of training workloads and kernels
    dtype: str = "float32"
    quick: bool = False
    smoke: bool = False  # tiny sizes, one round: checks the suite runs, figures mean nothing
    threads: int | None = None  # None: every library's default (as many as cores)

    @property
    def repeats(self):
        return 1 if self.smoke else 5 if self.quick else 11

    @property
    def min_round_s(self):
        return 0.0 if self.smoke else 0.03 if self.quick else 0.1

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


def make_groups(plan: Plan, runnable):
    """[(title, [cases])]: the cases of one piece of work, for every runnable backend."""
    groups = []
    if plan.suite in ("train", "all"):
        for w in WORKLOADS.values():
            if plan.wanted(w.name):
                groups.append((f"train {w.name} ({w.description}, {w.size})", [
                    (TorchTrainCase if b in PEERS else TrainCase)(w, b, plan.dtype, plan.smoke, plan.threads)
                    for b in runnable
                ]))
    if plan.suite in ("kernels", "all"):
        sizes = ("tiny",) if plan.smoke else QUICK_SIZES if plan.quick else tuple(KERNEL_SIZES)
        for kernel in KERNEL_NAMES:
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


def measure(cases, repeats, min_round_s) -> dict:
    """Per case the per-call times of ``repeats`` consecutive rounds, one case after another.

    Calibrating a case first also lets the previous case's spinning threads go idle.
    """
    times = {}
    for c in cases:
        number = calibrate(c, min_round_s)
        rounds = []
        for _ in range(repeats):
            done, seconds = c.timed_run(number)
            rounds.append(seconds / done)
        times[id(c)] = rounds
    return times


def summarize(case, per_call, dtype) -> dict:
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
    if case.suite == "train":
        result["batch_size"] = case.batch
        result["rate_unit"] = "samples/s" if case.w.batch_size else "steps/s"
    else:
        result["rate_unit"] = "calls/s"
    result["rate"] = result["samples_per_s"] if result["rate_unit"] == "samples/s" else result["calls_per_s"]
    return result


def add_ratios(results, peak):
    """``percent_peak``, ``speedup_vs_numpy`` and ``speedup_vs_torch`` (from the rows of the same work).

    ``speedup_vs_torch`` compares with the PyTorch peer on the same kind of device
    (``torch_peer``: ``torch`` for CPU rows, ``torch-cuda`` for the others).
    """
    by_work = {}
    for r in results:
        by_work.setdefault((r["suite"], r["workload"], r["size"]), {})[r["backend"]] = r["median_s"]
    for r in results:
        r["percent_peak"] = 100.0 * r["gflops_per_s"] / peak["gflops_per_s"]
        peers = by_work[(r["suite"], r["workload"], r["size"])]
        r["torch_peer"] = TORCH if r["device"] == "cpu" else "torch-cuda"
        for key, peer in (("numpy", "numpy"), ("torch", r["torch_peer"])):
            r[f"speedup_vs_{key}"] = peers[peer] / r["median_s"] if peer in peers else None
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
        "platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_name(),
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


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
    groups = make_groups(plan, runnable)
    results, errors = [], []
    for index, (title, cases) in enumerate(groups, 1):
        say(f"[{index}/{len(groups)}] {title}: {', '.join(c.backend for c in cases)} "
            f"({time.perf_counter() - start:.0f} s)")
        ready = []
        for case in cases:
            try:
                case.setup()
                ready.append(case)
            except Exception as exc:  # one backend failing must not hide the others' figures
                errors.append({"work": title, "backend": case.backend, "error": f"{type(exc).__name__}: {exc}"})
                say(f"  {case.backend} failed: {type(exc).__name__}: {exc}")
        times = measure(ready, plan.repeats, plan.min_round_s)
        results += [summarize(c, times[id(c)], plan.dtype) for c in ready]
    peak = max(peak, measure_peak(plan.quick, plan.smoke), key=lambda p: p["gflops_per_s"])
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
        "warmup_s": {f"{b}/{d}": s for (b, d), s in _warmed.items() if b in runnable},
        "unavailable": {n: r for n, r in reasons.items() if r}, "errors": errors,
        "peak": peak, "results": add_ratios(results, peak), "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------- reports
def _si(value, unit=""):
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def format_seconds(s) -> str:
    for factor, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= factor:
            return f"{s / factor:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def _table(header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(report) -> str:
    """The human-readable table of a report (what ``nnbackends bench`` prints)."""
    header = ["suite", "work", "size", "backend", "median", "rate", "vs numpy", "vs torch",
              "GFLOP/s", "% peak", "first call"]
    rows = [[r["suite"], r["workload"], r["size"], r["backend"], format_seconds(r["median_s"]),
             f"{_si(r['rate'])} {r['rate_unit']}", _ratio(r["speedup_vs_numpy"]), _ratio(r["speedup_vs_torch"]),
             f"{r['gflops_per_s']:.3g}", f"{r['percent_peak']:.1f}", format_seconds(r["first_call_s"])]
            for r in report["results"]]
    peak = report["peak"]
    lines = [_table(header, rows), "",
             f"peak: {peak['gflops_per_s']:.1f} GFLOP/s float32 (fastest NumPy {peak['sgemm_n']}² matmul, same run); "
             f"dtype {report['plan']['dtype']}; {report['machine']['cpu_count']} cores, "
             f"threads {report['plan']['threads'] or 'default'}; {report['created']}"]
    lines += [f"warm-up {key}: {format_seconds(s)}" for key, s in report["warmup_s"].items() if s > 1e-3]
    lines += [f"{name}: not available: {reason}" for name, reason in report["unavailable"].items()]
    lines += [f"{e['backend']} failed on {e['work']}: {e['error']}" for e in report["errors"]]
    return "\n".join(lines)


def _key(r):
    return (r["suite"], r["workload"], r["size"], r["backend"], r["dtype"])


def compare(old, new) -> str:
    """What changed between two reports: per matching row the old and new median and the ratio."""
    before = {_key(r): r for r in old["results"]}
    after = {_key(r): r for r in new["results"]}
    rows = []
    for key, r in after.items():
        if key in before:
            ratio = before[key]["median_s"] / r["median_s"]
            verdict = "faster" if ratio > 1 else "slower"
            change = f"{max(ratio, 1 / ratio):.2f}x {verdict}"
            rows.append([*key[:4], format_seconds(before[key]["median_s"]), format_seconds(r["median_s"]), change])
    text = [f"compared with the run of {old.get('created', '?')}:",
            _table(["suite", "work", "size", "backend", "old median", "new median", "change"], rows)]
    text += [f"only in the old run: {' '.join(map(str, k[:4]))}" for k in before if k not in after]
    text += [f"only in this run: {' '.join(map(str, k[:4]))}" for k in after if k not in before]
    return "\n".join(text)


def plot(report, path):
    """Speed-up against the NumPy backend versus FLOPs per call, one panel per piece of work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {}
    for r in report["results"]:
        if r["speedup_vs_numpy"] is not None:
            panel = "training workloads" if r["suite"] == "train" else r["workload"]
            panels.setdefault(panel, {}).setdefault(r["backend"], []).append((r["flops"], r["speedup_vs_numpy"]))
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (panel, series) in zip(axes.flat, panels.items()):
        for backend, points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=backend)
        ax.set(title=panel, xscale="log", yscale="log", xlabel="FLOPs per call", ylabel="speed-up vs numpy")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def update_readme(path, report):
    """Replace the text between the bench-table markers of ``path`` with this run's table."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"--update-readme: {path} has no {README_START} ... {README_END} markers.")
    env = {k: v for k, v in report["machine"]["env"].items() if k.startswith("OPENBLAS_")}
    command = report["plan"]["command"]
    block = (f"{README_START}\n`{command}` on {report['created'][:10]}, {report['machine']['cpu']} "
             f"({report['machine']['cpu_count']} cores), OpenBLAS settings {env or 'none'}:\n\n"
             f"```text\n{format_table(report)}\n```\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + block + text[end:])


# ---------------------------------------------------------------------------- pytest-benchmark
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


# ---------------------------------------------------------------------------- command line
def _names(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def add_parser(sub):
    """Add ``bench`` to the subcommands of ``nnbackends``."""
    p = sub.add_parser("bench", help="time every backend on the same workloads and kernels",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--suite", choices=("kernels", "train", "all"), default="all", help="what to time (default: all)")
    p.add_argument("--backends", default=None,
                   help="comma-separated backends; 'torch' and 'torch-cuda' for the PyTorch eager peers "
                        "(default: every registered backend and both peers)")
    p.add_argument("--workloads", default=None,
                   help=f"comma-separated subset of: {', '.join([*WORKLOADS, *KERNEL_NAMES])} (default: all of them)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float type (default: float32)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and rounds, about a minute on two cores (default: off)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the suite runs (default: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS, Numba and PyTorch (default: each library's own, as many as cores)")
    p.add_argument("--json", metavar="PATH", help="write every figure, the machine and versions as JSON (default: no file)")
    p.add_argument("--plot", metavar="PATH", help="draw speed-up against problem size, needs matplotlib (default: no plot)")
    p.add_argument("--compare", metavar="OLD.json", help="show what changed since an earlier --json run (default: no comparison)")
    p.add_argument("--update-readme", metavar="README", help="put the table between the bench-table markers of this file (default: no file)")
    p.set_defaults(run=cmd_bench)
    return p


def cmd_bench(args) -> int:
    old = None
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
    workloads = _names(args.workloads)
    unknown = [w for w in workloads or () if w not in WORKLOADS and w not in KERNEL_NAMES]
    if unknown:
        raise ValueError(f"--workloads: unknown {', '.join(unknown)}; expected names from "
                         f"{', '.join([*WORKLOADS, *KERNEL_NAMES])}.")
    if args.threads is not None:
        check_positive_int("--threads", args.threads)
    plan = Plan(args.suite, _names(args.backends), workloads, args.dtype, args.quick, args.smoke, args.threads)
    report = run(plan, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(report))
    if old is not None:
        print()
        print(compare(old, report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    if args.update_readme:
        update_readme(args.update_readme, report)
    return 0
