// GroupNorm forward and backward over x viewed as (N, C, S), G groups of C / G consecutive channels
// (numerics: specs/group_norm.md; the Numba kernels in normref/kernels/numba/channel_norms.py
// compute the same).
//
// T is the storage dtype (float, __half, double), Acc the accumulation dtype (float, float, double).
// Each (sample, group) is a row of cg * s contiguous values, normalized like a LayerNorm row (one
// block per row, layer_norm.cu's *_long kernels) but with the weight and bias of each value's
// channel, g * cg + j / s for the row's j-th value. Passes after the first re-read the row from
// L1/L2. The parameter gradients are summed per (sample, channel) by group_norm_bwd, then over the
// samples, in order, by reduce.cuh's param_grad_finish: no atomics, same input, same bits.
#include "reduce.cuh"

namespace normref {

// Shifted two-pass (reduce.cuh: shifted_moments): K = the row's first value,
// mean_d = sum(x - K) / n, rstd = 1 / sqrt(sum((x - K - mean_d)^2) / n + eps),
// y = ((x - K) - mean_d) * rstd * w + b, mean = K + mean_d. weight, bias: nullptr for 1 and 0.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    group_norm_fwd(const T* __restrict__ x, const Acc* __restrict__ weight,
                   const Acc* __restrict__ bias, Acc eps, T* __restrict__ y,
                   Acc* __restrict__ mean, Acc* __restrict__ rstd, int groups, int cg, int s) {
    const long long row = blockIdx.x;  // sample * groups + group
    const int n = cg * s;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int first_channel = static_cast<int>(row % groups) * cg;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    const Moments<Acc> m = shifted_moments<Acc>(xr, n);
    const Acc r = inv_sqrt(m.sq / n + eps);

    for (int j = tid; j < n; j += stride) {
        const int ch = first_channel + j / s;
        Acc v = ((to_acc(xr[j]) - m.shift) - m.mean_d) * r;
        if (weight != nullptr) v *= weight[ch];
        if (bias != nullptr) v += bias[ch];
        yr[j] = Store<T>::from(v);
    }
    if (tid == 0) {
        mean[row] = m.shift + m.mean_d;
        rstd[row] = r;
    }
}

// Backward, per row, with x_hat' = (x - mean) * rstd and g = dy * weight[channel]:
//   pass 1: sum(g), sum(g x_hat'), sum(x_hat')  ->  centre = mean(x_hat') (re-centring x_hat
//           cancels the saved mean's rounding), mean(g), mean(g x_hat) = mean(g x_hat') - centre
//           * mean(g);
//   pass 2: dx = rstd * (g - mean(g) - (x_hat' - centre) * mean(g x_hat));
//   pass 3 (dweight_partial or dbias_partial not null): one warp per channel of the group sums
//           dy * x_hat and dy over the channel's s values into [sample, channel] of (N, C).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads, 1)
    group_norm_bwd(const T* __restrict__ dy, const T* __restrict__ x,
                   const Acc* __restrict__ mean, const Acc* __restrict__ rstd,
                   const Acc* __restrict__ weight, T* __restrict__ dx,
                   Acc* __restrict__ dweight_partial, Acc* __restrict__ dbias_partial, int groups,
                   int cg, int s) {
    const long long row = blockIdx.x;
    const int n = cg * s;
    const long long base = row * n;
    const int first_channel = static_cast<int>(row % groups) * cg;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc m = mean[row];
    const Acc r = rstd[row];

    Acc t[3] = {Acc(0), Acc(0), Acc(0)};  // sum(g), sum(g x_hat'), sum(x_hat')
    for (int j = tid; j < n; j += stride) {
        const Acc xh = (to_acc(x[base + j]) - m) * r;
        Acc g = to_acc(dy[base + j]);
        if (weight != nullptr) g *= weight[first_channel + j / s];
        t[0] += g;
        t[1] += g * xh;
        t[2] += xh;
    }
    block_sum(t);
    const Acc mean_g = t[0] / n;
    const Acc centre = t[2] / n;
    const Acc mean_gxh = t[1] / n - centre * mean_g;

    for (int j = tid; j < n; j += stride) {
        const Acc xh = (to_acc(x[base + j]) - m) * r - centre;
        Acc g = to_acc(dy[base + j]);
        if (weight != nullptr) g *= weight[first_channel + j / s];
        dx[base + j] = Store<T>::from(r * (g - mean_g - xh * mean_gxh));
    }

    if (dweight_partial == nullptr && dbias_partial == nullptr) return;
    const int lane = tid % kWarp;
    const long long channels = static_cast<long long>(cg) * groups;
    const long long sample = row / groups;
    for (int j = tid / kWarp; j < cg; j += stride / kWarp) {
        Acc sw = Acc(0);
        Acc sb = Acc(0);
        for (int k = lane; k < s; k += kWarp) {
            const long long at = base + static_cast<long long>(j) * s + k;
            const Acc d = to_acc(dy[at]);
            sw += d * ((to_acc(x[at]) - m) * r - centre);
            sb += d;
        }
        sw = warp_sum(sw);
        sb = warp_sum(sb);
        if (lane == 0) {
            const long long at = sample * channels + first_channel + j;
            if (dweight_partial != nullptr) dweight_partial[at] = sw;
            if (dbias_partial != nullptr) dbias_partial[at] = sb;
        }
    }
}

}  // namespace normref
