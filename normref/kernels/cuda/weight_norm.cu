// Weight normalization forward and backward, one block per row (numerics: specs/weight_norm.md,
// normref/reparam/weight_norm.py). A row is one slice of v, one output channel for dim=0: n is its
// fan-in, g and norm hold one value per row.
//
// T is the storage dtype (float, __half, double), Acc the accumulation dtype (float, float, double).
// As in layer_norm.cu, two variants of each kernel:
//   *_fwd / *_bwd <T, Acc, VPT>: the row fits in registers (n <= VPT * blockDim.x), so v (and dw)
//       are read from memory once;
//   *_fwd_long / *_bwd_long <T, Acc>: longer rows; the second pass reads global memory again.
// Thread t owns elements t, t + blockDim.x, ... (coalesced). reparam_launch.py: launch_config picks
// the kernel and block size (blockDim.x a multiple of 32). No thread returns before a block_sum.
//
// One long row (dim=None: one norm over the whole tensor) would leave all but one SM idle; it goes
// to the whole-tensor kernels at the bottom instead, many blocks and a deterministic two-pass sum.
#include "reduce.cuh"

namespace normref {

// norm = sqrt(sum(v^2)) (reduce.cuh: sum_squares), w = v * (g / norm). No eps, as PyTorch: a zero
// row divides by zero and gives NaN (0 * inf), and a NaN in v reaches the whole row through the sum.
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_norm_fwd(const T* __restrict__ v, const Acc* __restrict__ g, T* __restrict__ w,
                    Acc* __restrict__ norm, int n) {
    const long long row = blockIdx.x;
    const T* vr = v + row * n;
    T* wr = w + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    Acc x[VPT];
    const Acc nrm = acc_sqrt(sum_squares(vr, n, x));
    const Acc scale = g[row] / nrm;

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) wr[j] = Store<T>::from(x[i] * scale);
    }
    if (tid == 0) norm[row] = nrm;
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_norm_fwd_long(const T* __restrict__ v, const Acc* __restrict__ g, T* __restrict__ w,
                         Acc* __restrict__ norm, int n) {
    const long long row = blockIdx.x;
    const T* vr = v + row * n;
    T* wr = w + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    const Acc nrm = acc_sqrt(sum_squares<Acc>(vr, n));
    const Acc scale = g[row] / nrm;

    for (int j = tid; j < n; j += stride) wr[j] = Store<T>::from(to_acc(vr[j]) * scale);
    if (tid == 0) norm[row] = nrm;
}

// dg = sum(dw * v) / norm, dv = (g / norm) * (dw - v * (dg / norm)); dg is written per row in Acc
// (the op wrapper rounds it to g's dtype).
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_norm_bwd(const T* __restrict__ dw, const T* __restrict__ v, const Acc* __restrict__ g,
                    const Acc* __restrict__ norm, T* __restrict__ dv, Acc* __restrict__ dg, int n) {
    const long long row = blockIdx.x;
    const T* dwr = dw + row * n;
    const T* vr = v + row * n;
    T* dvr = dv + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    Acc x[VPT];
    Acc d[VPT];
    Acc s[1] = {Acc(0)};
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        x[i] = j < n ? to_acc(vr[j]) : Acc(0);
        d[i] = j < n ? to_acc(dwr[j]) : Acc(0);
        s[0] += d[i] * x[i];
    }
    block_sum(s);
    const Acc nrm = norm[row];
    const Acc dgr = s[0] / nrm;
    const Acc a = g[row] / nrm;
    const Acc b = dgr / nrm;

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) dvr[j] = Store<T>::from(a * (d[i] - x[i] * b));
    }
    if (tid == 0) dg[row] = dgr;
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_norm_bwd_long(const T* __restrict__ dw, const T* __restrict__ v,
                         const Acc* __restrict__ g, const Acc* __restrict__ norm,
                         T* __restrict__ dv, Acc* __restrict__ dg, int n) {
    const long long row = blockIdx.x;
    const T* dwr = dw + row * n;
    const T* vr = v + row * n;
    T* dvr = dv + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    Acc s[1] = {Acc(0)};
    for (int j = tid; j < n; j += stride) s[0] += to_acc(dwr[j]) * to_acc(vr[j]);
    block_sum(s);
    const Acc nrm = norm[row];
    const Acc dgr = s[0] / nrm;
    const Acc a = g[row] / nrm;
    const Acc b = dgr / nrm;

    for (int j = tid; j < n; j += stride) {
        dvr[j] = Store<T>::from(a * (to_acc(dwr[j]) - to_acc(vr[j]) * b));
    }
    if (tid == 0) dg[row] = dgr;
}

// ---- one long row, many blocks (dim=None) --------------------------------------------------------
// reparam_launch.py sends a single row longer than one block's register-cached kernel holds here,
// as three launches, each sum in an order fixed by n alone (launch_config derives the chunk size,
// the grids and the blocks from n), with no atomics: same input, same bits.
//   1. weight_norm_partial: block c sums a[j] * b[j] over its chunk [c * chunk, (c + 1) * chunk)
//      of the row (b = nullptr: a[j]^2), thread-strided, then block_sum: partial[c].
//   2. weight_norm_{fwd,bwd}_combine: one block adds partial[0 .. chunks) the same way and writes
//      norm = sqrt(sum) (forward) or dg = sum / norm (backward).
//   3. weight_norm_{fwd,bwd}_apply: elementwise over the row, grid-stride, with the row kernels'
//      expressions: w = v * (g / norm), dv = (g / norm) * (dw - v * (dg / norm)).
// The apply pass reads v (and dw) a second time: a grid-wide barrier between the sum and its use
// would need a cooperative launch, and the row is too long for one block's registers anyway.
constexpr int kWholeThreads = 256;  // blockDim.x of the partial and apply kernels (WHOLE_THREADS)

template <typename T, typename Acc>
__global__ void __launch_bounds__(kWholeThreads)
    weight_norm_partial(const T* __restrict__ a, const T* __restrict__ b, Acc* __restrict__ partial,
                        int n, int chunk) {
    const long long begin = static_cast<long long>(blockIdx.x) * chunk;
    const long long end = n - begin < chunk ? n : begin + chunk;
    Acc s[1] = {Acc(0)};
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const Acc x = to_acc(a[j]);
        s[0] += x * (b != nullptr ? to_acc(b[j]) : x);
    }
    block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// The sum of the chunks' partial sums, by one block (every thread must reach the block_sum).
template <typename Acc>
__device__ __forceinline__ Acc sum_partials(const Acc* __restrict__ partial, int chunks) {
    Acc s[1] = {Acc(0)};
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) s[0] += partial[c];
    block_sum(s);
    return s[0];
}

// T is unused: every kernel of a dtype's module is named <T, Acc> (reparam_launch.py).
template <typename T, typename Acc>
__global__ void weight_norm_fwd_combine(const Acc* __restrict__ partial, int chunks,
                                        Acc* __restrict__ norm) {
    const Acc s = sum_partials(partial, chunks);
    if (threadIdx.x == 0) norm[0] = acc_sqrt(s);
}

template <typename T, typename Acc>
__global__ void weight_norm_bwd_combine(const Acc* __restrict__ partial, int chunks,
                                        const Acc* __restrict__ norm, Acc* __restrict__ dg) {
    const Acc s = sum_partials(partial, chunks);
    if (threadIdx.x == 0) dg[0] = s / norm[0];
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kWholeThreads)
    weight_norm_fwd_apply(const T* __restrict__ v, const Acc* __restrict__ g,
                          const Acc* __restrict__ norm, T* __restrict__ w, int n) {
    const Acc scale = g[0] / norm[0];
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long j = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
         j += step) {
        w[j] = Store<T>::from(to_acc(v[j]) * scale);
    }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kWholeThreads)
    weight_norm_bwd_apply(const T* __restrict__ dw, const T* __restrict__ v,
                          const Acc* __restrict__ g, const Acc* __restrict__ norm,
                          const Acc* __restrict__ dg, T* __restrict__ dv, int n) {
    const Acc nrm = norm[0];
    const Acc a = g[0] / nrm;
    const Acc b = dg[0] / nrm;
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long j = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
         j += step) {
        dv[j] = Store<T>::from(a * (to_acc(dw[j]) - to_acc(v[j]) * b));
    }
}

}  // namespace normref
