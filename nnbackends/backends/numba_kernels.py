"""Every ``@njit`` function of the Numba backend, including the compiled training step.

All of it lives in this one module on purpose: Numba keys a cached function on
its own source file only, so a cached caller in one file could keep a stale,
inlined copy of a callee edited in another. With callers and callees in one
file, any edit (or a Numba upgrade) invalidates them together.

Arithmetic kernels use ``FASTMATH``: reassociation (vectorized reductions),
contraction (FMA), reciprocals and signed zeros, but never ``nnan``/``ninf``,
so NaN and Inf propagate through softmax and the losses as in NumPy. Because
reassociation may cancel ``x - x``, finiteness is tested on the IEEE exponent
bits with integer arithmetic. Reductions accumulate in float64.

Matrix products go to BLAS through ``matmul_into``, which calls two symbols
declared here (their signature is compiled into the callers, so it lives with
them) and bound by ``numba_blas`` to NumPy's own OpenBLAS where it can be found.

The kernels are serial (no ``prange``): on this project's 2-core test machine a
``prange`` pool halved a 1M-element elementwise kernel but saved under 2% of a
BLAS-bound step (0.5% at batch 4096), cost time on small batches, and would
make a forked child that trains die under GNU OpenMP (the layer Numba picks
when TBB is absent) or make concurrent training threads abort under ``workqueue``.
"""
from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from nnbackends.backends import numba_blas  # absolute: a copy of this file (a cache test) imports it too

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
#: NumPy's error model: a float division by zero gives Inf or NaN as in NumPy, with no
#: ZeroDivisionError check, which would stop loops with a division from vectorizing.
JIT_OPTIONS = {"fastmath": FASTMATH, "error_model": "numpy"}
#: For exp and tanh: no reassociation, which could merge the two halves of a Cody-Waite
#: constant or of a 2**n scale (they have no reductions to vectorize).
MATH_OPTIONS = {"fastmath": FASTMATH - {"reassoc"}, "error_model": "numpy"}

#: Activation codes of the fused step.
LINEAR, RELU, LEAKY_RELU, SIGMOID, TANH = 0, 1, 2, 3, 4
#: Output codes of the fused step.
SOFTMAX_CCE, LINEAR_MSE = 0, 1
#: Optimizer codes of the fused step.
SGD, SGD_MOMENTUM, ADAGRAD, RMSPROP, ADAM = 0, 1, 2, 3, 4
#: Probability clipping of the cross-entropy losses. A copy of ``base.CLIP``, not an
#: import: a cached kernel would keep an old imported value (a test keeps them equal).
CLIP = 1e-7


def jit(fn):
    return njit(cache=True, nogil=True, **JIT_OPTIONS)(fn)


def inline(fn):
    """A helper inlined into its callers at Numba IR level (a call per row would cost more than the row)."""
    return njit(cache=True, nogil=True, inline="always", **JIT_OPTIONS)(fn)


# ====================================================================== subnormals
#: MXCSR bits of x86: flush subnormal results to zero (FTZ) and read subnormal operands as zero (DAZ).
FLUSH_SUBNORMALS = 0x8040
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _mxcsr_function(name):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    return lambda builder: cgutils.get_or_insert_function(builder.module, fnty, name)


_stmxcsr, _ldmxcsr = _mxcsr_function("llvm.x86.sse.stmxcsr"), _mxcsr_function("llvm.x86.sse.ldmxcsr")


@intrinsic
def mxcsr_read(typingctx):
    """The x86 floating-point control and status register."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.call(_stmxcsr(builder), [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return builder.load(slot)
    return types.uint32(), codegen


@intrinsic
def mxcsr_write(typingctx, value):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(args[0], slot)
        builder.call(_ldmxcsr(builder), [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return context.get_dummy_value()
    return types.void(types.uint32), codegen


if X86:
    @inline
    def subnormals_off():
        """Flush subnormals to zero until ``subnormals_restore``: returns the state to restore.

        The fused steps run so: on x86 an operation with a subnormal operand or result
        takes a slow path (tens to a hundred times slower), and a network that grows
        confident makes them (softmax probabilities below 1e-38, their gradients). The
        values lost are below the smallest normal float (1.2e-38 in float32).
        """
        saved = mxcsr_read()
        mxcsr_write(saved | np.uint32(FLUSH_SUBNORMALS))
        return saved

    @inline
    def subnormals_restore(saved):
        mxcsr_write(saved)
else:  # elsewhere the steps keep IEEE subnormals
    @inline
    def subnormals_off():
        return np.uint32(0)

    @inline
    def subnormals_restore(saved):
        pass


# ====================================================================== elementwise rows
# Row helpers work on 1-D contiguous views and are shared by the kernels and the step.
@inline
def act_forward_at(code, alpha, x, out, r, n):
    """``out[r, :n] = act(x[r, :n])`` for activation ``code`` (``out`` may be ``x``; LINEAR leaves it alone)."""
    half = x.dtype.type(0.5)
    a = x.dtype.type(alpha)
    if code == RELU:
        for i in range(n):
            out[r, i] = 0 if x[r, i] <= 0 else x[r, i]
    elif code == LEAKY_RELU:
        for i in range(n):
            out[r, i] = x[r, i] if x[r, i] > 0 else x[r, i] * a
    elif code == SIGMOID:
        for i in range(n):
            out[r, i] = half + half * tanh_vectorizable(half * x[r, i])
    elif code == TANH:
        for i in range(n):
            out[r, i] = tanh_vectorizable(x[r, i])


@inline
def act_backward_at(code, alpha, h, d, out, r, n):
    """``out[r, :n] = d[r, :n]`` times the activation's derivative (``out`` may be ``d``; LINEAR leaves it alone).

    ``h`` is the activation's output: ReLU and LeakyReLU (alpha >= 0) keep the sign of their
    input, so the output decides.
    """
    a = d.dtype.type(alpha)
    if code == RELU:
        for i in range(n):
            out[r, i] = d[r, i] * (h[r, i] > 0)
    elif code == LEAKY_RELU:
        for i in range(n):
            out[r, i] = d[r, i] if h[r, i] > 0 else d[r, i] * a
    elif code == SIGMOID:
        for i in range(n):
            out[r, i] = d[r, i] * h[r, i] * (1 - h[r, i])
    elif code == TANH:
        for i in range(n):
            out[r, i] = d[r, i] * (1 - h[r, i] * h[r, i])


# NumPy's exp and tanh are SIMD loops; a scalar libm call per element made Numba's
# sigmoid and tanh 20-40x slower than NumPy's. These have no library call, so loops vectorize.
def exp_vectorizable(x):
    """``np.exp(x)`` for float32 and float64 without a library call.

    Cody-Waite reduction ``x = n ln2 + r``, then Cephes' polynomial for ``expf``
    (float32) or rational function for ``exp`` (float64), within 2 ulp, scaled
    by 2**n in two factors so that neither overflows: results that are
    subnormal or near the largest float come out right; 0 and Inf beyond, NaN
    for NaN. Other types call ``np.exp``.
    """


def by_float_type(function, float32_impl, float64_impl, other):
    """Give the stub ``function`` its compiled implementations: one per float type, ``other`` for the rest."""
    @overload(function, jit_options=MATH_OPTIONS)
    def typed(x):
        if x == types.float32:
            return float32_impl
        if x == types.float64:
            return float64_impl
        return lambda x: other(x)


def exp32(x):  # the float32 implementation of exp_vectorizable
    t = np.float32
    xc = min(max(x, t(-104.0)), t(88.75))  # exp is 0 below and Inf above in float32
    n = np.floor(xc * t(1.44269504088896341) + t(0.5))
    r = xc - n * t(0.693359375) - n * t(-2.12194440e-4)
    p = t(1.9875691500e-4) * r + t(1.3981999507e-3)
    p = p * r + t(8.3334519073e-3)
    p = p * r + t(4.1665795894e-2)
    p = p * r + t(1.6666665459e-1)
    p = p * r + t(5.0000001201e-1)
    p = p * (r * r) + r + t(1.0)
    half = np.int32(n) >> 1
    y = p * np.int32((half + 127) << 23).view(np.float32)
    y = y * np.int32((np.int32(n) - half + 127) << 23).view(np.float32)
    return x if x != x else y


def exp64(x):  # the float64 implementation of exp_vectorizable
    xc = min(max(x, -746.0), 710.0)  # exp is 0 below and Inf above in float64
    n = np.floor(xc * 1.4426950408889634 + 0.5)
    r = xc - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
    rr = r * r
    p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1)
    q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr + 2.0
    y = 1.0 + 2.0 * p / (q - p)
    half = np.int64(n) >> 1
    y = y * np.int64((half + 1023) << 52).view(np.float64)
    y = y * np.int64((np.int64(n) - half + 1023) << 52).view(np.float64)
    return x if x != x else y


by_float_type(exp_vectorizable, exp32, exp64, np.exp)


def tanh_vectorizable(x):
    """``np.tanh(x)`` for float32 and float64 without a library call.

    Above 0.625 in magnitude ``1 - 2 / (exp(2|x|) + 1)`` with ``exp_vectorizable``
    (±1 once the exp overflows), below it Cephes' ``tanhf`` polynomial (float32) or
    ``tanh`` rational function (float64); NaN for NaN. Other types call ``np.tanh``.
    """


def tanh32(x):  # the float32 implementation of tanh_vectorizable
    t = np.float32
    ax = abs(x)
    big = t(1.0) - t(2.0) / (exp_vectorizable(t(2.0) * ax) + t(1.0))
    if x < 0:
        big = -big
    z = x * x
    p = t(-5.70498872745e-3) * z + t(2.06390887954e-2)
    p = p * z - t(5.37397155531e-2)
    p = p * z + t(1.33314422036e-1)
    p = p * z - t(3.33332819422e-1)
    small = p * z * x + x
    return small if ax < t(0.625) else big


def tanh64(x):  # the float64 implementation of tanh_vectorizable
    ax = abs(x)
    big = 1.0 - 2.0 / (exp_vectorizable(2.0 * ax) + 1.0)
    if x < 0:
        big = -big
    z = x * x
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3
    small = x + x * z * p / q
    return small if ax < 0.625 else big


by_float_type(tanh_vectorizable, tanh32, tanh64, np.tanh)


@jit
def softmax_rows(z, out, tmp):
    """Row-wise softmax of z into out (may be z, C-contiguous), shifted by the row maximum; ``tmp`` holds
    a value per row.

    Each stage runs over all rows before the next; the exponentials run over the flat
    array, so they vectorize however short the rows. 2-D indexing elsewhere: a row view
    per row would cost reference counting in hot loops.
    """
    n, k = z.shape
    for r in range(n):
        m = z[r, 0]
        for j in range(1, k):
            m = max(m, z[r, j])
        tmp[r] = m
    for r in range(n):
        for j in range(k):
            out[r, j] = z[r, j] - tmp[r]
    flat_out = out.reshape(out.size)
    for i in range(flat_out.size):
        flat_out[i] = exp_vectorizable(flat_out[i])
    for r in range(n):
        total = 0.0
        for j in range(k):
            total += out[r, j]
        tmp[r] = 1.0 / total
    for r in range(n):
        inv = tmp[r]
        for j in range(k):
            out[r, j] *= inv


@inline
def argmax_at(v, r):
    """Index of the first maximum of row ``r`` of v."""
    best = 0
    for j in range(1, v.shape[1]):
        if v[r, j] > v[r, best]:
            best = j
    return best


@inline
def flat(a):
    """A flat contiguous view of ``a`` (a copy only when ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).ravel()


@inline
def clip_probability(p):
    """``clip(p, CLIP, 1 - CLIP)`` that lets NaN through, as ``np.clip`` does."""
    return min(at_least_clip(p), 1 - CLIP)


@inline
def at_least_clip(p):
    """``maximum(p, CLIP)`` that lets NaN through, as ``np.maximum`` does."""
    if p < CLIP:
        return CLIP
    return p


# ====================================================================== matrix products
def gemm_signature(real):
    """``cblas_?gemm`` with 64-bit integers: (order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)."""
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)


GEMM = {"float32": ("nnbackends_sgemm", gemm_signature(types.float32)),
        "float64": ("nnbackends_dgemm", gemm_signature(types.float64))}
#: Which BLAS the symbols reach, in words (for ``nnbackends info``).
BLAS = numba_blas.bind(GEMM)
GEMM_FUNCTIONS = {name: types.ExternalFunction(*GEMM[name]) for name in GEMM}


def matmul_into(a, b, out, trans_a, trans_b):
    """``out = op(a) @ op(b)`` with BLAS, ``op`` transposing where its flag is set.

    Operands are C-contiguous 2-D arrays of one float type (a typing error otherwise);
    shapes that do not match raise ValueError.
    """


@overload(matmul_into, jit_options=JIT_OPTIONS)
def _matmul_into(a, b, out, trans_a, trans_b):
    arrays = (a, b, out)
    if not all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" for t in arrays):
        raise TypingError(f"matmul_into takes C-contiguous 2-D arrays, got {arrays}")
    if not (a.dtype == b.dtype == out.dtype and a.dtype.name in GEMM):
        raise TypingError(f"matmul_into takes float32 or float64 arrays of one type, got {arrays}")
    gemm, real = GEMM_FUNCTIONS[a.dtype.name], a.dtype

    def impl(a, b, out, trans_a, trans_b):
        m, n = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if (a.shape[1] if trans_a else a.shape[0]) != m or (b.shape[1] if trans_b else b.shape[0]) != k \
                or (b.shape[0] if trans_b else b.shape[1]) != n:
            raise ValueError("matmul_into: the operands' shapes do not match the output's")
        if m and n:
            gemm(np.int32(numba_blas.ROW_MAJOR), np.int32(numba_blas.TRANS if trans_a else numba_blas.NO_TRANS),
                 np.int32(numba_blas.TRANS if trans_b else numba_blas.NO_TRANS), m, n, k, real(1.0),
                 a.ctypes.data, max(1, a.shape[1]), b.ctypes.data, max(1, b.shape[1]), real(0.0),
                 out.ctypes.data, n)
    return impl


# ====================================================================== kernels: dense
@jit
def dense_forward(x, W, b):
    out = np.empty((x.shape[0], W.shape[1]), x.dtype)
    matmul_into(np.ascontiguousarray(x), np.ascontiguousarray(W), out, False, False)
    for r in range(out.shape[0]):
        row = out[r]
        for j in range(row.size):
            row[j] += b[j]
    return out


@inline
def column_sums(d, out):
    """``out = d.sum(axis=0)`` for d (n, o), accumulated in the dtype."""
    out[:] = 0
    for r in range(d.shape[0]):
        row = d[r]
        for j in range(row.size):
            out[j] += row[j]


@jit
def dense_grads(x, dy):
    """``(x.T @ dy, dy.sum(axis=0))``."""
    dy = np.ascontiguousarray(dy)
    db = np.empty(dy.shape[1], dy.dtype)
    column_sums(dy, db)
    dW = np.empty((x.shape[1], dy.shape[1]), dy.dtype)
    matmul_into(np.ascontiguousarray(x), dy, dW, True, False)
    return dW, db


@jit
def dense_input_grad(W, dy):
    dx = np.empty((dy.shape[0], W.shape[0]), dy.dtype)
    matmul_into(np.ascontiguousarray(dy), np.ascontiguousarray(W), dx, False, True)
    return dx


# ====================================================================== kernels: activations
@jit
def activation_forward(code, alpha, x):
    out = np.empty(x.shape, x.dtype)
    act_forward_at(code, alpha, flat(x).reshape(1, x.size), out.reshape(1, x.size), 0, x.size)
    return out


@jit
def activation_backward(code, alpha, h, dy):
    """Backward of an activation given what it keeps (input for ReLU-like, output otherwise)."""
    d = np.empty(dy.shape, dy.dtype)
    act_backward_at(code, alpha, flat(h).reshape(1, d.size), flat(dy).reshape(1, d.size), d.reshape(1, d.size), 0,
                    d.size)
    return d


@jit
def linear_forward(x):
    return x


@jit
def linear_backward(x, dy):
    return dy


@jit
def softmax_forward(x):
    out = np.empty(x.shape, x.dtype)
    softmax_rows(x, out, np.empty(x.shape[0], x.dtype))
    return out


@jit
def softmax_backward(y, dy):
    out = np.empty(dy.shape, dy.dtype)
    for r in range(y.shape[0]):
        yr, dr, orow = y[r], dy[r], out[r]
        s = 0.0
        for j in range(yr.size):
            s += dr[j] * yr[j]
        t = dy.dtype.type(s)
        for j in range(yr.size):
            orow[j] = yr[j] * (dr[j] - t)
    return out


# ====================================================================== kernels: losses
@jit
def cce_loss_labels(p, y):
    total = 0.0
    for r in range(p.shape[0]):
        total -= np.log(clip_probability(p[r, y[r]]))
    return total / p.shape[0]


@jit
def cce_loss_onehot(p, y):
    total = 0.0
    for r in range(p.shape[0]):
        s = 0.0
        for j in range(p.shape[1]):
            s += clip_probability(p[r, j]) * y[r, j]
        total -= np.log(s)
    return total / p.shape[0]


@jit
def cce_backward_labels(p, y):
    out = np.zeros(p.shape, p.dtype)
    n = p.shape[0]
    for r in range(n):
        out[r, y[r]] = -1 / (at_least_clip(p[r, y[r]]) * n)
    return out


@jit
def cce_backward_onehot(p, y):
    out = np.empty(p.shape, p.dtype)
    n = p.shape[0]
    for r in range(n):
        for j in range(p.shape[1]):
            out[r, j] = -y[r, j] / (at_least_clip(p[r, j]) * n)
    return out


@jit
def softmax_cce_backward_labels(p, y):
    out = p.copy()
    inv = p.dtype.type(1.0 / p.shape[0])
    for r in range(p.shape[0]):
        out[r, y[r]] -= 1
        row = out[r]
        for j in range(row.size):
            row[j] *= inv
    return out


@jit
def softmax_cce_backward_onehot(p, y):
    inv = p.dtype.type(1.0 / p.shape[0])
    return (p - y) * inv


@jit
def bce_loss(p, y):
    pf, yf = flat(p), flat(y)
    total = 0.0
    for i in range(pf.size):
        q = clip_probability(pf[i])
        total -= yf[i] * np.log(q) + (1 - yf[i]) * np.log(1 - q)
    return total / pf.size


@jit
def bce_backward(p, y):
    out = np.empty(p.shape, p.dtype)
    pf, yf, of = flat(p), flat(y), out.ravel()
    n = pf.size
    for i in range(n):
        q = clip_probability(pf[i])
        of[i] = -(yf[i] / q - (1 - yf[i]) / (1 - q)) / n
    return out


@jit
def sigmoid_bce_backward(p, y):
    out = np.empty(p.shape, p.dtype)
    pf, yf, of = flat(p), flat(y), out.ravel()
    n = pf.size
    for i in range(n):
        of[i] = (pf[i] - yf[i]) / n
    return out


@jit
def mse_loss(p, y):
    pf, yf = flat(p), flat(y)
    total = 0.0
    for i in range(pf.size):
        d = yf[i] - pf[i]
        total += d * d
    return total / pf.size


@jit
def mse_backward(p, y):
    out = np.empty(p.shape, p.dtype)
    pf, yf, of = flat(p), flat(y), out.ravel()
    scale = p.dtype.type(2.0 / pf.size)
    for i in range(pf.size):
        of[i] = (pf[i] - yf[i]) * scale
    return out


@jit
def mae_loss(p, y):
    pf, yf = flat(p), flat(y)
    total = 0.0
    for i in range(pf.size):
        total += abs(yf[i] - pf[i])
    return total / pf.size


@jit
def mae_backward(p, y):
    out = np.empty(p.shape, p.dtype)
    pf, yf, of = flat(p), flat(y), out.ravel()
    scale = p.dtype.type(pf.size)
    for i in range(pf.size):
        of[i] = np.sign(pf[i] - yf[i]) / scale
    return out


# ====================================================================== kernels: regularization, dropout
@jit
def regularization_loss(w, l1, l2):
    wf = flat(w)
    a = s = 0.0
    for i in range(wf.size):
        a += abs(wf[i])
        s += wf[i] * wf[i]
    return l1 * a + l2 * s


@jit
def regularization_backward(w, dw, l1, l2):
    """``dw += l1 * sign(w) + 2 * l2 * w`` on flat contiguous views, in place."""
    a, b = w.dtype.type(l1), w.dtype.type(2 * l2)
    for i in range(w.size):
        dw[i] += a * np.sign(w[i]) + b * w[i]


@jit
def dropout_scale(u, rate, out):
    """``out = (u >= rate) / (1 - rate)`` for uniform draws ``u`` (flat views)."""
    keep = out.dtype.type(1.0 / (1.0 - rate))
    for i in range(u.size):
        out[i] = keep if u[i] >= rate else 0


@jit
def multiply(a, b):
    out = np.empty(a.shape, a.dtype)
    af, bf, of = flat(a), flat(b), out.ravel()
    for i in range(of.size):
        of[i] = af[i] * bf[i]
    return out


# ====================================================================== kernels: optimizers
# Flat contiguous views, updated in place; shared with the fused step.
@jit
def sgd_update(param, grad, lr):
    step = param.dtype.type(lr)
    for i in range(param.size):
        param[i] -= step * grad[i]


@jit
def sgd_momentum_update(param, grad, velocity, lr, momentum):
    step, mom = param.dtype.type(lr), param.dtype.type(momentum)
    for i in range(param.size):
        v = mom * velocity[i] - step * grad[i]
        velocity[i] = v
        param[i] += v


@jit
def adagrad_update(param, grad, cache, lr, epsilon):
    step, eps = param.dtype.type(lr), param.dtype.type(epsilon)
    for i in range(param.size):
        c = cache[i] + grad[i] * grad[i]
        cache[i] = c
        param[i] -= step * grad[i] / (np.sqrt(c) + eps)


@jit
def rmsprop_update(param, grad, cache, lr, rho, epsilon):
    t = param.dtype.type
    step, r, r1, eps = t(lr), t(rho), t(1 - rho), t(epsilon)
    for i in range(param.size):
        c = r * cache[i] + r1 * grad[i] * grad[i]
        cache[i] = c
        param[i] -= step * grad[i] / (np.sqrt(c) + eps)


@jit
def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
    t = param.dtype.type
    b1, b1c, b2, b2c, eps, rate = t(beta_1), t(1 - beta_1), t(beta_2), t(1 - beta_2), t(epsilon), t(lr)
    m_scale, v_scale = t(1 / (1 - beta_1**step)), t(1 / (1 - beta_2**step))
    for i in range(param.size):
        g = grad[i]
        mi = b1 * m[i] + b1c * g
        vi = b2 * v[i] + b2c * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= rate * (mi * m_scale) / (np.sqrt(vi * v_scale) + eps)


# ====================================================================== kernels: metrics
@jit
def argmax(x):
    out = np.empty(x.shape[0], np.int64)
    for r in range(x.shape[0]):
        out[r] = argmax_at(x, r)
    return out


@jit
def categorical_accuracy_labels(p, y):
    hits = 0
    for r in range(p.shape[0]):
        hits += argmax_at(p, r) == y[r]
    return hits / p.shape[0]


@jit
def categorical_accuracy_onehot(p, y):
    hits = 0
    for r in range(p.shape[0]):
        hits += argmax_at(p, r) == argmax_at(y, r)
    return hits / p.shape[0]


@jit
def binary_accuracy(p, y):
    pf, yf = flat(p), flat(y)
    hits = 0
    for i in range(pf.size):
        hits += (pf[i] > 0.5) == (yf[i] > 0.5)
    return hits / pf.size


@jit
def regression_accuracy(p, y, precision):
    pf, yf = flat(p), flat(y)
    hits = 0
    for i in range(pf.size):
        hits += abs(pf[i] - yf[i]) < precision
    return hits / pf.size


@njit(cache=True, nogil=True)
def finite_bits(bits, exponent):
    """No element has every exponent bit set (the IEEE pattern of Inf and NaN)."""
    bad = False
    for i in range(bits.size):
        bad = bad | ((bits[i] & exponent) == exponent)
    return not bad


@njit(cache=True, nogil=True)
def all_finite(a):
    """Whether the flat contiguous view ``a`` holds no NaN or Inf (integer tests: no fast-math folding)."""
    if a.itemsize == 4:
        return finite_bits(a.view(np.uint32), np.uint32(0x7F800000))
    return finite_bits(a.view(np.uint64), np.uint64(0x7FF0000000000000))


# ====================================================================== fused step
#: Samples per block in the small-network (feature-major) pass.
BLOCK_COLS = 512
#: Block widths are padded to a multiple of this (a power of two dividing BLOCK_COLS):
#: 4 AVX-512 float32 vectors, the unrolled width of the vectorized loops.
PAD_COLS = 64


def output_block(mode, z, y, start, scale, precision, tmp):
    """Loss of the output rows ``z`` against targets ``y[start:]``; writes dLoss/dz into ``z``.

    Returns ``(summed loss, summed accuracy count)`` over the block's rows; ``tmp``
    is a scratch row buffer.
    """


@overload(output_block, jit_options=JIT_OPTIONS)
def _output_block(mode, z, y, start, scale, precision, tmp):
    if y.ndim == 1:  # integer class labels: softmax + cross-entropy
        def labels(mode, z, y, start, scale, precision, tmp):
            softmax_rows(z, z, tmp)
            loss = hits = 0.0
            for r in range(z.shape[0]):
                row_loss, hit = cce_row(z, r, y[start + r])
                loss += row_loss
                hits += hit
            scale_rows(z, scale)
            return loss, hits
        return labels

    def rows(mode, z, y, start, scale, precision, tmp):
        if mode != SOFTMAX_CCE:
            return mse_block(z, y, start, scale, precision)
        softmax_rows(z, z, tmp)
        loss = hits = 0.0
        for r in range(z.shape[0]):  # one-hot rows
            row_loss, hit = cce_row(z, r, argmax_at(y, start + r))
            loss += row_loss
            hits += hit
        scale_rows(z, scale)
        return loss, hits
    return rows


@inline
def cce_row(p, r, label):
    """Cross-entropy and hit of probability row ``r``; turns the row into ``p - one_hot``."""
    loss = -np.log(clip_probability(p[r, label]))
    hit = argmax_at(p, r) == label
    p[r, label] -= 1
    return loss, hit


@inline
def scale_rows(z, scale):
    s = z.dtype.type(scale)
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[r, j] *= s


@inline
def mse_block(z, t, start, scale, precision):
    loss = 0.0
    hits = 0
    s = z.dtype.type(scale)
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            d = z[r, j] - t[start + r, j]
            loss += d * d
            hits += abs(d) < precision
            z[r, j] = d * s
    return loss / z.shape[1], hits / z.shape[1]


@jit
def softmax_columns(z, out, m, tmp):
    """Softmax over the features of each of the first ``m`` samples of the feature-major ``z``, into ``out``."""
    k = z.shape[0]
    for r in range(m):
        tmp[r] = z[0, r]
    for j in range(1, k):
        for r in range(m):
            tmp[r] = max(tmp[r], z[j, r])
    for j in range(k):
        for r in range(m):
            out[j, r] = exp_vectorizable(z[j, r] - tmp[r])
    for r in range(m):
        tmp[r] = out[0, r]
    for j in range(1, k):
        for r in range(m):
            tmp[r] += out[j, r]
    for r in range(m):
        tmp[r] = 1 / tmp[r]
    for j in range(k):
        for r in range(m):
            out[j, r] *= tmp[r]


def output_columns(mode, z, d, y, start, m, scale, precision, rows, tmp):
    """``output_block`` for the feature-major outputs ``z`` of ``m`` samples; writes dLoss/dz into ``d``.

    Class labels take a feature-major softmax; other targets go through ``output_block``
    on a sample-major copy in ``rows``.
    """


@overload(output_columns, jit_options=JIT_OPTIONS)
def _output_columns(mode, z, d, y, start, m, scale, precision, rows, tmp):
    if y.ndim == 1:
        def labels(mode, z, d, y, start, m, scale, precision, rows, tmp):
            softmax_columns(z, d, m, tmp)
            p = d.T  # sample-major view for the row helpers
            loss = hits = 0.0
            for r in range(m):
                row_loss, hit = cce_row(p, r, y[start + r])
                loss += row_loss
                hits += hit
            s = d.dtype.type(scale)
            for j in range(d.shape[0]):
                for r in range(m):
                    d[j, r] *= s
            return loss, hits
        return labels

    def other(mode, z, d, y, start, m, scale, precision, rows, tmp):
        block = rows[:m]
        transpose_into(z[:, :m], block)
        loss, hits = output_block(mode, block, y, start, scale, precision, tmp)
        transpose_into(block, d)
        return loss, hits
    return other


@jit
def transpose_into(a, out):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[j, i] = a[i, j]


# The small-network pass keeps activations feature-major: row k of a buffer holds feature k of
# the block's first ``m`` samples. Every inner loop then runs over samples, contiguous and as
# long as the block, so it vectorizes whatever the layer widths (2 inputs, 3 outputs ...).
@inline
def chunk_rows(k, i):
    """Rows ``k .. k+3`` of an ``i``-row operand, those past the end replaced by row ``i - 1``."""
    last = i - 1
    return k, min(k + 1, last), min(k + 2, last), min(k + 3, last)


@inline
def chunk_weights(W, k, q, i):
    """``W[k .. k+3, q]``, zero past row ``i - 1`` (their rows from ``chunk_rows`` then add nothing finite)."""
    zero = W.dtype.type(0)
    return (W[k, q], W[k + 1, q] if k + 1 < i else zero, W[k + 2, q] if k + 2 < i else zero,
            W[k + 3, q] if k + 3 < i else zero)


@jit
def columns_forward(a, W, b, out, m, code, alpha):
    """``out[:, :m] = act(W.T @ a[:, :m] + b[:, None])``; four inputs per pass over an output row."""
    i, o = W.shape
    for q in range(o):
        for k in range(0, i, 4):
            k0, k1, k2, k3 = chunk_rows(k, i)
            w0, w1, w2, w3 = chunk_weights(W, k, q, i)
            if k == 0:
                bq = b[q]
                for r in range(m):
                    out[q, r] = bq + w0 * a[k0, r] + w1 * a[k1, r] + w2 * a[k2, r] + w3 * a[k3, r]
            else:
                for r in range(m):
                    out[q, r] += w0 * a[k0, r] + w1 * a[k1, r] + w2 * a[k2, r] + w3 * a[k3, r]
        act_forward_at(code, alpha, out, out, q, m)


@jit
def columns_backward(a, d, W, dW, db, dx, m, need_dx, code, alpha):
    """Add the block's ``db`` and ``dW = a @ d.T``; if ``need_dx``, write ``dx = W @ d`` times the derivative
    of the activation ``code`` whose output is ``a`` (columns ``:m``). Four outputs per pass over an input row;
    sums over samples accumulate in the dtype (vectorized), as ``column_sums`` does.
    """
    i, o = W.shape
    zero = d.dtype.type(0)
    for q in range(o):
        s = zero
        for r in range(m):
            s += d[q, r]
        db[q] += s
    for k in range(i):
        for q in range(0, o, 4):
            q0, q1, q2, q3 = chunk_rows(q, o)
            w0, w1, w2, w3 = chunk_weights(W.T, q, k, o)
            s0 = s1 = s2 = s3 = zero
            for r in range(m):  # the reductions alone in their loop, so that it vectorizes
                akr = a[k, r]
                s0 += akr * d[q0, r]
                s1 += akr * d[q1, r]
                s2 += akr * d[q2, r]
                s3 += akr * d[q3, r]
            if need_dx and q == 0:
                for r in range(m):
                    dx[k, r] = w0 * d[q0, r] + w1 * d[q1, r] + w2 * d[q2, r] + w3 * d[q3, r]
            elif need_dx:
                for r in range(m):
                    dx[k, r] += w0 * d[q0, r] + w1 * d[q1, r] + w2 * d[q2, r] + w3 * d[q3, r]
            dW[k, q0] += s0
            if q + 1 < o:
                dW[k, q1] += s1
            if q + 2 < o:
                dW[k, q2] += s2
            if q + 3 < o:
                dW[k, q3] += s3
        if need_dx:
            act_backward_at(code, alpha, a, dx, dx, k, m)


# The step's arrays are flat: every parameter (W0, b0, W1, b1, ...) in one buffer at
# ``offsets``, its gradient and optimizer state at the same offsets of theirs, the work
# arrays of every layer in one buffer each; so a call passes a few arrays, not tuples.
@inline
def weight_at(flat, offsets, widths, l):
    """Layer ``l``'s ``W`` (or its gradient) in ``flat``."""
    return flat[offsets[2 * l]:offsets[2 * l + 1]].reshape((widths[l], widths[l + 1]))


@inline
def bias_at(flat, offsets, l):
    """Layer ``l``'s ``b`` (or its gradient) in ``flat``."""
    return flat[offsets[2 * l + 1]:offsets[2 * l + 2]]


@inline
def work_at(buf, widths, l, size, feature_major):
    """Layer ``l``'s work array in ``buf``: ``(width, size)`` if ``feature_major``, else ``(size, width)``."""
    start = 0
    for j in range(1, l + 1):
        start += widths[j]
    w = widths[l + 1]
    v = buf[start * size:(start + w) * size]
    return v.reshape((w, size)) if feature_major else v.reshape((size, w))


@jit
def columns_pass(x, y, mode, P, G, offsets, widths, xT, H, D, rows, tmp, codes, alphas, precision, total):
    """The small-network pass over blocks of ``BLOCK_COLS`` samples; fills ``G``; returns (mean loss, accuracy).

    Means are over ``total`` rows: ``x.shape[0]``, or for one rank's share of a batch the batch's rows.

    ``xT`` and the layer arrays in ``H`` (outputs) and ``D`` (their gradients) are
    feature-major, ``rows`` a sample-major buffer for the output layer, where the loss
    works on rows. A block's samples are padded with zeros to a multiple of
    ``PAD_COLS``, so that no vector loop has a scalar tail; the padding's output
    gradient is zero.
    """
    n = x.shape[0]
    L = widths.size - 1
    G[:] = 0
    scale = 1.0 / total if mode == SOFTMAX_CCE else 2.0 / (total * rows.shape[1])
    block = xT.shape[1]
    loss = hits = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        m = stop - start
        mp = (m + PAD_COLS - 1) & -PAD_COLS
        transpose_into(x[start:stop], xT)
        xT[:, m:mp] = 0
        a = xT
        for l in range(L):
            h = work_at(H, widths, l, block, True)
            columns_forward(a, weight_at(P, offsets, widths, l), bias_at(P, offsets, l), h, mp,
                            codes[l] if l < L - 1 else LINEAR, alphas[l])
            a = h
        d = work_at(D, widths, L - 1, block, True)
        block_loss, block_hits = output_columns(mode, a, d, y, start, m, scale, precision, rows, tmp)
        loss += block_loss
        hits += block_hits
        d[:, m:mp] = 0  # padding samples add nothing to the gradients
        for l in range(L - 1, -1, -1):
            a = xT if l == 0 else work_at(H, widths, l - 1, block, True)
            dx = work_at(D, widths, l - 1, block, True) if l > 0 else xT
            columns_backward(a, work_at(D, widths, l, block, True), weight_at(P, offsets, widths, l),
                             weight_at(G, offsets, widths, l), bias_at(G, offsets, l), dx, mp, l > 0,
                             codes[l - 1], alphas[l - 1])
    return loss / total, hits / total


@jit
def blas_pass(x, y, mode, P, G, offsets, widths, H, D, tmp, codes, alphas, precision, total):
    """The whole batch a layer at a time on BLAS (sample-major work arrays); fills ``G``; means over ``total`` rows."""
    n = x.shape[0]
    L = widths.size - 1
    size = tmp.size
    a = x
    for l in range(L):
        h = work_at(H, widths, l, size, False)[:n]
        matmul_into(a, weight_at(P, offsets, widths, l), h, False, False)
        code, b = codes[l] if l < L - 1 else LINEAR, bias_at(P, offsets, l)
        for r in range(n):  # bias and activation in one pass over each row
            for q in range(h.shape[1]):
                h[r, q] += b[q]
            act_forward_at(code, alphas[l], h, h, r, h.shape[1])
        a = h
    d = work_at(D, widths, L - 1, size, False)[:n]
    d[:] = a
    scale = 1.0 / total if mode == SOFTMAX_CCE else 2.0 / (total * d.shape[1])
    loss, hits = output_block(mode, d, y, 0, scale, precision, tmp)
    column_sums(d, bias_at(G, offsets, L - 1))
    for l in range(L - 1, -1, -1):
        a = x if l == 0 else work_at(H, widths, l - 1, size, False)[:n]
        d = work_at(D, widths, l, size, False)[:n]
        matmul_into(a, d, weight_at(G, offsets, widths, l), True, False)
        if l > 0:  # dx, the activation's derivative and the lower layer's db
            dx = work_at(D, widths, l - 1, size, False)[:n]
            matmul_into(d, weight_at(P, offsets, widths, l), dx, False, True)
            for r in range(n):
                act_backward_at(codes[l - 1], alphas[l - 1], a, dx, dx, r, dx.shape[1])
            column_sums(dx, bias_at(G, offsets, l - 1))
    return loss / total, hits / total


@jit
def apply_update(P, G, S1, S2, offsets, regs, opt, hyper, step):
    """Regularization gradient, finiteness check and optimizer update of the flat parameters ``P``.

    ``regs`` holds (l1, l2) per parameter (the segments of ``offsets``); ``S1``/``S2``
    the optimizer's state; ``hyper`` the learning rate, then the optimizer's own
    hyperparameters in the order of its update kernel. Returns False (and changes
    nothing) when a gradient is not finite.
    """
    for i in range(regs.shape[0]):
        l1, l2 = regs[i, 0], regs[i, 1]
        if l1 or l2:
            lo, hi = offsets[i], offsets[i + 1]
            regularization_backward(P[lo:hi], G[lo:hi], l1, l2)
    if not all_finite(G):
        return False
    lr = hyper[0]
    if opt == SGD:
        sgd_update(P, G, lr)
    elif opt == SGD_MOMENTUM:
        sgd_momentum_update(P, G, S1, lr, hyper[1])
    elif opt == ADAGRAD:
        adagrad_update(P, G, S1, lr, hyper[1])
    elif opt == RMSPROP:
        rmsprop_update(P, G, S1, lr, hyper[1], hyper[2])
    else:
        adam_update(P, G, S1, S2, lr, hyper[1], hyper[2], hyper[3], step)
    return True


@inline
def update_if_finite(loss, acc, P, G, S1, S2, offsets, regs, opt, hyper, step):
    """The end of a step: ``(data_loss, accuracy, finite)``, the update applied only if all is finite."""
    if not np.isfinite(loss):
        return loss, acc, False
    return loss, acc, apply_update(P, G, S1, S2, offsets, regs, opt, hyper, step)


# Two entry points rather than one with a flag, so that a model compiles only the pass it runs.
@jit
def loops_step(x, y, mode, P, G, S1, S2, offsets, widths, xT, H, D, rows, tmp, codes, alphas, precision,
               regs, opt, hyper, step):
    """One whole training step on ``columns_pass``; returns ``(data_loss, accuracy, finite)``."""
    saved = subnormals_off()
    loss, acc = columns_pass(x, y, mode, P, G, offsets, widths, xT, H, D, rows, tmp, codes, alphas, precision,
                             x.shape[0])
    result = update_if_finite(loss, acc, P, G, S1, S2, offsets, regs, opt, hyper, step)
    subnormals_restore(saved)
    return result


@jit
def blas_step(x, y, mode, P, G, S1, S2, offsets, widths, H, D, tmp, codes, alphas, precision,
              regs, opt, hyper, step):
    """One whole training step on ``blas_pass``; returns ``(data_loss, accuracy, finite)``."""
    saved = subnormals_off()
    loss, acc = blas_pass(x, y, mode, P, G, offsets, widths, H, D, tmp, codes, alphas, precision, x.shape[0])
    result = update_if_finite(loss, acc, P, G, S1, S2, offsets, regs, opt, hyper, step)
    subnormals_restore(saved)
    return result


# ====================================================================== runs: many steps per call
@inline
def run_batch(X, Y, orders, epoch, lo, hi, xb, yb):
    """Rows ``lo:hi`` of an epoch: X's own rows when ``orders`` is empty (no shuffling), else the
    rows ``orders[epoch, lo:hi]`` gathered into the buffers ``xb`` and ``yb``."""
    if orders.shape[0] == 0:
        return X[lo:hi], Y[lo:hi]
    for i in range(hi - lo):
        r = orders[epoch, lo + i]
        row, into = X[r], xb[i]
        for j in range(row.size):  # as a loop it vectorizes: ``xb[i] = X[r]`` copied at half the speed
            into[j] = row[j]
        yb[i] = Y[r]
    return xb[:hi - lo], yb[:hi - lo]


@inline
def flat_regularization_loss(P, offsets, regs):
    """The regularization loss of the flat parameters (0 when none is regularized)."""
    total = 0.0
    for i in range(regs.shape[0]):
        l1, l2 = regs[i, 0], regs[i, 1]
        if l1 or l2:
            total += regularization_loss(P[offsets[i]:offsets[i + 1]], l1, l2)
    return total


@inline
def run_bounds(n, batch, k):
    """``(epoch, lo, hi)`` of step ``k`` of a run of whole epochs of ``n`` rows in batches of ``batch``."""
    steps = (n + batch - 1) // batch
    epoch, s = k // steps, k % steps
    return epoch, s * batch, min(n, (s + 1) * batch)


# Two entry points, as for the steps, so that a model compiles only the pass it runs.
@jit
def loops_run(X, Y, orders, batch, lrs, first_step, losses, accs, reg_losses, xb, yb, mode, P, G, S1, S2,
              offsets, widths, xT, H, D, rows, tmp, codes, alphas, precision, regs, opt, hyper):
    """``lrs.size`` steps of ``loops_step`` over whole epochs; each step's data loss, accuracy and the
    regularization loss before it go to ``losses``, ``accs``, ``reg_losses``. Returns the number
    of steps applied: fewer than asked when a step was not finite (that step's loss is recorded)."""
    for k in range(lrs.size):
        epoch, lo, hi = run_bounds(X.shape[0], batch, k)
        x, y = run_batch(X, Y, orders, epoch, lo, hi, xb, yb)
        hyper[0] = lrs[k]
        reg_losses[k] = flat_regularization_loss(P, offsets, regs)
        losses[k], accs[k], finite = loops_step(x, y, mode, P, G, S1, S2, offsets, widths, xT, H, D, rows, tmp,
                                                codes, alphas, precision, regs, opt, hyper, first_step + k)
        if not finite:
            return k
    return lrs.size


@jit
def blas_run(X, Y, orders, batch, lrs, first_step, losses, accs, reg_losses, xb, yb, mode, P, G, S1, S2,
             offsets, widths, H, D, tmp, codes, alphas, precision, regs, opt, hyper):
    """``loops_run`` on ``blas_step``."""
    for k in range(lrs.size):
        epoch, lo, hi = run_bounds(X.shape[0], batch, k)
        x, y = run_batch(X, Y, orders, epoch, lo, hi, xb, yb)
        hyper[0] = lrs[k]
        reg_losses[k] = flat_regularization_loss(P, offsets, regs)
        losses[k], accs[k], finite = blas_step(x, y, mode, P, G, S1, S2, offsets, widths, H, D, tmp,
                                               codes, alphas, precision, regs, opt, hyper, first_step + k)
        if not finite:
            return k
    return lrs.size
