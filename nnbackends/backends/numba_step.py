"""The Numba compiled training step: one ``@njit`` call per batch.

``compile_step(model)`` checks that the model is made of Dense layers with
ReLU, LeakyReLU, Sigmoid, Tanh or Linear between them, ends in Softmax with
categorical cross-entropy or in Linear with MSE, and trains with SGD (with or
without momentum) or Adam; otherwise it returns None and the trainer uses the
per-layer path. The step (``numba_kernels.train_step``) does forward, loss,
backward, regularization gradient, the finiteness check and the optimizer
update. Small networks run blocks of rows through every layer with loop
products, all work in cache; larger ones (or any, where OpenBLAS has fast
small-matrix kernels) run a layer at a time on BLAS.
"""
from __future__ import annotations

import functools

import numpy as np

from . import numba_kernels as K
from .step_plan import step_plan

#: Networks with at most this many weights run the cache-blocked loop pass; larger ones use BLAS.
LOOP_MAX_WEIGHTS = 16_384
#: A layer with fewer outputs than this (and than inputs) uses dot products over its inputs.
NARROW_OUTPUTS = 16
#: OpenBLAS kernel sets whose small matrix products beat the loop pass even on small networks
#: (measured on the spiral network: 25 us per step against 36 us for the loops).
FAST_SMALL_GEMM = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


@functools.lru_cache(maxsize=1)
def small_gemm_is_fast() -> bool:
    """Whether the BLAS behind ``np.dot`` in compiled code (SciPy's) runs a ``FAST_SMALL_GEMM`` kernel set.

    Decided once per process from the library's own report (threadpoolctl), so a
    run's numbers do not depend on timing noise; False when that cannot be told.
    """
    try:
        import scipy.linalg  # noqa: F401  (loads the BLAS)
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    return any(str(info.get("architecture", "")).lower() in FAST_SMALL_GEMM
               for info in threadpool_info() if "scipy" in str(info.get("filepath", "")))


#: Activation codes of the step by kernel name ("softmax" marks the Softmax+CCE output).
ACTIVATION_CODES = {"linear": K.LINEAR, "relu": K.RELU, "leaky_relu": K.LEAKY_RELU, "sigmoid": K.SIGMOID,
                    "tanh": K.TANH, "softmax": K.LINEAR}


def _optimizer(opt):
    """``(code, state names)`` of a qualifying optimizer (``step_plan`` admits SGD and Adam)."""
    if opt.name == "adam":
        return K.ADAM, ("m", "v")
    return (K.SGD_MOMENTUM, ("velocity",)) if opt.momentum else (K.SGD, ())


def _hyper(opt, code):
    """The optimizer's hyperparameters as the step reads them, taken at each call."""
    if code == K.ADAM:
        return (opt.current_learning_rate, opt.beta_1, opt.beta_2, opt.epsilon)
    return (opt.current_learning_rate, opt.momentum, 0.0, 0.0)


def compile_step(model):
    """A ``step(x, y) -> (data_loss, accuracy, finite)`` for ``model``, or None if it does not qualify."""
    plan = step_plan(model)
    if plan is None:
        return None
    dense = [stage.dense for stage in plan]
    acts = [ACTIVATION_CODES[stage.activation] for stage in plan]
    alphas = [stage.alpha for stage in plan]
    mode = K.SOFTMAX_CCE if plan[-1].activation == "softmax" else K.LINEAR_MSE
    return CompiledStep(model, dense, acts, alphas, mode, *_optimizer(model.optimizer))


class CompiledStep:
    """The step callable: holds the model's arrays and the work buffers, allocated once."""

    def __init__(self, model, dense, acts, alphas, mode, opt_code, state_names):
        self.model = model
        self.mode, self.opt_code = mode, opt_code
        dtype = np.dtype(model.dtype)
        widths = [d.n_neurons for d in dense]
        weights = sum(d.n_inputs * d.n_neurons for d in dense)
        self.blas = weights > LOOP_MAX_WEIGHTS or small_gemm_is_fast()
        self.Ws = tuple(d.W.value for d in dense)
        self.bs = tuple(d.b.value for d in dense)
        narrow = [d.n_neurons < min(NARROW_OUTPUTS, d.n_inputs) and not self.blas for d in dense]
        self.narrow = np.array(narrow)
        self.WTs = tuple(np.empty((d.n_neurons, d.n_inputs) if n else (0, 0), dtype) for d, n in zip(dense, narrow))
        self.dWTs = tuple(np.empty_like(w) for w in self.WTs)
        self.dWs = tuple(np.empty_like(w) for w in self.Ws)
        self.dbs = tuple(np.empty_like(b) for b in self.bs)
        self.codes = np.array([max(a, K.LINEAR) for a in acts], dtype=np.int64)
        self.alphas = np.array(alphas, dtype=np.float64)
        self.widths, self.dtype, self.capacity = widths, dtype, 0
        params = [p for d in dense for p in (d.W, d.b)]
        for d, dW, db in zip(dense, self.dWs, self.dbs):
            d.W.grad, d.b.grad = dW, db
        self.params = tuple(p.value.reshape(-1) for p in params)
        self.grads = tuple(p.grad.reshape(-1) for p in params)
        states = [tuple(p.state[s].reshape(-1) for p in params) for s in state_names]
        self.state1 = states[0] if states else self.grads
        self.state2 = states[1] if len(states) > 1 else self.grads
        self.regs = np.array([[p.l1, p.l2] for p in params], dtype=np.float64)
        self.hs = self.ds = self.tmp = None
        self._buffers(1)

    def _buffers(self, n):
        """Activation and gradient buffers for batches of ``n`` rows (the loop pass needs one block)."""
        rows = n if self.blas else K.BLOCK_ROWS
        if rows > self.capacity:
            self.hs = tuple(np.empty((rows, w), self.dtype) for w in self.widths)
            self.ds = tuple(np.empty((rows, w), self.dtype) for w in self.widths)
            self.tmp = np.empty(rows, self.dtype)
            self.capacity = rows

    def __call__(self, x, y):
        model = self.model
        opt = model.optimizer
        if x.shape[0] > self.capacity:
            self._buffers(x.shape[0])
        metric = model.metric
        precision = float(getattr(metric, "precision", None) or 0.0)
        loss, acc, finite = K.train_step(
            np.ascontiguousarray(x), y, self.mode, self.blas, self.Ws, self.WTs, self.bs, self.dWs, self.dWTs,
            self.dbs, self.hs, self.ds, self.tmp, self.codes, self.alphas, self.narrow, precision,
            self.params, self.grads, self.state1, self.state2, self.regs, self.opt_code,
            np.array(_hyper(opt, self.opt_code), dtype=np.float64), opt.iterations + 1)
        t = self.dtype.type
        return t(loss), (None if metric is None else np.float64(acc)), bool(finite)


def warm_step(dtype):
    """Compile the step for ``dtype``, both passes, labels and float targets, with 2 and 3 Dense layers."""
    r = np.random.default_rng(0)
    for n_dense in (2, 3):
        widths = [4] * n_dense
        Ws = tuple(r.standard_normal((4, w)).astype(dtype) for w in widths)
        bs = tuple(np.zeros(w, dtype) for w in widths)
        flat = tuple(a.reshape(-1) for pair in zip(Ws, bs) for a in pair)
        hs = tuple(np.empty((4, w), dtype) for w in widths)
        ints = np.zeros(n_dense, np.int64)
        x = r.standard_normal((4, 4)).astype(dtype)
        for mode, y in ((K.SOFTMAX_CCE, np.array([0, 1, 2, 3])), (K.LINEAR_MSE, x.copy())):
            for blas in (True, False):
                K.train_step(x, y, mode, blas, Ws, Ws, bs, Ws, Ws, bs, hs, hs, x[:, 0].copy(), ints, ints * 0.0,
                             ints.astype(bool), 0.1, flat, flat, flat, flat, np.zeros((2 * n_dense, 2)), K.ADAM,
                             np.array([1e-9, 0.9, 0.999, 1e-7]), 1)
