// RMSNorm forward and backward, one block per row (numerics: docs/contracts.md, specs/rms_norm.md).
//
// Same layout as layer_norm.cu: T storage dtype, Acc accumulation dtype; rms_norm_fwd/_bwd
// <T, Acc, VPT> keep the row in registers (n <= VPT * blockDim.x), the *_long variants loop over
// global memory. launch.py: launch_config picks the kernel and block size.
#include "reduce.cuh"

namespace normref {

// rstd = 1 / sqrt(sum(x^2) / n + eps) (reduce.cuh: sum_squares); y = x * rstd * weight.
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    rms_norm_fwd(const T* __restrict__ x, const Acc* __restrict__ weight, Acc eps,
                 T* __restrict__ y, Acc* __restrict__ rstd, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    Acc v[VPT];
    const Acc r = inv_sqrt(sum_squares(xr, n, v) / n + eps);

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) {
            Acc out = v[i] * r;
            if (weight != nullptr) out *= weight[j];
            yr[j] = Store<T>::from(out);
        }
    }
    if (tid == 0) rstd[row] = r;
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    rms_norm_fwd_long(const T* __restrict__ x, const Acc* __restrict__ weight, Acc eps,
                      T* __restrict__ y, Acc* __restrict__ rstd, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    const Acc r = inv_sqrt(sum_squares<Acc>(xr, n) / n + eps);

    for (int j = tid; j < n; j += stride) {
        Acc out = to_acc(xr[j]) * r;
        if (weight != nullptr) out *= weight[j];
        yr[j] = Store<T>::from(out);
    }
    if (tid == 0) rstd[row] = r;
}

// x_hat = x * rstd, g = dy * weight, dx = rstd * (g - x_hat * mean(g x_hat)).
// dweight comes from param_grad_partial (reduce.cuh) with mean and centre null.
template <typename T, typename Acc, int VPT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    rms_norm_bwd(const T* __restrict__ dy, const T* __restrict__ x, const Acc* __restrict__ rstd,
                 const Acc* __restrict__ weight, T* __restrict__ dx, int n) {
    const long long row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc r = rstd[row];

    Acc xh[VPT];
    Acc g[VPT];
    Acc s[1] = {Acc(0)};  // sum(g x_hat)
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        xh[i] = Acc(0);
        g[i] = Acc(0);
        if (j < n) {
            xh[i] = to_acc(xr[j]) * r;
            g[i] = weight != nullptr ? to_acc(dyr[j]) * weight[j] : to_acc(dyr[j]);
        }
        s[0] += g[i] * xh[i];
    }
    block_sum(s);
    const Acc mean_gxh = s[0] / n;

#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        if (j < n) dxr[j] = Store<T>::from(r * (g[i] - xh[i] * mean_gxh));
    }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    rms_norm_bwd_long(const T* __restrict__ dy, const T* __restrict__ x,
                      const Acc* __restrict__ rstd, const Acc* __restrict__ weight,
                      T* __restrict__ dx, int n) {
    const long long row = blockIdx.x;
    const T* dyr = dy + row * n;
    const T* xr = x + row * n;
    T* dxr = dx + row * n;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc r = rstd[row];

    Acc s[1] = {Acc(0)};
    for (int j = tid; j < n; j += stride) {
        const Acc g = weight != nullptr ? to_acc(dyr[j]) * weight[j] : to_acc(dyr[j]);
        s[0] += g * (to_acc(xr[j]) * r);
    }
    block_sum(s);
    const Acc mean_gxh = s[0] / n;

    for (int j = tid; j < n; j += stride) {
        const Acc g = weight != nullptr ? to_acc(dyr[j]) * weight[j] : to_acc(dyr[j]);
        dxr[j] = Store<T>::from(r * (g - (to_acc(xr[j]) * r) * mean_gxh));
    }
}

}  // namespace normref
