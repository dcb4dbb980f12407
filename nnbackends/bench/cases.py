"""Named workloads and kernel cases: one piece of work on one backend or PyTorch peer."""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .. import datasets
from ..backends import get_backend
from ..layers import ACTIVATIONS, Dense, Param, Softmax
from ..model import Model
from ..optimizers import OPTIMIZERS
from .cost import Cost, dense_backward_cost, dense_forward_cost, elementwise_cost, step_cost, update_cost


TORCH = "torch"
#: PyTorch eager peers and the torch device each runs on.
PEERS = {TORCH: "cpu", "torch-cuda": "cuda"}
TORCH_INSTALL = ('pip install "nnbackends[peers]" (on Linux that is PyTorch\'s CUDA build, several GB; '
                 "for the CPU rows alone: pip install torch --index-url https://download.pytorch.org/whl/cpu)")
#: The ``torch.nn`` module of each hidden activation a workload may use.
TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}


@dataclass(frozen=True)
class Workload:
    """A named training job: data, a Dense network (hidden activation, Softmax), a batch size and an optimizer."""

    name: str
    description: str
    data: str  # key of DATA
    layers: tuple[int, ...]
    batch_size: int | None  # None: full batch
    optimizer: str
    optimizer_args: dict = field(default_factory=dict)
    hidden: str = "relu"  # key of layers.ACTIVATIONS
    user_rows: int | None = None  # rows of the user-view fit (one fit of a new model, shuffled), if timed
    products_row: bool = False  # also time the step's matrix products alone (``ProductsCase``)

    def make_optimizer(self):
        return OPTIMIZERS[self.optimizer](**self.optimizer_args)

    def build(self, backend, dtype, seed=0) -> Model:
        model = Model(backend=backend, seed=seed, dtype=dtype)
        for i, (n_in, n_out) in enumerate(zip(self.layers, self.layers[1:])):
            model.add(Dense(n_in, n_out))
            model.add(Softmax() if i == len(self.layers) - 2 else ACTIVATIONS[self.hidden]())
        return model.compile(loss="categorical_crossentropy", optimizer=self.make_optimizer())

    @property
    def size(self) -> str:
        return "-".join(map(str, self.layers)) + (f" b{self.batch_size}" if self.batch_size else " full")


WORKLOADS = {w.name: w for w in (
    Workload("spiral", "nnfs spiral data, 300 samples, full batch", "spiral", (2, 64, 3), None,
             "adam", {"learning_rate": 0.05, "decay": 5e-7}),
    Workload("spiral-tanh", "the spiral job with Tanh (a transcendental per hidden unit)", "spiral", (2, 64, 3),
             None, "adam", {"learning_rate": 0.05, "decay": 5e-7}, hidden="tanh"),
    Workload("digits", "scikit-learn digits, 1,797 samples", "digits", (64, 128, 10), 32,
             "adam", {"learning_rate": 0.001}),
    Workload("mnist-shaped", "60,000 random MNIST-shaped samples", "mnist-shaped", (784, 256, 256, 10), 128,
             "sgd", {"learning_rate": 0.01, "momentum": 0.9}, user_rows=12_800, products_row=True),
    Workload("big-batch", "the mnist-shaped job at batch 4096 (BLAS-bound)", "mnist-shaped",
             (784, 256, 256, 10), 4096, "sgd", {"learning_rate": 0.01, "momentum": 0.9}, user_rows=32_768,
             products_row=True),
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


def data_unavailable_reason(workload, smoke=False) -> str | None:
    """None when a workload's data loads here, else why not (a data set from an extra not installed)."""
    try:
        load_data(workload.data, smoke)
    except ImportError as exc:
        return str(exc)
    return None


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
    pool = "blas"  # the thread pool the work runs on: OpenBLAS's, shared by NumPy and Numba

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
                "bytes": self.cost.bytes, "backend_warmup_s": WARMUP_SECONDS.get((self.backend, self.dtype), 0.0),
                "first_call_s": self.first_call_s}


WARMUP_SECONDS: dict[tuple[str, str], float] = {}


def warm_backend(backend, dtype):
    """``backend.warmup`` once per process and dtype, its time kept in ``WARMUP_SECONDS``."""
    key = (backend.name, dtype)
    if key not in WARMUP_SECONDS:
        start = time.perf_counter()
        backend.warmup((dtype,))
        WARMUP_SECONDS[key] = time.perf_counter() - start


def _batches(steps, n, batch):
    """(rows, epochs): a round of at least ``steps`` steps over the first rows, no shuffling.

    Rows are capped at 32 batches so that validating and moving the data, done
    once per ``fit`` call, stays a small part of a round.
    """
    per_epoch = max(1, min(steps, n // batch, 32))
    return per_epoch * batch, math.ceil(steps / per_epoch)


class TrainCase(Case):
    """``Model.fit`` on a workload (the backend's fused step is used whenever it has one)."""

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

    def user_rows(self) -> int | None:
        return None if self.w.user_rows is None else min(self.w.user_rows, len(self.X))

    def user_fit(self) -> float:
        """Seconds of one ``fit`` of a new model over ``user_rows`` shuffled rows: what a user times
        (data checks, moving the data, building the step and gathering batches included)."""
        rows = self.user_rows()
        model = self.w.build(get_backend(self.backend), self.dtype, seed=1)
        start = time.perf_counter()
        model.fit(self.X[:rows], self.y[:rows], epochs=1, batch_size=self.batch, shuffle=True, verbose=0)
        return time.perf_counter() - start

    def timed_run(self, number):
        """Steps done and the time of ``fit``'s training loop (``history.seconds``): the steady
        state, without the checking and moving of the data that each ``fit`` call does once."""
        rows, epochs = _batches(number, len(self.X), self.batch)
        history = self.model.fit(self.X[:rows], self.y[:rows], epochs=epochs, batch_size=self.batch,
                                 shuffle=False, verbose=0)
        self.last_loss = history["loss"][-1]
        return history.steps, history.seconds


#: The backend column of a ``ProductsCase`` row.
PRODUCTS = "products alone"


def step_products(layers, batch, dtype, rng):
    """``[(a, b, out)]``: operands of the matrix products of one training step of a Dense network
    of ``layers`` widths on ``batch`` rows, with the layouts the fused step gives BLAS: forward
    ``x·W``, backward ``xᵀ·dy`` (the weight gradient) and ``dy·Wᵀ`` (the input gradient; none for
    the first layer, whose input is the data)."""
    def arr(*shape):
        return rng.standard_normal(shape).astype(dtype)

    products = []
    for index, (i, o) in enumerate(zip(layers, layers[1:])):
        x, W, dy = arr(batch, i), arr(i, o), arr(batch, o)
        products += [(x, W, arr(batch, o)), (x.T, dy, arr(i, o))]
        products += [(dy, W.T, arr(batch, i))] if index else []
    return products


class ProductsCase(TrainCase):
    """A workload's training step reduced to its matrix products, through NumPy's BLAS: what a
    step would cost if nothing else took time. Its figures count the whole step's FLOPs, so its
    ``% peak`` is the ceiling of a step's on this BLAS, and a step's median over this one's is
    the share of the step that its products take."""

    def __init__(self, workload: Workload, dtype, smoke=False, threads=None):
        super().__init__(workload, PRODUCTS, dtype, smoke, threads)

    def _warmup(self):
        self._load()
        self.cost = step_cost(self.w.build("numpy", self.dtype), self.batch)
        self.products = step_products(self.w.layers, self.batch, self.dtype, np.random.default_rng(0))

    def user_rows(self):
        return None  # no user view: it is not a fit

    def run(self, number):
        for _ in range(number):
            for a, b, out in self.products:
                np.matmul(a, b, out=out)
        return number

    timed_run = Case.timed_run


class TorchTrainCase(TrainCase):
    """PyTorch eager on the same network, initial weights, data, batches and optimizer."""

    timed_run = Case.timed_run  # its loop is all of run()
    pool = "torch"

    def _warmup(self):
        import torch

        self._load()
        self.device = PEERS[self.backend]
        if self.device == "cpu":
            torch.set_num_threads(self.threads or os.cpu_count() or 1)
        self.torch = torch
        self.cost = step_cost(self.w.build("numpy", self.dtype), self.batch)
        self.net, self.opt = self._new_net()
        self.lr, self.decay = self.w.optimizer_args["learning_rate"], self.w.optimizer_args.get("decay", 0.0)
        self.iterations = 0
        self.xt = torch.from_numpy(self.X.astype(self.dtype, copy=False)).to(self.device)
        self.yt = torch.from_numpy(self.y.astype(np.int64)).to(self.device)

    def _new_net(self):
        """The network and optimizer with the workload's initial weights (a fresh copy each call)."""
        torch = self.torch
        weights = self.w.build("numpy", self.dtype).get_weights()  # same seed: same initial weights
        modules = []
        for i in range(0, len(weights), 2):
            linear = torch.nn.Linear(*weights[i].shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weights[i].T.copy()))
                linear.bias.copy_(torch.from_numpy(weights[i + 1]))
            modules += [linear, getattr(torch.nn, TORCH_ACTIVATIONS[self.w.hidden])()]
        net = torch.nn.Sequential(*modules[:-1]).to(self.device, getattr(torch, self.dtype))
        args = dict(self.w.optimizer_args)
        lr = args.pop("learning_rate")
        args.pop("decay", None)
        if self.w.optimizer == "adam":
            return net, torch.optim.Adam(net.parameters(), lr=lr, eps=1e-7)
        return net, torch.optim.SGD(net.parameters(), lr=lr, **args)

    def user_fit(self) -> float:
        """A plain PyTorch loop over ``randperm`` batches of ``user_rows`` rows, timed as a user would."""
        torch, b, rows = self.torch, self.batch, self.user_rows()
        net, opt = self._new_net()
        start = time.perf_counter()
        xt = torch.from_numpy(self.X[:rows].astype(self.dtype, copy=False)).to(self.device)
        yt = torch.from_numpy(self.y[:rows].astype(np.int64)).to(self.device)
        for idx in torch.randperm(rows, device=self.device).split(b):
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        float(loss.detach())  # waits for the device
        return time.perf_counter() - start

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
BENCH_KERNELS = ("dense_forward", "dense_backward", *(a for a in ACTIVATIONS if a != "linear"),
                "softmax_cce", *(f"{o}_update" for o in KERNEL_OPTIMIZERS))


class KernelCase(Case):
    """One kernel of the table (activations: their layer's forward + backward) at one size."""

    suite = "kernels"

    def __init__(self, kernel, size, backend_name, dtype):
        if kernel not in BENCH_KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(BENCH_KERNELS)}")
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


