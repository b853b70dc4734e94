// LayerNorm forward and backward, one block per row (numerics: docs/contracts.md, specs/layer_norm.md).
//
// T is the storage dtype (float, __half, double), Acc the accumulation dtype (float, float, double).
// Two variants of each kernel:
//   *_fwd / *_bwd <T, Acc, VPT>: the row fits in registers (n <= VPT * blockDim.x); each thread
//       keeps its VPT elements between the passes, so x (and dy) are read from memory once.
//   *_fwd_long / *_bwd_long <T, Acc>: longer rows; every pass loops over global memory again.
// Thread t of the block owns elements t, t + blockDim.x, t + 2 blockDim.x, ... (coalesced loads).
// launch.py: launch_config picks the kernel and block size; blockDim.x is a multiple of 32.
// No thread returns early: every thread reaches every block_sum.
#include "reduce.cuh"

namespace normref {

// Shifted two-pass forward with the row in registers (reduce.cuh: shifted_moments):
//   K = x[0], d = x - K, mean_d = sum(d) / n, var = sum((d - mean_d)^2) / n,
//   rstd = 1 / sqrt(var + eps), y = (d - mean_d) * rstd * weight + bias, mean = K + mean_d.
// Subtracting K first keeps float32 exact for rows with a large offset, and a constant row gives
// d == 0 exactly, hence x_hat == 0 and y == bias. A NaN anywhere in the row reaches every output.
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    layer_norm_fwd(const T* __restrict__ x, const Acc* __restrict__ weight,
                   const Acc* __restrict__ bias, Acc eps, T* __restrict__ y,
                   Acc* __restrict__ mean, Acc* __restrict__ rstd, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    Acc d[VPT];
    const Moments<Acc> m = shifted_moments(xr, n, d);
    const Acc r = inv_sqrt(m.sq / n + eps);

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) {
            Acc v = (d[i] - m.mean_d) * r;
            if (weight != nullptr) v *= weight[j];
            if (bias != nullptr) v += bias[j];
            yr[j] = Store<T>::from(v);
        }
    }
    if (tid == 0) {
        mean[row] = m.shift + m.mean_d;
        rstd[row] = r;
    }
}

// The same arithmetic for rows that do not fit in registers: three passes over global memory.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    layer_norm_fwd_long(const T* __restrict__ x, const Acc* __restrict__ weight,
                        const Acc* __restrict__ bias, Acc eps, T* __restrict__ y,
                        Acc* __restrict__ mean, Acc* __restrict__ rstd, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    const Moments<Acc> m = shifted_moments<Acc>(xr, n);
    const Acc r = inv_sqrt(m.sq / n + eps);

    for (int j = tid; j < n; j += stride) {
        Acc v = ((to_acc(xr[j]) - m.shift) - m.mean_d) * r;
        if (weight != nullptr) v *= weight[j];
        if (bias != nullptr) v += bias[j];
        yr[j] = Store<T>::from(v);
    }
    if (tid == 0) {
        mean[row] = m.shift + m.mean_d;
        rstd[row] = r;
    }
}

// Backward for dx, with the row in registers. With x_hat' = (x - mean) * rstd and g = dy * weight,
// one block sum gives sum(g), sum(g x_hat') and sum(x_hat'); then
//   centre = mean(x_hat')      (the true x_hat has zero mean: this cancels the saved mean's rounding)
//   x_hat  = x_hat' - centre,  mean(g x_hat) = mean(g x_hat') - centre * mean(g)
//   dx     = rstd * (g - mean(g) - x_hat * mean(g x_hat)).
// centre_out (rows,), when not null, receives `centre` for param_grad_partial (dweight).
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    layer_norm_bwd(const T* __restrict__ dy, const T* __restrict__ x,
                   const Acc* __restrict__ mean, const Acc* __restrict__ rstd,
                   const Acc* __restrict__ weight, T* __restrict__ dx,
                   Acc* __restrict__ centre_out, int n) {
    const long long row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc m = mean[row];
    const Acc r = rstd[row];

    Acc xh[VPT];  // x_hat' (0 in padding slots, which then add nothing to the sums)
    Acc g[VPT];
    Acc s[3] = {Acc(0), Acc(0), Acc(0)};  // sum(g), sum(g x_hat'), sum(x_hat')
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        xh[i] = Acc(0);
        g[i] = Acc(0);
        if (j < n) {
            xh[i] = (to_acc(xr[j]) - m) * r;
            g[i] = weight != nullptr ? to_acc(dyr[j]) * weight[j] : to_acc(dyr[j]);
        }
        s[0] += g[i];
        s[1] += g[i] * xh[i];
        s[2] += xh[i];
    }
    block_sum(s);
    const Acc mean_g = s[0] / n;
    const Acc centre = s[2] / n;
    const Acc mean_gxh = s[1] / n - centre * mean_g;

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) dxr[j] = Store<T>::from(r * (g[i] - mean_g - (xh[i] - centre) * mean_gxh));
    }
    if (tid == 0 && centre_out != nullptr) centre_out[row] = centre;
}

// The same arithmetic for long rows: two passes over global memory.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    layer_norm_bwd_long(const T* __restrict__ dy, const T* __restrict__ x,
                        const Acc* __restrict__ mean, const Acc* __restrict__ rstd,
                        const Acc* __restrict__ weight, T* __restrict__ dx,
                        Acc* __restrict__ centre_out, int n) {
    const long long row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc m = mean[row];
    const Acc r = rstd[row];

    Acc s[3] = {Acc(0), Acc(0), Acc(0)};
    for (int j = tid; j < n; j += stride) {
        const Acc xh = (to_acc(xr[j]) - m) * r;
        const Acc g = weight != nullptr ? to_acc(dyr[j]) * weight[j] : to_acc(dyr[j]);
        s[0] += g;
        s[1] += g * xh;
        s[2] += xh;
    }
    block_sum(s);
    const Acc mean_g = s[0] / n;
    const Acc centre = s[2] / n;
    const Acc mean_gxh = s[1] / n - centre * mean_g;

    for (int j = tid; j < n; j += stride) {
        const Acc xh = (to_acc(xr[j]) - m) * r - centre;
        const Acc g = weight != nullptr ? to_acc(dyr[j]) * weight[j] : to_acc(dyr[j]);
        dxr[j] = Store<T>::from(r * (g - mean_g - xh * mean_gxh));
    }
    if (tid == 0 && centre_out != nullptr) centre_out[row] = centre;
}

}  // namespace normref
