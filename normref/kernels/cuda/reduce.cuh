// Shared pieces of the normalization kernels: dtype conversions, warp and block sums, the row
// statistics of the one-block-per-row kernels, and the deterministic column reduction that turns
// per-row terms into parameter gradients.
//
// Everything here is deterministic: a sum is always taken in the same order for a given launch
// geometry, and the geometry is a pure function of the shape (launch.py: launch_config), so the
// same inputs give bit-identical outputs run after run. No float atomics anywhere.
//
// This file is compiled three ways: by NVRTC through cupy.RawModule (launch.py inlines it into
// each .cu source), by nvcc in the tests, and by g++ against tests/cuda_emulator/include, which
// provides the CUDA names used here. Use only what that emulator header provides.
#pragma once

#include <cuda_fp16.h>

namespace normref {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// The largest block launch_config asks for. The row kernels declare
// __launch_bounds__(kMaxThreads, 1): "one such block per SM suffices" lets ptxas use up to 64
// registers a thread; without the 1 it held layer_norm_fwd<double, double, 4> to 32 registers
// on sm_80 and spilled (tests/kernels/test_cuda_nvcc.py checks for spills).
constexpr int kMaxThreads = 1024;

// ---- conversions: storage type T <-> accumulation type Acc -------------------------------------
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> struct Store;
template <> struct Store<float> {
    __device__ static float from(float v) { return v; }
};
template <> struct Store<double> {
    __device__ static double from(double v) { return v; }
};
template <> struct Store<__half> {
    // The one rounding of a float16 result: round to nearest even, as PyTorch does.
    __device__ static __half from(float v) { return __float2half_rn(v); }
};

// 1 / sqrt(v) with IEEE-rounded sqrt and division, as the contract and the reference compute it
// (NVRTC's defaults; rsqrtf would be up to 2 ulp off).
__device__ __forceinline__ float inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / sqrt(v); }
// sqrt(v), IEEE-rounded (weight norm's norm, weight standardization's std).
__device__ __forceinline__ float acc_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double acc_sqrt(double v) { return sqrt(v); }

// ---- warp and block sums --------------------------------------------------------------------------
// Butterfly (xor) reduction: every lane ends with the sum, and since a + b == b + a exactly, all
// lanes hold bit-identical values, so no broadcast is needed afterwards.
template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

// Sums each v[k] over the whole block; every thread gets the totals. blockDim.x must be a multiple
// of 32 (launch_config guarantees it) and every thread of the block must call this.
template <typename Acc, int N>
__device__ __forceinline__ void block_sum(Acc (&v)[N]) {
    __shared__ Acc partial[N][kWarp];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int warps = blockDim.x / kWarp;
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = warp_sum(v[k]);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) partial[k][warp] = v[k];
    }
    __syncthreads();
    // Every warp reduces the per-warp partials the same way, so every thread gets the same total
    // without another round trip through shared memory.
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = warp_sum(lane < warps ? partial[k][lane] : Acc(0));
    __syncthreads();  // partial may be overwritten by the next call once everyone has read it
}

// ---- row statistics of the one-block-per-row kernels -----------------------------------------------
// Thread t owns the row's elements t, t + blockDim.x, t + 2 blockDim.x, ... (coalesced loads).
// Each helper has two overloads: with an array Acc (&v)[VPT] the row is also left in registers for
// the caller's later passes (v[i] = element tid + i * blockDim.x, 0 past n); without it the row is
// read from memory only, and Acc must be named: shifted_moments<Acc>(xr, n). Every thread of the
// block must call them (they block_sum), and every thread gets the same results. Written once here
// so that LayerNorm, GroupNorm, RMSNorm and the reparameterizations keep one summation order.

// Shifted two-pass moments: K = x[0], d = x - K, mean_d = sum(d) / n, sq = sum((d - mean_d)^2);
// the row's mean is K + mean_d. Subtracting K first keeps float32 exact for rows with a large
// offset, and a constant row gives d == 0 exactly.
template <typename Acc>
struct Moments {
    Acc shift;   // K
    Acc mean_d;  // mean(x - K)
    Acc sq;      // sum((x - K - mean_d)^2)
};

template <typename Acc, typename T, int VPT>
__device__ __forceinline__ Moments<Acc> shifted_moments(const T* xr, int n, Acc (&d)[VPT]) {
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc shift = to_acc(xr[0]);
    Acc s[1] = {Acc(0)};
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        d[i] = j < n ? to_acc(xr[j]) - shift : Acc(0);
        s[0] += d[i];
    }
    block_sum(s);
    const Acc mean_d = s[0] / n;

    Acc q[1] = {Acc(0)};
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const Acc c = d[i] - mean_d;
        if (tid + i * stride < n) q[0] += c * c;  // padding slots hold 0, not mean_d: skip them
    }
    block_sum(q);
    return {shift, mean_d, q[0]};
}

template <typename Acc, typename T>
__device__ __forceinline__ Moments<Acc> shifted_moments(const T* xr, int n) {
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const Acc shift = to_acc(xr[0]);
    Acc s[1] = {Acc(0)};
    for (int j = tid; j < n; j += stride) s[0] += to_acc(xr[j]) - shift;
    block_sum(s);
    const Acc mean_d = s[0] / n;

    Acc q[1] = {Acc(0)};
    for (int j = tid; j < n; j += stride) {
        const Acc c = (to_acc(xr[j]) - shift) - mean_d;
        q[0] += c * c;
    }
    block_sum(q);
    return {shift, mean_d, q[0]};
}

// sum(x^2) over the row (RMSNorm's mean square, weight norm's squared norm).
template <typename Acc, typename T, int VPT>
__device__ __forceinline__ Acc sum_squares(const T* xr, int n, Acc (&v)[VPT]) {
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    Acc q[1] = {Acc(0)};
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int j = tid + i * stride;
        v[i] = j < n ? to_acc(xr[j]) : Acc(0);
        q[0] += v[i] * v[i];
    }
    block_sum(q);
    return q[0];
}

template <typename Acc, typename T>
__device__ __forceinline__ Acc sum_squares(const T* xr, int n) {
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    Acc q[1] = {Acc(0)};
    for (int j = tid; j < n; j += stride) {
        const Acc v = to_acc(xr[j]);
        q[0] += v * v;
    }
    block_sum(q);
    return q[0];
}

// ---- parameter gradients: two-stage column sums ---------------------------------------------------
// Stage 1, param_grad_partial: grid (ceil(n / 32), chunks), block (32, 8). Block (bx, c) sums
// columns [32 bx, 32 bx + 32) over rows [c * rows_per_chunk, (c + 1) * rows_per_chunk): thread
// (tx, ty) takes every 8th row of the chunk, then the 8 partial sums are added in ty order.
// With x_hat = (x - mean) * rstd - centre (mean, centre: nullptr -> 0; RMSNorm passes both null):
//     dweight_partial[c, j] = sum over the chunk's rows of dy * x_hat
//     dbias_partial[c, j]   = sum over the chunk's rows of dy
// Either output may be nullptr when that gradient is not wanted.
// Stage 2, param_grad_finish: one thread per column adds the chunks' partial sums in chunk order.
constexpr int kColTile = 32;
constexpr int kRowLanes = 8;

template <typename T, typename Acc>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    param_grad_partial(const T* __restrict__ dy, const T* __restrict__ x,
                       const Acc* __restrict__ mean, const Acc* __restrict__ rstd,
                       const Acc* __restrict__ centre, Acc* __restrict__ dweight_partial,
                       Acc* __restrict__ dbias_partial, int rows, int n, int rows_per_chunk) {
    __shared__ Acc sum_w[kRowLanes][kColTile];
    __shared__ Acc sum_b[kRowLanes][kColTile];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int col = blockIdx.x * kColTile + tx;
    const int chunk = blockIdx.y;
    const int row_begin = chunk * rows_per_chunk;
    // min(row_begin + rows_per_chunk, rows), written so that it cannot overflow int
    const int row_end = rows - row_begin < rows_per_chunk ? rows : row_begin + rows_per_chunk;

    Acc acc_w = Acc(0);
    Acc acc_b = Acc(0);
    if (col < n) {
        for (int r = row_begin + ty; r < row_end; r += kRowLanes) {
            const long long at = static_cast<long long>(r) * n + col;
            const Acc g = to_acc(dy[at]);
            if (dweight_partial != nullptr) {
                const Acc m = mean != nullptr ? mean[r] : Acc(0);
                const Acc c = centre != nullptr ? centre[r] : Acc(0);
                acc_w += g * ((to_acc(x[at]) - m) * rstd[r] - c);
            }
            acc_b += g;
        }
    }
    sum_w[ty][tx] = acc_w;
    sum_b[ty][tx] = acc_b;
    __syncthreads();
    if (ty == 0 && col < n) {
        for (int k = 1; k < kRowLanes; ++k) {
            acc_w += sum_w[k][tx];
            acc_b += sum_b[k][tx];
        }
        const long long at = static_cast<long long>(chunk) * n + col;
        if (dweight_partial != nullptr) dweight_partial[at] = acc_w;
        if (dbias_partial != nullptr) dbias_partial[at] = acc_b;
    }
}

template <typename Acc>
__global__ void param_grad_finish(const Acc* __restrict__ partial, int chunks, int n,
                                  Acc* __restrict__ out) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    Acc total = Acc(0);
    for (int c = 0; c < chunks; ++c) total += partial[static_cast<long long>(c) * n + col];
    out[col] = total;
}

}  // namespace normref
