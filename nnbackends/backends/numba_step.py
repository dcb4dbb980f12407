"""The Numba compiled training step: one ``@njit`` call per batch.

``compile_step(model)`` checks that the model is made of Dense layers with
ReLU, LeakyReLU, Sigmoid, Tanh or Linear between them, ends in Softmax with
categorical cross-entropy or in Linear with MSE, and trains with SGD (with or
without momentum) or Adam; otherwise it returns None and the trainer uses the
per-layer path. The step (``numba_kernels.train_step``) does forward, loss,
backward, regularization gradient, the finiteness check and the optimizer
update. Small networks run blocks of samples through every layer with loop
products on feature-major buffers (every inner loop runs over samples, so it
vectorizes at any layer width); larger ones (or any, where OpenBLAS has fast
small-matrix kernels) run a layer at a time on BLAS.
"""
from __future__ import annotations

import functools

import numpy as np

from . import numba_kernels as K

#: Networks with at most this many weights run the cache-blocked loop pass; larger ones use BLAS.
LOOP_MAX_WEIGHTS = 16_384
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


def _structure(model):
    """``(dense layers, activation codes, alphas, output mode)`` or None when the model does not qualify."""
    from ..layers import Dense, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
    from ..losses import CategoricalCrossentropy, MeanSquaredError
    from ..metrics import CategoricalAccuracy, RegressionAccuracy

    codes = {ReLU: K.RELU, LeakyReLU: K.LEAKY_RELU, Sigmoid: K.SIGMOID, Tanh: K.TANH, Linear: K.LINEAR}
    dense, acts, alphas = [], [], []
    for layer in model.layers:
        kind = type(layer)
        if kind is Dense:
            dense.append(layer)
            acts.append(K.LINEAR)
            alphas.append(0.0)
        elif kind in codes and dense and acts[-1] == K.LINEAR:
            acts[-1] = codes[kind]
            alphas[-1] = float(getattr(layer, "alpha", 0.0))
        elif kind is Softmax and dense and acts[-1] == K.LINEAR and layer is model.layers[-1]:
            acts[-1] = -1
        else:
            return None
    loss, metric = type(model.loss), type(model.metric) if model.metric is not None else None
    if acts[-1] == -1 and loss is CategoricalCrossentropy and metric in (None, CategoricalAccuracy):
        mode = K.SOFTMAX_CCE
    elif acts[-1] == K.LINEAR and loss is MeanSquaredError and metric in (None, RegressionAccuracy):
        mode = K.LINEAR_MSE
    else:
        return None
    return dense, acts, alphas, mode


def _optimizer(opt):
    """``(code, state names)`` for the optimizers the step supports, else None."""
    from ..optimizers import SGD, Adam

    if type(opt) is Adam:
        return K.ADAM, ("m", "v")
    if type(opt) is SGD:
        return (K.SGD_MOMENTUM, ("velocity",)) if opt.momentum else (K.SGD, ())
    return None


def _hyper(opt, code):
    """The optimizer's hyperparameters as the step reads them, taken at each call."""
    if code == K.ADAM:
        return (opt.current_learning_rate, opt.beta_1, opt.beta_2, opt.epsilon)
    return (opt.current_learning_rate, opt.momentum, 0.0, 0.0)


def compile_step(model):
    """A ``step(x, y) -> (data_loss, accuracy, finite)`` for ``model``, or None if it does not qualify."""
    structure = _structure(model)
    optimizer = _optimizer(model.optimizer)
    if structure is None or optimizer is None:
        return None
    return CompiledStep(model, *structure, *optimizer)


class CompiledStep:
    """The step callable: holds the model's arrays and the work buffers, allocated once."""

    def __init__(self, model, dense, acts, alphas, mode, opt_code, state_names):
        self.model = model
        self.mode, self.opt_code = mode, opt_code
        dtype = np.dtype(model.dtype)
        weights = sum(d.n_inputs * d.n_neurons for d in dense)
        self.blas = weights > LOOP_MAX_WEIGHTS or small_gemm_is_fast()
        self.Ws = tuple(d.W.value for d in dense)
        self.bs = tuple(d.b.value for d in dense)
        self.dWs = tuple(np.empty_like(w) for w in self.Ws)
        self.dbs = tuple(np.empty_like(b) for b in self.bs)
        self.codes = np.array([max(a, K.LINEAR) for a in acts], dtype=np.int64)
        self.alphas = np.array(alphas, dtype=np.float64)
        self.widths, self.dtype, self.capacity = [dense[0].n_inputs] + [d.n_neurons for d in dense], dtype, 0
        params = [p for d in dense for p in (d.W, d.b)]
        for d, dW, db in zip(dense, self.dWs, self.dbs):
            d.W.grad, d.b.grad = dW, db
        states = [tuple(p.state[s].reshape(-1) for p in params) for s in state_names]
        unused = tuple(np.empty(0, dtype) for _ in params)  # the type the step expects where a state is absent
        self.state1 = states[0] if states else unused
        self.state2 = states[1] if len(states) > 1 else unused
        self.regs = np.array([[p.l1, p.l2] for p in params], dtype=np.float64)
        self.hyper = np.zeros(4)
        self.xT = self.hs = self.ds = self.rows = self.tmp = None
        self._buffers(1)

    def _buffers(self, n):
        """Buffers for batches of ``n`` rows: sample-major for BLAS, feature-major blocks for the loops."""
        rows = n if self.blas else -(-min(n, K.BLOCK_COLS) // K.PAD_COLS) * K.PAD_COLS
        if rows > self.capacity:
            inputs, widths = self.widths[0], self.widths[1:]
            shape = (lambda w: (rows, w)) if self.blas else (lambda w: (w, rows))
            self.hs = tuple(np.empty(shape(w), self.dtype) for w in widths)
            self.ds = tuple(np.empty(shape(w), self.dtype) for w in widths)
            self.xT = np.empty((inputs, rows), self.dtype)
            self.rows = np.empty((rows, widths[-1]), self.dtype)
            self.tmp = np.empty(rows, self.dtype)
            self.capacity = rows

    def __call__(self, x, y):
        model = self.model
        opt = model.optimizer
        if x.shape[0] > self.capacity:
            self._buffers(x.shape[0])
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        metric = model.metric
        precision = float(getattr(metric, "precision", None) or 0.0)
        self.hyper[:] = _hyper(opt, self.opt_code)
        loss, acc, finite = K.train_step(
            x, y, self.mode, self.blas, self.Ws, self.bs, self.dWs, self.dbs, self.xT, self.hs, self.ds, self.rows,
            self.tmp, self.codes, self.alphas, precision, self.state1, self.state2, self.regs, self.opt_code,
            self.hyper, opt.iterations + 1)
        t = self.dtype.type
        return t(loss), (None if metric is None else np.float64(acc)), bool(finite)


def warm_step(dtype):
    """Compile the step for ``dtype``, both passes, labels and float targets, with 2 and 3 Dense layers."""
    r = np.random.default_rng(0)
    for n_dense in (2, 3):
        Ws = tuple(r.standard_normal((4, 4)).astype(dtype) for _ in range(n_dense))
        bs = tuple(np.zeros(4, dtype) for _ in range(n_dense))
        flat = tuple(np.zeros(16, dtype) for _ in range(2 * n_dense))
        ints = np.zeros(n_dense, np.int64)
        x = r.standard_normal((4, 4)).astype(dtype)
        for mode, y in ((K.SOFTMAX_CCE, np.array([0, 1, 2, 3])), (K.LINEAR_MSE, x.copy())):
            for blas in (True, False):
                shape = (4, 4) if blas else (4, K.PAD_COLS)
                hs = tuple(np.empty(shape, dtype) for _ in range(n_dense))
                K.train_step(x, y, mode, blas, Ws, bs, Ws, bs, np.empty(shape, dtype), hs, hs,
                             np.empty(shape[::-1], dtype), np.empty(shape[1], dtype), ints, ints * 0.0, 0.1,
                             flat, flat, np.zeros((2 * n_dense, 2)), K.ADAM,
                             np.array([1e-9, 0.9, 0.999, 1e-7]), 1)
