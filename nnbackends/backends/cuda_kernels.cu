// Device kernels of the nnbackends CuPy backend.
//
// NVRTC compiles this file once per float type, with -DREAL=float or
// -DREAL=double (cupy_device.compile_options). Every kernel is extern "C" so
// the backend finds it by name; cupy_device.CUDA_FUNCTIONS lists them and a
// test checks that the two lists agree. Element counts are long long, row and
// column counts int. Arrays are C-contiguous.
//
// Each kernel mirrors the array code of backends/base.py operation by
// operation (same order, same rounding to `real`), so results match the NumPy
// backend to the last bits wherever the operations allow. Reductions
// accumulate in double over a number of blocks fixed by their size, so they
// are deterministic.

typedef REAL real;

#define FOR_EACH(i, n)                                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);    \
         i += (long long)blockDim.x * gridDim.x)

// Threads of each block of a reduction (cupy_device.REDUCE_THREADS).
#define REDUCE_THREADS 512
// Columns of the tile one block of column_sums covers (cupy_device.COLUMN_TILE).
#define COLUMN_TILE 32
// Probability clipping of the cross-entropy losses (base.CLIP).
#define CLIP 1e-7

// Activation codes (cupy_device.ACTIVATION_CODES).
enum { LINEAR = 0, RELU = 1, LEAKY_RELU = 2, SIGMOID = 3, TANH = 4 };
// Slots of a fused step's device totals (cupy_step.TOTALS).
enum Totals { TOTAL_LOSS = 0, TOTAL_ACCURACY = 1, TOTAL_REGULARIZATION = 2, FAILED_STEP = 3, FAILED_LOSS = 4,
              LAST_LOSS = 5, LAST_ACCURACY = 6 };

// Grid-stride loop over the elements of a C-contiguous matrix with `cols` columns that also
// keeps each element's row and column: one 64-bit division per thread, not a % and / per element.
struct MatrixCursor {
    long long i, stride, row, col, cols, row_step, col_step;
    __device__ explicit MatrixCursor(int columns) : cols(columns) {
        i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
        stride = (long long)blockDim.x * gridDim.x;
        row = i / cols;
        col = i - row * cols;
        row_step = stride / cols;
        col_step = stride - row_step * cols;
    }
    __device__ void next() {
        i += stride;
        row += row_step;
        col += col_step;
        if (col >= cols) {
            col -= cols;
            ++row;
        }
    }
};
#define FOR_EACH_CELL(c, n, cols) for (MatrixCursor c(cols); c.i < (n); c.next())

// ------------------------------------------------------------------ helpers
__device__ __forceinline__ real activate(int act, real x, real alpha) {
    switch (act) {
    case RELU: return (x > 0 || x != x) ? x : (real)0;  // NaN propagates, as np.maximum
    case LEAKY_RELU: return x > 0 ? x : x * alpha;
    case SIGMOID: return (real)0.5 + (real)0.5 * tanh((real)0.5 * x);
    case TANH: return tanh(x);
    default: return x;
    }
}

// dy times the derivative, from what the forward pass kept: the input for
// ReLU-like activations, the output for sigmoid and tanh.
__device__ __forceinline__ real activate_backward(int act, real saved, real dy, real alpha) {
    switch (act) {
    case RELU: return dy * (real)(saved > 0);
    case LEAKY_RELU: return saved > 0 ? dy : dy * alpha;
    case SIGMOID: return dy * saved * ((real)1 - saved);
    case TANH: return dy * ((real)1 - saved * saved);
    default: return dy;
    }
}

__device__ __forceinline__ real clip_probability(real p) {
    const real lo = (real)CLIP, hi = (real)(1.0 - CLIP);
    return p < lo ? lo : (p > hi ? hi : p);  // NaN passes through
}

__device__ __forceinline__ real sign_of(real d) { return d > 0 ? (real)1 : (d < 0 ? (real)-1 : d); }

__device__ __forceinline__ int argmax_row(const real* r, int cols) {
    int best = 0;
    for (int j = 1; j < cols; ++j)
        if (r[j] > r[best]) best = j;
    return best;
}

__device__ __forceinline__ real warp_sum(real v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ real warp_max(real v) {
    for (int o = 16; o > 0; o >>= 1) {
        real u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

// The row that the calling thread's warp handles (row kernels: one warp per row).
__device__ __forceinline__ int warp_row() {
    return (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
}

// Sum of term(i) over this block's share of i < n, in double, returned to thread 0. Blocks of
// REDUCE_THREADS threads take i in turns of REDUCE_THREADS, so the order of the additions
// depends only on n and the number of blocks.
template <class Term>
__device__ double block_sum(Term term, long long n) {
    __shared__ double partial[REDUCE_THREADS];
    double s = 0;
    for (long long i = (long long)blockIdx.x * REDUCE_THREADS + threadIdx.x; i < n;
         i += (long long)gridDim.x * REDUCE_THREADS)
        s += term(i);
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int w = REDUCE_THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
        __syncthreads();
    }
    return partial[0];
}

// Writes sum(term(i) for i < n) / divisor to *out. Launched as one block it writes *out itself;
// launched as k blocks (cupy_device.reduce_blocks) each block writes its sum to partials[block],
// block 0 writes the divisor to partials[k], and finish_mean(partials, k, out) follows.
template <class Term>
__device__ void reduce_mean(Term term, long long n, double divisor, real* out, double* partials) {
    const double s = block_sum(term, n);
    if (threadIdx.x != 0) return;
    if (gridDim.x == 1) {
        *out = (real)(s / divisor);
        return;
    }
    partials[blockIdx.x] = s;
    if (blockIdx.x == 0) partials[gridDim.x] = divisor;
}

// The second pass of a reduction over `count` blocks (one block).
extern "C" __global__ void finish_mean(const double* partials, int count, real* out) {
    const double s = block_sum([=](long long i) { return partials[i]; }, count);
    if (threadIdx.x == 0) *out = (real)(s / partials[count]);
}

// Class targets: integer labels (one per row) or one-hot rows; `at` is the target of the element
// i = row * cols + col of the predictions.
struct LabelTargets {
    const long long* y;
    int cols;
    __device__ real at(long long i, long long row, long long col) const { return (real)(y[row] == col); }
    __device__ long long label(long long row) const { return y[row]; }
};

struct OneHotTargets {
    const real* y;
    int cols;
    __device__ real at(long long i, long long row, long long col) const { return y[i]; }
    __device__ long long label(long long row) const { return argmax_row(y + row * cols, cols); }
};

// Kernels name_labels and name_onehot: the template name_ for integer labels and for one-hot rows.
// PARAMS and ARGS add trailing parameters (the reductions' workspace).
#define CLASS_TARGET_KERNELS(name, PARAMS, ARGS)                                                              \
    extern "C" __global__ void name##_labels(const real* p, const long long* y, real* out, int rows, int cols \
                                                 PARAMS) {                                                    \
        name##_(p, LabelTargets{y, cols}, out, rows, cols ARGS);                                              \
    }                                                                                                         \
    extern "C" __global__ void name##_onehot(const real* p, const real* y, real* out, int rows,               \
                                             int cols PARAMS) {                                               \
        name##_(p, OneHotTargets{y, cols}, out, rows, cols ARGS);                                             \
    }
#define WORKSPACE_PARAM , double* partials
#define WORKSPACE_ARG , partials

// ------------------------------------------------------------------ activations and dense
extern "C" __global__ void activation_forward(const real* x, real* y, long long n, int act, real alpha) {
    FOR_EACH(i, n) y[i] = activate(act, x[i], alpha);
}

extern "C" __global__ void activation_backward(const real* saved, const real* dy, real* dx, long long n,
                                               int act, real alpha) {
    FOR_EACH(i, n) dx[i] = activate_backward(act, saved[i], dy[i], alpha);
}

// z += b (row-broadcast) in place, then y = act(z); y may be z.
extern "C" __global__ void bias_activation_forward(real* z, const real* b, real* y, long long n, int cols,
                                                   int act, real alpha) {
    FOR_EACH_CELL(c, n, cols) {
        real v = z[c.i] + b[c.col];
        z[c.i] = v;
        y[c.i] = activate(act, v, alpha);
    }
}

extern "C" __global__ void softmax_forward(const real* x, real* y, int rows, int cols) {
    int row = warp_row(), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const real* xr = x + (long long)row * cols;
    real* yr = y + (long long)row * cols;
    real m = xr[0];
    for (int j = lane; j < cols; j += 32) m = xr[j] > m ? xr[j] : m;
    m = warp_max(m);
    real s = 0;
    for (int j = lane; j < cols; j += 32) {
        real e = exp(xr[j] - m);
        yr[j] = e;
        s += e;
    }
    s = warp_sum(s);
    for (int j = lane; j < cols; j += 32) yr[j] = yr[j] / s;
}

extern "C" __global__ void softmax_backward(const real* y, const real* dy, real* dx, int rows, int cols) {
    int row = warp_row(), lane = threadIdx.x & 31;
    if (row >= rows) return;
    long long base = (long long)row * cols;
    real d = 0;
    for (int j = lane; j < cols; j += 32) d += dy[base + j] * y[base + j];
    d = warp_sum(d);
    for (int j = lane; j < cols; j += 32) dx[base + j] = y[base + j] * (dy[base + j] - d);
}

// ------------------------------------------------------------------ categorical cross-entropy
template <class T>
__device__ void cce_loss_(const real* p, T t, real* out, int rows, int cols, double* partials) {
    reduce_mean(
        [=](long long r) {
            real picked = 0;
            const long long base = r * cols;
            for (long long j = 0; j < cols; ++j) picked += clip_probability(p[base + j]) * t.at(base + j, r, j);
            return -log((double)picked);
        },
        rows, rows, out, partials);
}

template <class T>
__device__ void cce_backward_(const real* p, T t, real* g, int rows, int cols) {
    // Probabilities below CLIP divide as CLIP (base.cce_backward), so p == 0 stays finite; NaN passes.
    FOR_EACH_CELL(c, (long long)rows * cols, cols) {
        const real pi = p[c.i];
        g[c.i] = -t.at(c.i, c.row, c.col) / ((pi < (real)CLIP ? (real)CLIP : pi) * (real)rows);
    }
}

template <class T>
__device__ void softmax_cce_backward_(const real* p, T t, real* g, int rows, int cols) {
    FOR_EACH_CELL(c, (long long)rows * cols, cols) g[c.i] = (p[c.i] - t.at(c.i, c.row, c.col)) / (real)rows;
}

template <class T>
__device__ void categorical_accuracy_(const real* p, T t, real* out, int rows, int cols, double* partials) {
    reduce_mean([=](long long r) { return (double)(argmax_row(p + r * cols, cols) == t.label(r)); }, rows, rows,
                out, partials);
}

CLASS_TARGET_KERNELS(cce_loss, WORKSPACE_PARAM, WORKSPACE_ARG)
CLASS_TARGET_KERNELS(cce_backward, , )
CLASS_TARGET_KERNELS(softmax_cce_backward, , )
CLASS_TARGET_KERNELS(categorical_accuracy, WORKSPACE_PARAM, WORKSPACE_ARG)

// ------------------------------------------------------------------ elementwise losses and metrics
extern "C" __global__ void bce_loss(const real* p, const real* y, real* out, long long n,
                                    double* partials) {
    reduce_mean(
        [=](long long i) {
            real c = clip_probability(p[i]);
            return -((double)y[i] * log((double)c) + (1.0 - y[i]) * log(1.0 - c));
        },
        n, n, out, partials);
}

extern "C" __global__ void bce_backward(const real* p, const real* y, real* g, long long n) {
    FOR_EACH(i, n) {
        real c = clip_probability(p[i]);
        g[i] = -(y[i] / c - ((real)1 - y[i]) / ((real)1 - c)) / (real)n;
    }
}

extern "C" __global__ void sigmoid_bce_backward(const real* p, const real* y, real* g, long long n) {
    FOR_EACH(i, n) g[i] = (p[i] - y[i]) / (real)n;
}

extern "C" __global__ void mse_loss(const real* p, const real* y, real* out, long long n,
                                    double* partials) {
    reduce_mean(
        [=](long long i) {
            double d = (double)y[i] - p[i];
            return d * d;
        },
        n, n, out, partials);
}

extern "C" __global__ void mse_backward(const real* p, const real* y, real* g, long long n) {
    const real scale = (real)(2.0 / n);
    FOR_EACH(i, n) g[i] = (p[i] - y[i]) * scale;
}

extern "C" __global__ void mae_loss(const real* p, const real* y, real* out, long long n,
                                    double* partials) {
    reduce_mean([=](long long i) { return fabs((double)y[i] - p[i]); }, n, n, out, partials);
}

extern "C" __global__ void mae_backward(const real* p, const real* y, real* g, long long n) {
    FOR_EACH(i, n) g[i] = sign_of(p[i] - y[i]) / (real)n;
}

extern "C" __global__ void binary_accuracy(const real* p, const real* y, real* out, long long n,
                                           double* partials) {
    reduce_mean([=](long long i) { return (double)((p[i] > (real)0.5) == (y[i] > (real)0.5)); }, n, n, out, partials);
}

extern "C" __global__ void regression_accuracy(const real* p, const real* y, real* out, long long n,
                                               real precision, double* partials) {
    reduce_mean([=](long long i) { return (double)(fabs(p[i] - y[i]) < precision); }, n, n, out, partials);
}

// ------------------------------------------------------------------ dense
// out[j] = sum of column j of the rows x cols matrix a (a Dense layer's bias gradient), in double.
// Blocks of (COLUMN_TILE, REDUCE_THREADS / COLUMN_TILE) threads: threadIdx.x picks one of the
// block's COLUMN_TILE columns, so a warp reads consecutive values of a row; threadIdx.y strides
// over the rows, and the partial sums of a column add up in a fixed order.
extern "C" __global__ void column_sums(const real* a, real* out, int rows, int cols) {
    __shared__ double partial[REDUCE_THREADS / COLUMN_TILE][COLUMN_TILE];
    const long long j = (long long)blockIdx.x * COLUMN_TILE + threadIdx.x;
    double s = 0;
    if (j < cols)
        for (long long r = threadIdx.y; r < rows; r += blockDim.y) s += a[r * cols + j];
    partial[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.y / 2; w > 0; w >>= 1) {
        if (threadIdx.y < w) partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + w][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && j < cols) out[j] = (real)partial[0][threadIdx.x];
}

// out = sum over k < n of a[k * a_step] * b[k * b_step], in double: a 1 x n by n x 1 matrix
// product, for which CuPy would run a reduction that allocates (graph capture forbids it).
extern "C" __global__ void dot_product(const real* a, long long a_step, const real* b, long long b_step, real* out,
                                       long long n, double* partials) {
    reduce_mean([=](long long k) { return (double)a[k * a_step] * b[k * b_step]; }, n, 1.0, out, partials);
}

// ------------------------------------------------------------------ regularization
extern "C" __global__ void regularization_loss(const real* w, real* out, long long n, double l1, double l2,
                                               double* partials) {
    reduce_mean([=](long long i) { return l1 * fabs((double)w[i]) + l2 * (double)w[i] * w[i]; }, n, 1.0, out,
                partials);
}

extern "C" __global__ void regularization_backward(const real* w, real* dw, long long n, double l1, double l2) {
    FOR_EACH(i, n) {
        real d = dw[i];
        if (l1 != 0) d += (real)l1 * sign_of(w[i]);
        if (l2 != 0) d += (real)(2 * l2) * w[i];
        dw[i] = d;
    }
}

// ------------------------------------------------------------------ dropout, products, argmax, finiteness
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Counter-based generator: element i of the stream `seed` is a uniform double in [0, 1).
extern "C" __global__ void dropout_mask(real* mask, long long n, unsigned long long seed, double rate, real scale) {
    FOR_EACH(i, n) {
        double u = (double)(splitmix64(seed ^ splitmix64((unsigned long long)i)) >> 11) * (1.0 / 9007199254740992.0);
        mask[i] = u >= rate ? scale : (real)0;
    }
}

extern "C" __global__ void multiply(const real* a, const real* b, real* out, long long n) {
    FOR_EACH(i, n) out[i] = a[i] * b[i];
}

extern "C" __global__ void argmax_rows(const real* x, long long* out, int rows, int cols) {
    FOR_EACH(r, rows) out[r] = argmax_row(x + r * cols, cols);
}

// Sets *flag to 1 when any element is NaN or infinite (x - x is 0 only for finite x).
extern "C" __global__ void flag_nonfinite(const real* a, long long n, int* flag) {
    FOR_EACH(i, n) if (!(a[i] - a[i] == (real)0)) *flag = 1;
}

// ------------------------------------------------------------------ optimizers
// Hyperparameters arrive as doubles and are rounded to `real` where the array
// code rounds them (base.ArrayBackend's sgd_update ... adam_update).
__device__ __forceinline__ void momentum_at(real* p, const real* g, real* v, long long i, real lr, real momentum) {
    real vi = v[i] * momentum;
    vi -= lr * g[i];
    v[i] = vi;
    p[i] += vi;
}

// c1 and c2 are the bias corrections 1 - b1^step and 1 - b2^step, computed once per step (on the
// host, or by step_bookkeeping), not by every thread.
struct AdamCoefficients {
    real lr, b1, one_minus_b1, b2, one_minus_b2, eps, c1, c2;
};

__device__ __forceinline__ AdamCoefficients adam_coefficients(double lr, double b1, double b2, double eps,
                                                              double c1, double c2) {
    return AdamCoefficients{(real)lr, (real)b1, (real)(1 - b1), (real)b2, (real)(1 - b2), (real)eps,
                            (real)c1, (real)c2};
}

__device__ __forceinline__ void adam_at(real* p, const real* g, real* m, real* v, long long i,
                                        const AdamCoefficients& c) {
    real gi = g[i];
    real mi = m[i] * c.b1;
    mi += c.one_minus_b1 * gi;
    real vi = v[i] * c.b2;
    vi += c.one_minus_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= c.lr * (mi / c.c1) / (sqrt(vi / c.c2) + c.eps);
}

extern "C" __global__ void sgd_update(real* p, const real* g, long long n, double lr) {
    const real r = (real)lr;
    FOR_EACH(i, n) p[i] -= r * g[i];
}

extern "C" __global__ void sgd_momentum_update(real* p, const real* g, real* v, long long n, double lr,
                                               double momentum) {
    FOR_EACH(i, n) momentum_at(p, g, v, i, (real)lr, (real)momentum);
}

extern "C" __global__ void adagrad_update(real* p, const real* g, real* cache, long long n, double lr, double eps) {
    FOR_EACH(i, n) {
        real gi = g[i];
        real ci = cache[i] + gi * gi;
        cache[i] = ci;
        p[i] -= (real)lr * gi / (sqrt(ci) + (real)eps);
    }
}

extern "C" __global__ void rmsprop_update(real* p, const real* g, real* cache, long long n, double lr, double rho,
                                          double eps) {
    FOR_EACH(i, n) {
        real gi = g[i];
        real ci = cache[i] * (real)rho;
        ci += (real)(1 - rho) * gi * gi;
        cache[i] = ci;
        p[i] -= (real)lr * gi / (sqrt(ci) + (real)eps);
    }
}

extern "C" __global__ void adam_update(real* p, const real* g, real* m, real* v, long long n, double lr, double b1,
                                       double b2, double eps, double c1, double c2) {
    const AdamCoefficients c = adam_coefficients(lr, b1, b2, eps, c1, c2);
    FOR_EACH(i, n) adam_at(p, g, m, v, i, c);
}

// Fused-step kernels: one launch covers every parameter (blockIdx.y picks it
// from tables of addresses and sizes built before capture). The learning rate
// and bias corrections come from device memory (coeffs, written by
// step_bookkeeping), and nothing is changed when *nonfinite is set.
extern "C" __global__ void flag_nonfinite_many(const real* const* arrays, const long long* sizes, int* flag) {
    const real* a = arrays[blockIdx.y];
    FOR_EACH(i, sizes[blockIdx.y]) if (!(a[i] - a[i] == (real)0)) *flag = 1;
}

// What the host would do between two steps, done by one thread so that no step waits for the host.
// hyper = {learning rate, decay, iterations}: the step's learning rate is lr / (1 + decay * iterations)
// (the optimizers' rule, in the same double operations, so it equals the host's) and its step count
// iterations + 1; coeffs receives {lr, step, 1 - b1^step, 1 - b2^step} and hyper's iterations advance.
// totals (enum Totals) add rows * the step's data loss, accuracy and regularization losses
// (result[2:n_results]) while *nonfinite is clear, and keep the step count and data loss of the
// first step that was not finite. *nonfinite is never cleared here: every later guarded update is a no-op.
extern "C" __global__ void step_bookkeeping(const real* result, int n_results, const int* nonfinite, double* hyper,
                                            double* coeffs, double* totals, double rows, double b1, double b2) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const double iterations = hyper[2], step = iterations + 1;
    coeffs[0] = hyper[0] / (1.0 + hyper[1] * iterations);
    coeffs[1] = step;
    coeffs[2] = 1.0 - pow(b1, step);
    coeffs[3] = 1.0 - pow(b2, step);
    hyper[2] = step;
    totals[LAST_LOSS] = result[0];
    totals[LAST_ACCURACY] = result[1];
    if (*nonfinite) {
        if (totals[FAILED_STEP] == 0) {
            totals[FAILED_STEP] = step;
            totals[FAILED_LOSS] = result[0];
        }
        return;
    }
    double regularization = 0;
    for (int k = 2; k < n_results; ++k) regularization += result[k];
    totals[TOTAL_LOSS] += rows * result[0];
    totals[TOTAL_ACCURACY] += rows * result[1];
    totals[TOTAL_REGULARIZATION] += rows * regularization;
}

extern "C" __global__ void sgd_update_guarded(real* const* params, const real* const* grads, const long long* sizes,
                                              const double* coeffs, const int* nonfinite) {
    if (*nonfinite) return;
    real* p = params[blockIdx.y];
    const real* g = grads[blockIdx.y];
    const real r = (real)coeffs[0];
    FOR_EACH(i, sizes[blockIdx.y]) p[i] -= r * g[i];
}

extern "C" __global__ void sgd_momentum_update_guarded(real* const* params, const real* const* grads,
                                                       real* const* velocities, const long long* sizes,
                                                       const double* coeffs, const int* nonfinite, double momentum) {
    if (*nonfinite) return;
    real *p = params[blockIdx.y], *v = velocities[blockIdx.y];
    const real* g = grads[blockIdx.y];
    FOR_EACH(i, sizes[blockIdx.y]) momentum_at(p, g, v, i, (real)coeffs[0], (real)momentum);
}

extern "C" __global__ void adam_update_guarded(real* const* params, const real* const* grads, real* const* ms,
                                               real* const* vs, const long long* sizes, const double* coeffs,
                                               const int* nonfinite, double b1, double b2, double eps) {
    if (*nonfinite) return;
    const AdamCoefficients c = adam_coefficients(coeffs[0], b1, b2, eps, coeffs[2], coeffs[3]);
    real *p = params[blockIdx.y], *m = ms[blockIdx.y], *v = vs[blockIdx.y];
    const real* g = grads[blockIdx.y];
    FOR_EACH(i, sizes[blockIdx.y]) adam_at(p, g, m, v, i, c);
}
