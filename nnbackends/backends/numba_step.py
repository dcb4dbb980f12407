"""The Numba fused training step: one ``@njit`` call per batch.

``fused_step(model)`` runs models that ``step_plan`` admits (Dense layers
with ReLU, LeakyReLU, Sigmoid, Tanh or Linear between them, ending in Softmax
with categorical cross-entropy or Linear with MSE, trained with SGD, AdaGrad,
RMSprop or Adam);
for any other it returns None and the trainer uses the per-layer path. The step
does forward, loss, backward, regularization gradient, the finiteness check
and the optimizer update. Thin networks run ``numba_kernels.loops_step``:
blocks of samples through every layer with loop products on feature-major
buffers (every inner loop runs over samples, so it vectorizes at any layer
width); the others run ``blas_step``, a layer at a time on BLAS. Which pass a
model runs, and the loop pass's samples per block, are measured on the machine
the first time its shapes are seen (``pick_pass``, through ``autotune``);
``runs_on_blas`` and ``numba_kernels.BLOCK_COLS`` are the built-in rules used
when measuring is off (``NNBACKENDS_AUTOTUNE=0``). In a distributed fit,
``FusedStep.summed_step`` runs the same pass, sums the gradient buffer over the
ranks, then updates.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from . import autotune, numba_kernels as K
from .step_plan import step_plan

#: The built-in rule, used when measuring is off: networks whose layers' narrow sides add up to
#: at most this run the loop pass (the spiral's 2-64-3 adds 2 + 3), wider ones BLAS. On a grid
#: of 24 networks and batches of 16 to 1,024 on the 2-core AMD machine it was fitted on, the
#: pass this picks was on average 0.9% slower than the faster one, at worst 1.38x (16-32-10 at
#: batch 1,024, where loops win); a cap on the weight count, used before, was 29% slower on
#: average and 4.9x at worst (64-128-10 at batch 16).
THIN_SIDES = 12
#: Samples per block of the loop pass that ``pick_pass`` times, where the loop pass is the faster
#: (blocks that hold the whole batch are one candidate). On the 2-core AMD EPYC (Zen 4) of
#: 2026-12-07 the fastest of these was 1.1-1.5x faster than the slowest, and not the same block
#: for every network: 1,024 for 2-64-3 at batch 4,096, 512 for 8-128-4 at batch 1,024.
LOOP_BLOCKS = (256, 512, 1024, 2048)
#: Activation codes of the step by kernel name ("softmax" marks the Softmax+CCE output).
ACTIVATION_CODES = {"linear": K.LINEAR, "relu": K.RELU, "leaky_relu": K.LEAKY_RELU, "sigmoid": K.SIGMOID,
                    "tanh": K.TANH, "softmax": K.LINEAR}


def runs_on_blas(widths, batch) -> bool:
    """Whether a network of layer ``widths`` trains batches of ``batch`` rows on BLAS rather than loops.

    The loop pass wins where BLAS products are least efficient, on layers with a side
    of a few units; and it works in blocks padded to ``PAD_COLS`` samples, so smaller
    batches waste most of it.
    """
    narrow = sum(min(a, b) for a, b in zip(widths, widths[1:]))
    return bool(batch < K.PAD_COLS or narrow > THIN_SIDES)


def pick_pass(step, x, y) -> tuple[bool, int]:
    """``(blas, block)``: whether ``step`` (a ``FusedStep``) runs batches like ``x``, ``y`` on BLAS
    rather than loops, and the loop pass's samples per block.

    With measuring on, what ``autotune`` measured faster for this dtype, these widths,
    activations, output and update, and this batch size on this machine (timed once, on scratch
    copies: the model is untouched): first the pass, the loop pass in blocks of ``BLOCK_COLS``;
    then, where loops won, the block among ``LOOP_BLOCKS`` (so a wide network, where BLAS wins,
    times one slow loop pass, not several). With measuring off, ``runs_on_blas`` and
    ``BLOCK_COLS``. The one place the pass is decided.
    """
    n = x.shape[0]
    if not autotune.enabled():
        return runs_on_blas(step.widths, n), K.BLOCK_COLS
    tuner, version = autotune.tuner(), _kernels_digest()
    case = {"work": "numba fused step", "dtype": step.dtype.name,
            "widths": "-".join(map(str, step.widths)), "activations": "-".join(map(str, step.codes)),
            "output": int(step.mode), "update": int(step.opt_code), "batch": n}
    trials = {"loops": functools.partial(step.trial, False, K.BLOCK_COLS, x, y),
              "blas": functools.partial(step.trial, True, 0, x, y)}
    if tuner.choose(case, trials, version) == "blas":
        return True, 0
    blocks = {}  # one candidate per distinct buffer, named by the samples it holds
    for block in (K.BLOCK_COLS, *LOOP_BLOCKS):  # the built-in block first: it wins a tie
        blocks.setdefault(f"{_rows_held(False, block, n)} samples", block)
    if len(blocks) == 1:
        return False, K.BLOCK_COLS
    trials = {name: functools.partial(step.trial, False, block, x, y) for name, block in blocks.items()}
    return False, blocks[tuner.choose({**case, "work": "numba loop pass block"}, trials, version)]


@functools.lru_cache(maxsize=1)
def _kernels_digest() -> str:
    """A digest of ``numba_kernels``' source, the version of the passes' code: an edited kernel is
    measured again, in place of its old decisions (the package's version stays put in a checkout)."""
    with open(K.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def _rows_held(blas, block, n) -> int:
    """How many rows a pass's work buffers hold for batches of ``n`` rows (the loop pass works in blocks
    of ``block`` samples, padded to ``PAD_COLS``; its kernels read the block from the buffers)."""
    return n if blas else -(-min(n, block) // K.PAD_COLS) * K.PAD_COLS


def _work_buffers(blas, widths, size, dtype):
    """A pass's work buffers for ``size`` rows, as its kernels take them after ``widths``: sample-major
    ``(H, D, tmp)`` for BLAS; for the loops also the transposed input block and sample-major output rows."""
    work = int(widths[1:].sum()) * size
    H, D, tmp = np.empty(work, dtype), np.empty(work, dtype), np.empty(size, dtype)
    if blas:
        return H, D, tmp
    return np.empty((widths[0], size), dtype), H, D, np.empty((size, widths[-1]), dtype), tmp


#: Step code of each update kernel the step runs.
UPDATE_CODES = {"sgd_update": K.SGD, "sgd_momentum_update": K.SGD_MOMENTUM, "adagrad_update": K.ADAGRAD,
                "rmsprop_update": K.RMSPROP, "adam_update": K.ADAM}
#: Step code of each output mode of ``StepPlan``.
OUTPUT_CODES = {"softmax_cce": K.SOFTMAX_CCE, "linear_mse": K.LINEAR_MSE}


def fused_step(model):
    """A ``step(x, y) -> (data_loss, accuracy, finite)`` for ``model``, or None if it does not qualify."""
    plan = step_plan(model, updates=tuple(UPDATE_CODES))
    return None if plan is None else FusedStep(model, plan)


def _gather(arrays, dtype, spare=0):
    """One flat buffer holding copies of ``arrays`` (then ``spare`` zeros), and views of it shaped like each of them."""
    flat = np.concatenate([np.asarray(a, dtype).reshape(-1) for a in arrays] + [np.zeros(spare, dtype)])
    bounds = np.cumsum([0] + [a.size for a in arrays])
    return flat, [flat[lo:hi].reshape(a.shape) for a, lo, hi in zip(arrays, bounds[:-1], bounds[1:])]


class FusedStep:
    """The step callable: holds the work buffers, allocated once, and the parameters.

    The parameters (W0, b0, W1, b1, ...), their gradients and each optimizer state
    move into one flat buffer each, and every ``Param``'s ``value``, ``grad`` and
    ``state`` arrays become views of those (the trainer and the optimizers write
    them in place), so the step takes a few arrays and updates them in one loop.
    The gradient buffer has two slots more (``G_sums``), where ``summed_step`` puts
    a rank's share of the loss and accuracy, so that one allreduce carries all three.
    """

    def __init__(self, model, plan):
        self.model = model
        dense = [stage.dense for stage in plan]
        self.mode, self.opt_code = OUTPUT_CODES[plan.output], UPDATE_CODES[plan.update]
        self.hyper_names = plan.hyperparameters
        dtype = self.dtype = np.dtype(model.dtype)
        params = [p for d in dense for p in (d.W, d.b)]
        self.offsets = np.cumsum([0] + [p.value.size for p in params]).astype(np.int64)
        self.widths = np.array([dense[0].n_inputs] + [d.n_neurons for d in dense], dtype=np.int64)
        self.P, values = _gather([p.value for p in params], dtype)
        # The gradients, then a share's loss and accuracy: what ``summed_step`` sums over the ranks at once.
        self.G_sums, grads = _gather([np.zeros_like(p.value) for p in params], dtype, spare=2)
        self.G, self.sums = self.G_sums[:-2], self.G_sums[-2:]
        states = []
        for name in plan.state_names:
            flat, views = _gather([p.state[name] for p in params], dtype)
            states.append(flat)
            for p, v in zip(params, views):
                p.state[name] = v
        for p, value, grad in zip(params, values, grads):
            p.value, p.grad = value, grad
        unused = np.empty(0, dtype)
        self.S1 = states[0] if states else unused
        self.S2 = states[1] if len(states) > 1 else unused
        self.codes = np.array([ACTIVATION_CODES[stage.activation] for stage in plan], dtype=np.int64)
        self.alphas = np.array([stage.alpha for stage in plan], dtype=np.float64)
        self.regs = np.array([[p.l1, p.l2] for p in params], dtype=np.float64)
        self.hyper = np.zeros(4)
        self.blas = None  # which pass: chosen on the first batch, then kept (a pass compiles on first use)
        self.block = K.BLOCK_COLS  # the loop pass's samples per block, chosen with the pass
        self.capacity = 0
        self.work = None  # the chosen pass's work buffers, as its kernels take them after ``widths``

    def _buffers(self, n):
        """Work buffers for batches of ``n`` rows, for the chosen pass."""
        size = _rows_held(self.blas, self.block, n)
        if size > self.capacity:
            self.work = _work_buffers(self.blas, self.widths, size, self.dtype)
            self.capacity = size

    def _prepare(self, x, y, rows):
        """``x`` as the kernels take it, with ``hyper`` set, the pass chosen and buffers for batches of ``rows``."""
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        self._set_hyper()
        if self.blas is None:
            self.blas, self.block = pick_pass(self, x[:rows], y[:rows])
        if rows > self.capacity:
            self._buffers(rows)
        return x

    def _set_hyper(self):
        opt = self.model.optimizer
        names = self.hyper_names
        self.hyper[:len(names) + 1] = [opt.current_learning_rate, *(getattr(opt, name) for name in names)]

    def _state(self):
        """What every step kernel takes after ``x, y``, up to the work buffers."""
        return self.mode, self.P, self.G, self.S1, self.S2, self.offsets, self.widths

    def trial(self, blas, block, x, y):
        """A call of one pass's step (the loop pass in blocks of ``block`` samples) on batch ``x``, ``y``
        that changes nothing of the model: it updates scratch copies of the parameters, gradients
        and optimizer state, in its own work buffers."""
        mode, P, G, S1, S2, offsets, widths = self._state()
        state = (mode, P.copy(), G.copy(), S1.copy(), S2.copy(), offsets, widths)
        work = _work_buffers(blas, self.widths, _rows_held(blas, block, x.shape[0]), self.dtype)
        settings = self._settings()[:-1] + (self.hyper.copy(), self.model.optimizer.iterations + 1)
        return lambda: (K.blas_step if blas else K.loops_step)(x, y, *state, *work, *settings)

    def _settings(self):
        """The arguments the kernels take after the work buffers, up to ``hyper``."""
        precision = float(getattr(self.model.batch_metric, "precision", None) or 0.0)
        return self.codes, self.alphas, precision, self.regs, self.opt_code, self.hyper

    def __call__(self, x, y):
        x = self._prepare(x, y, x.shape[0])
        kernel = K.blas_step if self.blas else K.loops_step
        loss, acc, finite = kernel(x, y, *self._state(), *self.work, *self._settings(),
                                   self.model.optimizer.iterations + 1)
        return self._result(loss, acc, finite)

    def run(self, x, y, orders, batch_size, rates):
        """Steps over whole epochs in one compiled call (see ``trainer.Trainer``).

        ``orders``: each epoch's row order, shape (epochs, n), or an empty array for
        rows in order; ``rates``: the learning rate of each step. Returns ``(done,
        losses, accuracies, regularization_losses)``, one entry per step asked for:
        ``done < rates.size`` when step ``done`` was not finite (it was not applied).
        """
        x = self._prepare(x, y, batch_size)
        count = rates.size
        losses, accs, reg_losses = np.zeros(count), np.zeros(count), np.zeros(count)
        rows = batch_size if orders.size else 0
        xb, yb = np.empty((rows, *x.shape[1:]), x.dtype), np.empty((rows, *y.shape[1:]), y.dtype)
        kernel = K.blas_run if self.blas else K.loops_run
        done = kernel(x, y, orders, batch_size, rates, self.model.optimizer.iterations + 1, losses, accs,
                      reg_losses, xb, yb, *self._state(), *self.work, *self._settings())
        losses = losses.astype(self.dtype).astype(np.float64)  # as the single step reports them
        return int(done), losses, accs, reg_losses

    def summed_step(self, x, y, rows, comm):
        """The step of one rank's share ``x`` of a global batch of ``rows`` rows (``nnbackends.data_parallel``).

        The gradient pass takes means over ``rows``, so that one sum of ``G_sums`` over
        the ranks (``comm.sum_inplace``) gives every rank the batch's gradient, loss and
        accuracy; the regularization gradient, the finiteness check and the update
        (``apply_update``) then run on what is the same on every rank.
        """
        if x.shape[0]:
            x = self._prepare(x, y, x.shape[0])
            codes, alphas, precision = self._settings()[:3]
            kernel = K.blas_pass if self.blas else K.columns_pass
            self.sums[:] = kernel(x, y, self.mode, self.P, self.G, self.offsets, self.widths, *self.work,
                                  codes, alphas, precision, rows)
        else:  # an empty share adds nothing
            self._set_hyper()
            self.G_sums[:] = 0
        comm.sum_inplace(self.G_sums)
        loss, acc = float(self.sums[0]), float(self.sums[1])
        finite = np.isfinite(loss) and K.apply_update(self.P, self.G, self.S1, self.S2, self.offsets, self.regs,
                                                      self.opt_code, self.hyper, self.model.optimizer.iterations + 1)
        return self._result(loss, acc, finite)

    def _result(self, loss, acc, finite):
        return self.dtype.type(loss), (None if self.model.batch_metric is None else np.float64(acc)), bool(finite)


def warm_step(dtype):
    """Compile the step and the run for ``dtype``: both passes, labels and float targets, runs in order
    and shuffled."""
    r = np.random.default_rng(0)
    widths = np.array([4, 4, 4], dtype=np.int64)
    offsets = np.array([0, 16, 20, 36, 40], dtype=np.int64)
    P = r.standard_normal(40).astype(dtype)
    ints = np.zeros(2, np.int64)
    x = r.standard_normal((4, 4)).astype(dtype)
    settings = (ints, ints * 0.0, 0.1, np.zeros((4, 2)), K.ADAM, np.array([1e-9, 0.9, 0.999, 1e-7]))
    size = K.PAD_COLS
    passes = ((K.blas_step, K.blas_run, lambda: (np.empty(32, dtype), np.empty(32, dtype), np.empty(4, dtype))),
              (K.loops_step, K.loops_run, lambda: (np.empty((4, size), dtype), np.empty(8 * size, dtype),
                                                   np.empty(8 * size, dtype), np.empty((size, 4), dtype),
                                                   np.empty(size, dtype))))
    for mode, y in ((K.SOFTMAX_CCE, np.array([0, 1, 2, 3])), (K.LINEAR_MSE, x.copy())):
        for step, run, work in passes:
            state = (mode, P.copy(), P.copy(), P.copy(), P.copy(), offsets, widths)
            step(x, y, *state, *work(), *settings, 1)
            for orders, rows in ((np.empty((0, 0), np.int64), 0), (np.array([[3, 1, 0, 2]]), 4)):
                out = np.zeros(2), np.zeros(2), np.zeros(2)
                buffers = np.empty((rows, 4), dtype), np.empty((rows, *y.shape[1:]), y.dtype)
                run(x, y, orders, 2, np.full(2, 1e-9), 1, *out, *buffers, *state, *work(), *settings)
