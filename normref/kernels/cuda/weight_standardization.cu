// Weight standardization forward and backward, one block per output channel (numerics:
// specs/weight_standardization.md, normref/reparam/weight_standardization.py). A row is one
// channel's fan-in of n >= 2 values (the op wrapper refuses n = 1).
//
// Same layout as layer_norm.cu: T storage dtype, Acc accumulation dtype; weight_std_fwd/_bwd
// <T, Acc, VPT> keep the row in registers (n <= VPT * blockDim.x), the *_long variants loop over
// global memory. reparam_launch.py: launch_config picks the kernel and block size.
#include "reduce.cuh"

namespace normref {

// Shifted two-pass statistics (reduce.cuh: shifted_moments), the authors' unbiased std with eps
// added to it:
//   K = x[0], d = x - K, mean_d = sum(d) / n, c = d - mean_d, std = sqrt(sum(c^2) / (n - 1)),
//   y = c / (std + eps), mean = K + mean_d.
// Subtracting K first keeps float32 exact for a channel with a large offset; a constant channel
// gives d == 0 exactly, hence std == 0 and y == 0.
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_std_fwd(const T* __restrict__ x, Acc eps, T* __restrict__ y, Acc* __restrict__ mean,
                   Acc* __restrict__ stddev, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    Acc d[VPT];
    const Moments<Acc> m = shifted_moments(xr, n, d);
    const Acc sd = acc_sqrt(m.sq / (n - 1));
    const Acc denom = sd + eps;

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) yr[j] = Store<T>::from((d[i] - m.mean_d) / denom);
    }
    if (tid == 0) {
        mean[row] = m.shift + m.mean_d;
        stddev[row] = sd;
    }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_std_fwd_long(const T* __restrict__ x, Acc eps, T* __restrict__ y,
                        Acc* __restrict__ mean, Acc* __restrict__ stddev, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    const Moments<Acc> m = shifted_moments<Acc>(xr, n);
    const Acc sd = acc_sqrt(m.sq / (n - 1));
    const Acc denom = sd + eps;

    for (int j = tid; j < n; j += stride) {
        yr[j] = Store<T>::from(((to_acc(xr[j]) - m.shift) - m.mean_d) / denom);
    }
    if (tid == 0) {
        mean[row] = m.shift + m.mean_d;
        stddev[row] = sd;
    }
}

// Backward, with g = dy and s = std + eps. One block sum gives sum(g), sum(g c'), sum(c') for
// c' = x - mean; then
//   centre = mean(c')  (the true c has zero mean: this cancels the saved mean's rounding)
//   c = c' - centre,  y = c / s,  sum(g y) = (sum(g c') - centre * sum(g)) / s
//   k = sum(g y) * (1 / std) / (n - 1)
//   dx = ((g - mean(g)) - c * k) / s
// which is the reference's (g - mean(g)) / s - y * k over one denominator: one division an element
// instead of two.
// 1 / std is taken as 0 where std == 0 (a constant channel: std has no derivative there, and
// c == 0); a NaN std keeps 1 / std = NaN, as in the reference.
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_std_bwd(const T* __restrict__ dy, const T* __restrict__ x, const Acc* __restrict__ mean,
                   const Acc* __restrict__ stddev, Acc eps, T* __restrict__ dx, int n) {
    const long long row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc m = mean[row];
    const Acc sd = stddev[row];
    const Acc denom = sd + eps;

    Acc c[VPT];  // c' (0 in padding slots, which then add nothing to the sums)
    Acc g[VPT];
    Acc s[3] = {Acc(0), Acc(0), Acc(0)};  // sum(g), sum(g c'), sum(c')
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        c[i] = j < n ? to_acc(xr[j]) - m : Acc(0);
        g[i] = j < n ? to_acc(dyr[j]) : Acc(0);
        s[0] += g[i];
        s[1] += g[i] * c[i];
        s[2] += c[i];
    }
    block_sum(s);
    const Acc mean_g = s[0] / n;
    const Acc centre = s[2] / n;
    const Acc gy = (s[1] - centre * s[0]) / denom;
    const Acc inv_std = sd == Acc(0) ? Acc(0) : Acc(1) / sd;
    const Acc k = gy * inv_std / (n - 1);

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) dxr[j] = Store<T>::from(((g[i] - mean_g) - (c[i] - centre) * k) / denom);
    }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    weight_std_bwd_long(const T* __restrict__ dy, const T* __restrict__ x,
                        const Acc* __restrict__ mean, const Acc* __restrict__ stddev, Acc eps,
                        T* __restrict__ dx, int n) {
    const long long row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc m = mean[row];
    const Acc sd = stddev[row];
    const Acc denom = sd + eps;

    Acc s[3] = {Acc(0), Acc(0), Acc(0)};
    for (int j = tid; j < n; j += stride) {
        const Acc c = to_acc(xr[j]) - m;
        const Acc g = to_acc(dyr[j]);
        s[0] += g;
        s[1] += g * c;
        s[2] += c;
    }
    block_sum(s);
    const Acc mean_g = s[0] / n;
    const Acc centre = s[2] / n;
    const Acc gy = (s[1] - centre * s[0]) / denom;
    const Acc inv_std = sd == Acc(0) ? Acc(0) : Acc(1) / sd;
    const Acc k = gy * inv_std / (n - 1);

    for (int j = tid; j < n; j += stride) {
        const Acc c = (to_acc(xr[j]) - m) - centre;
        dxr[j] = Store<T>::from(((to_acc(dyr[j]) - mean_g) - c * k) / denom);
    }
}

}  // namespace normref
