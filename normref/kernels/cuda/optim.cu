// Fused in-place optimizer updates: SGD, Adam/AdamW and Lion (normref/optim/sgd.py, adam.py,
// lion.py; the Numba twins are normref/kernels/numba/optim.py).
//
// Each kernel is the reference `_math` of its optimizer, element by element, in the same operation
// order: one pass over memory that reads p, g and the state once and writes p and the state once
// (params in, params out). T is the param's storage type (float, __half, bf16_bits); the state and
// every coefficient are float, each coefficient rounded once to float by the launcher, as NumPy
// rounds a Python float operand of a float32 array.
//
// Bitwise equal to the reference: optim_launch.py compiles this file with --fmad=false, so that
// `a * b + c` stays two roundings (NVRTC would otherwise contract it into a fused multiply-add);
// sqrt and division are the IEEE-rounded sqrt_rn / div_rn below; denormals are kept (no -ftz).
//
// 16-bit params: the param itself is the master copy, as in the reference (base.py `_one`):
// widened to float exactly, updated against the float state, rounded once to nearest even.
//
// Launch (optim_launch.py: launch_config): 1-D blocks of kThreads, a grid-stride loop over
// 64-bit indices, so any grid covers any n. Elementwise: no thread talks to another.

// reduce.cuh: to_acc / Store, the float16 conversions the norm kernels use (on its own line, no
// comment after it: launch.module_source inlines only a bare #include "x.cuh" line).
#include "reduce.cuh"

namespace normref {

constexpr int kThreads = 256;  // launch_config's block; THREADS in optim_launch.py

// Options, one bit each of the kernels' `flags` (optim_launch.py sets them from the coefficients).
constexpr int kMaximize = 1;     // g = -g
constexpr int kDecay = 2;        // weight_decay != 0 (adam: with kDecoupled, p *= 1 - lr * wd)
constexpr int kDecoupled = 4;    // adam: decoupled decay (adamw) instead of L2
constexpr int kMomentum = 8;     // sgd: a momentum buffer exists and momentum != 0 this step
constexpr int kFirst = 16;       // sgd: the first update, the buffer starts as g
constexpr int kNesterov = 32;    // sgd
constexpr int kAmsgrad = 64;     // adam: nu_max is kept
constexpr int kLerpLow = 128;    // adam: lerp weight 1 - b1 below 0.5 (adam._lerp's two forms)

// ---- bfloat16, as its raw bits (the emulator has no cuda_bf16.h; this needs nothing) ------------
struct bf16_bits {
    unsigned short bits;
};

// IEEE round-to-nearest sqrt and division, spelled out: exact whatever -prec-sqrt / -prec-div say.
// __fdiv_rn also keeps adam_update<float> free of the stack frame and spills that `/` costs on
// sm_80 (its slow path is a called subroutine there; tests/kernels/test_cuda_optim.py checks).
#if defined(__CUDACC__)
__device__ __forceinline__ unsigned f32_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ float bits_f32(unsigned u) { return __uint_as_float(u); }
__device__ __forceinline__ float sqrt_rn(float v) { return __fsqrt_rn(v); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
#else  // the CPU emulator (tests/cuda_emulator), compiled as C++20 for x86-64 SSE: IEEE already
inline unsigned f32_bits(float v) { return std::bit_cast<unsigned>(v); }
inline float bits_f32(unsigned u) { return std::bit_cast<float>(u); }
inline float sqrt_rn(float v) { return std::sqrt(v); }
inline float div_rn(float a, float b) { return a / b; }
#endif

// bfloat16 is the top half of a float32: widening is exact.
__device__ __forceinline__ float to_acc(bf16_bits v) { return bits_f32(unsigned(v.bits) << 16); }

template <>
struct Store<bf16_bits> {
    // Round to nearest even (as ml_dtypes and torch): adding 0x7fff, plus 1 when the kept half is
    // odd, carries exactly when the dropped half is above one half, or one half with an odd kept
    // half; overflow gives inf, correctly. A NaN stays a (quiet) NaN.
    __device__ static bf16_bits from(float v) {
        const unsigned u = f32_bits(v);
        if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<unsigned short>((u >> 16) | 0x40u)};
        return {static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
    }
};

__device__ __forceinline__ long long first_index() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() {
    return static_cast<long long>(gridDim.x) * blockDim.x;
}

// ---- the kernels ---------------------------------------------------------------------------------

// normref/optim/sgd.py SGD._math. buf: nullptr when momentum is 0 (kMomentum unset).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sgd_update(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ buf, long long n,
               int flags, float weight_decay, float momentum, float one_minus_dampening,
               float lr) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const float pi = to_acc(p[i]);
        float gi = to_acc(g[i]);
        if (flags & kMaximize) gi = -gi;
        if (flags & kDecay) gi = gi + weight_decay * pi;
        if (flags & kMomentum) {
            const float b = (flags & kFirst) ? gi : buf[i] * momentum + one_minus_dampening * gi;
            buf[i] = b;
            gi = (flags & kNesterov) ? gi + momentum * b : b;
        }
        p[i] = Store<T>::from(pi - lr * gi);
    }
}

// normref/optim/adam.py Adam._math. nu_max: nullptr without amsgrad. adam._lerp's weight is 1 - b1
// and one_minus_weight is 1 - (1 - b1) as the reference computes it in double; decay is
// 1 - lr * weight_decay; neg_step_size is -lr / bc1.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    adam_update(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ mu,
                float* __restrict__ nu, float* __restrict__ nu_max, long long n, int flags,
                float weight_decay, float decay, float weight, float one_minus_weight, float b2,
                float one_minus_b2, float bc2_sqrt, float eps, float neg_step_size) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        float pi = to_acc(p[i]);
        float gi = to_acc(g[i]);
        if (flags & kMaximize) gi = -gi;
        if (flags & kDecay) {
            if (flags & kDecoupled) {
                pi = pi * decay;
            } else {
                gi = gi + weight_decay * pi;
            }
        }
        float m = mu[i];
        m = (flags & kLerpLow) ? m + weight * (gi - m) : gi - (gi - m) * one_minus_weight;
        float v = nu[i] * b2 + one_minus_b2 * gi * gi;
        mu[i] = m;
        nu[i] = v;
        if (flags & kAmsgrad) {
            float v_max = nu_max[i];
            if (v > v_max || v != v) v_max = v;  // np.maximum: NaN when either is NaN
            nu_max[i] = v_max;
            v = v_max;
        }
        const float denom = div_rn(sqrt_rn(v), bc2_sqrt) + eps;
        p[i] = Store<T>::from(pi + div_rn(neg_step_size * m, denom));
    }
}

// normref/optim/lion.py Lion._math.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    lion_update(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ mu, long long n,
                int flags, float b1, float one_minus_b1, float weight_decay, float lr, float b2,
                float one_minus_b2) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const float pi = to_acc(p[i]);
        const float gi = to_acc(g[i]);
        const float m = mu[i];
        const float c = b1 * m + one_minus_b1 * gi;
        // np.sign: 1, -1, +0 for either zero, NaN for NaN
        float u = c > 0.0f ? 1.0f : c < 0.0f ? -1.0f : c == 0.0f ? 0.0f : c;
        if (flags & kDecay) u = u + weight_decay * pi;
        p[i] = Store<T>::from(pi - lr * u);
        mu[i] = b2 * m + one_minus_b2 * gi;
    }
}

}  // namespace normref
