// A CPU emulation of the parts of CUDA that normref's kernels use, so that the very same .cu
// sources compile with g++ (-std=c++20 -pthread) and run in the tests on a machine without a GPU.
//
// The model, kept as close to the hardware's semantics as the kernels can observe:
//   - one OS thread per CUDA thread of a block; the blocks of a grid run one after another, on the
//     same set of threads (a barrier separates consecutive blocks);
//   - __syncthreads() is a std::barrier over the block; it also checks that every thread reached
//     the same barrier (a divergent __syncthreads aborts with a message instead of hanging);
//   - warp shuffles exchange values through a per-warp slot array guarded by a per-warp barrier,
//     so a shuffle really waits for all 32 lanes, as __shfl_*_sync(0xffffffff, ...) does;
//   - __shared__ variables are function-local statics: one copy, shared by the threads of the
//     running block (launches are serialized, so blocks never share them concurrently);
//   - threadIdx, blockIdx, blockDim, gridDim are thread-local;
//   - __half stores IEEE binary16 bits; conversions round to nearest even like the GPU's;
//   - optional jitter (emu_set_jitter): warps leave each barrier out of step, to expose races.
// Not emulated: anything the kernels do not use (atomics, dynamic shared memory, partial-warp
// masks, streams). Using it fails to compile or aborts with a message.
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// ---- float16 -------------------------------------------------------------------------------------
struct __half {
    std::uint16_t bits;  // trivially constructible, like the raw storage it stands for
};

inline float __half2float(__half h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
    const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
    const std::uint32_t mantissa = h.bits & 0x3ffu;
    if (exponent == 0x1f)  // inf, or NaN with its payload kept
        return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline __half __float2half_rn(float f) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u)  // inf stays inf; NaN becomes a quiet NaN
        return {static_cast<std::uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u))};
    if (a >= 0x477ff000u)  // >= 65520, halfway past the largest half (65504): ties to even -> inf
        return {static_cast<std::uint16_t>(sign | 0x7c00u)};
    if (a < 0x38800000u) {  // below 2^-14: a subnormal half, m * 2^-24
        if (a <= 0x33000000u) return {sign};  // <= 2^-25: rounds to zero (2^-25 ties to even 0)
        const std::uint32_t exponent = a >> 23;
        const std::uint32_t mantissa = (a & 0x7fffffu) | 0x800000u;  // value = mantissa * 2^(e-150)
        const std::uint32_t shift = 126 - exponent;                  // so m = mantissa >> shift
        std::uint32_t m = mantissa >> shift;
        const std::uint32_t rest = mantissa & ((1u << shift) - 1);
        const std::uint32_t half_way = 1u << (shift - 1);
        if (rest > half_way || (rest == half_way && (m & 1))) ++m;  // may carry into the normals
        return {static_cast<std::uint16_t>(sign | m)};
    }
    // Normal: rebias the exponent (127 -> 15) and keep the top 10 mantissa bits, rounding the 13
    // dropped ones to nearest even; a carry out of the mantissa correctly bumps the exponent.
    std::uint32_t h = (a >> 13) - (112u << 10);
    const std::uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) ++h;
    return {static_cast<std::uint16_t>(sign | h)};
}

inline __half __float2half(float f) { return __float2half_rn(f); }

// The GPU's rsqrtf is within 2 ulp; this one is correctly rounded up to the division.
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline double rsqrt(double v) { return 1.0 / sqrt(v); }

// ---- the thread model ---------------------------------------------------------------------------
namespace emu {

constexpr int kWarpSize = 32;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda emulator: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

struct Warp {
    explicit Warp(int lane_count) : lanes(lane_count), sync(lane_count) {}
    int lanes;
    std::barrier<> sync;
    // Two slot sets used alternately: a lane may write the next shuffle's slot while a slower
    // lane still reads this one's, and the barrier in between makes a third write wait.
    alignas(8) unsigned char slot[2][kWarpSize][8];
};

struct Block;

// Runs once per barrier phase, after every thread arrived: all must be at the same barrier.
struct SameBarrier {
    Block* block;
    void operator()() noexcept;
};

struct Block {
    Block(int threads, int warps) : at(threads), sync(threads, SameBarrier{this}) {
        for (int w = 0; w < warps; ++w)
            lanes.push_back(std::make_unique<Warp>(std::min(kWarpSize, threads - w * kWarpSize)));
    }
    std::vector<long> at;  // per thread: n for its n-th __syncthreads of this block, -1 at its end
    std::barrier<SameBarrier> sync;
    std::vector<std::unique_ptr<Warp>> lanes;  // one per warp
};

inline void SameBarrier::operator()() noexcept {
    for (std::size_t t = 1; t < block->at.size(); ++t) {
        if (block->at[t] != block->at[0]) {
            char what[160];
            std::snprintf(what, sizeof what,
                          "divergent __syncthreads: thread 0 at barrier %ld, thread %zu at %ld "
                          "(-1: the end of the kernel)",
                          block->at[0], t, block->at[t]);
            fail(what);
        }
    }
}

// Jitter: after every barrier (__syncthreads, a block's end) each warp sleeps a pseudo-random 0..jitter_us microseconds
// (the same for all its lanes, different per warp and per barrier), so that warps leave barriers
// out of step as they do on a GPU, and a missing barrier shows up as a wrong result instead of
// passing by luck of the OS scheduler. The pattern is a function of jitter_seed; both are set
// by emu_set_jitter (jitter_us 0: off).
inline std::atomic<int> jitter_us{0};
inline std::atomic<unsigned> jitter_seed{0};

struct ThreadState {
    Block* block = nullptr;
    Warp* warp = nullptr;
    int tid = 0;            // linear index in the block
    int lane = 0;           // tid % 32
    long syncs = 0;         // __syncthreads calls so far in this block
    int phase = 0;          // which slot set the next shuffle uses
    unsigned barriers = 0;  // barriers passed in this launch: the same count across a warp
};
inline thread_local ThreadState self;

inline void jitter() {
    const int most = jitter_us.load(std::memory_order_relaxed);
    if (most <= 0) return;
    unsigned h = (static_cast<unsigned>(self.tid / kWarpSize) + 1) * 2654435761u;
    h ^= ++self.barriers * 2246822519u + jitter_seed.load(std::memory_order_relaxed);
    h ^= h >> 15;
    h *= 3266489917u;
    h ^= h >> 13;
    const unsigned us = h % static_cast<unsigned>(most + 1);
    if (us != 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

template <typename V>
V shuffle_from(unsigned mask, V value, int source_lane) {
    static_assert(std::is_trivially_copyable_v<V> && sizeof(V) <= 8, "shuffle of a 1-8 byte value");
    Warp& warp = *self.warp;
    if (mask != 0xffffffffu || warp.lanes != kWarpSize)
        fail("only full-warp shuffles (mask 0xffffffff, blockDim a multiple of 32) are emulated");
    std::memcpy(warp.slot[self.phase][self.lane], &value, sizeof(V));
    warp.sync.arrive_and_wait();
    V out;
    std::memcpy(&out, warp.slot[self.phase][source_lane], sizeof(V));
    self.phase ^= 1;
    return out;
}

inline void check_width(int width) {
    if (width != kWarpSize) fail("only width-32 shuffles are emulated");
}

}  // namespace emu

inline void __syncthreads() {
    emu::self.block->at[emu::self.tid] = ++emu::self.syncs;
    emu::self.block->sync.arrive_and_wait();
    emu::jitter();
}

template <typename V>
V __shfl_xor_sync(unsigned mask, V value, int lane_mask, int width = 32) {
    emu::check_width(width);
    return emu::shuffle_from(mask, value, (emu::self.lane ^ lane_mask) & 31);
}

template <typename V>
V __shfl_down_sync(unsigned mask, V value, unsigned delta, int width = 32) {
    emu::check_width(width);
    const int source = emu::self.lane + static_cast<int>(delta);
    return emu::shuffle_from(mask, value, source < 32 ? source : emu::self.lane);
}

template <typename V>
V __shfl_up_sync(unsigned mask, V value, unsigned delta, int width = 32) {
    emu::check_width(width);
    const int source = emu::self.lane - static_cast<int>(delta);
    return emu::shuffle_from(mask, value, source >= 0 ? source : emu::self.lane);
}

template <typename V>
V __shfl_sync(unsigned mask, V value, int source_lane, int width = 32) {
    emu::check_width(width);
    return emu::shuffle_from(mask, value, source_lane & 31);
}

// ---- launching ------------------------------------------------------------------------------------
namespace emu {

inline std::mutex launch_mutex;  // one launch at a time: __shared__ statics are per kernel, not per launch

// Runs body() as every thread of every block of the grid. Returns false (and fills err) when the
// threads cannot be created; then nothing has run.
inline bool run_grid(dim3 grid, dim3 block, const std::function<void()>& body, char* err,
                     int err_len) {
    const int threads = static_cast<int>(block.x * block.y * block.z);
    const int warps = (threads + kWarpSize - 1) / kWarpSize;
    Block shared_block(threads, warps);
    std::latch start(1);
    bool cancelled = false;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    try {
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                start.wait();
                if (cancelled) return;
                threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                blockDim = block;
                gridDim = grid;
                self = ThreadState{&shared_block, shared_block.lanes[t / kWarpSize].get(), t,
                                   t % kWarpSize};
                for (unsigned z = 0; z < grid.z; ++z)
                    for (unsigned y = 0; y < grid.y; ++y)
                        for (unsigned x = 0; x < grid.x; ++x) {
                            blockIdx = {x, y, z};
                            body();
                            // The block ends when all its threads are done: only then may the
                            // next block reuse the shared statics.
                            shared_block.at[t] = -1;
                            shared_block.sync.arrive_and_wait();
                            self.syncs = 0;
                            jitter();
                        }
            });
        }
    } catch (const std::system_error& e) {
        std::snprintf(err, err_len, "could not start %d threads: %s", threads, e.what());
        cancelled = true;
    }
    start.count_down();
    for (auto& thread : pool) thread.join();
    return !cancelled;
}

// Argument kinds the Python side sends: 'p' pointer (size: element bytes, 0 for NULL),
// 'i' integer, 'f' floating point (size: bytes).
template <typename P>
bool argument_matches(char kind, long long size) {
    if constexpr (std::is_pointer_v<P>) {
        using Element = std::remove_cv_t<std::remove_pointer_t<P>>;
        return kind == 'p' && (size == 0 || size == static_cast<long long>(sizeof(Element)));
    } else if constexpr (std::is_integral_v<P>) {
        return kind == 'i' && size == static_cast<long long>(sizeof(P));
    } else if constexpr (std::is_floating_point_v<P>) {
        return kind == 'f' && size == static_cast<long long>(sizeof(P));
    } else {
        return false;
    }
}

template <typename P>
const char* kind_name() {
    if constexpr (std::is_pointer_v<P>) return "a pointer";
    else if constexpr (std::is_integral_v<P>) return "an integer";
    else return "a floating-point value";
}

template <typename... P, std::size_t... I>
bool check_arguments(const char* kinds, const long long* sizes, char* err, int err_len,
                     std::index_sequence<I...>) {
    bool ok = true;
    auto check = [&](bool matches, std::size_t i, const char* expected, std::size_t bytes) {
        if (ok && !matches) {
            std::snprintf(err, err_len,
                          "argument %zu: the kernel takes %s of %zu bytes (pointers: element "
                          "bytes), got kind '%c' of %lld bytes",
                          i, expected, bytes, kinds[i], sizes[i]);
            ok = false;
        }
    };
    (check(argument_matches<P>(kinds[I], sizes[I]), I, kind_name<P>(),
           std::is_pointer_v<P> ? sizeof(std::remove_pointer_t<P>) : sizeof(P)),
     ...);
    return ok;
}

// The entry point of every exported kernel: like cuLaunchKernel, args[i] points at the value of
// parameter i. Checks the arguments against the kernel's parameter types, then runs the grid.
// dims: grid x, y, z, block x, y, z. Returns 0, or 1 with a message in err.
template <typename... P>
int launch(void (*kernel)(P...), const unsigned* dims, int nargs, void** args, const char* kinds,
           const long long* sizes, char* err, int err_len) {
    if (nargs != static_cast<int>(sizeof...(P))) {
        std::snprintf(err, err_len, "the kernel takes %zu arguments, got %d", sizeof...(P), nargs);
        return 1;
    }
    if (!check_arguments<P...>(kinds, sizes, err, err_len, std::index_sequence_for<P...>{}))
        return 1;
    const dim3 grid{dims[0], dims[1], dims[2]};
    const dim3 block{dims[3], dims[4], dims[5]};
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        std::snprintf(err, err_len, "invalid launch: grid (%u, %u, %u), block (%u, %u, %u)",
                      grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return 1;
    }
    const std::tuple<P...> values = [&]<std::size_t... I>(std::index_sequence<I...>) {
        return std::tuple<P...>{*static_cast<std::remove_cv_t<P>*>(args[I])...};
    }(std::index_sequence_for<P...>{});
    std::lock_guard<std::mutex> one_at_a_time(launch_mutex);
    // Each thread calls the kernel with its own copy of the arguments, as on the GPU.
    auto body = [&] {
        std::tuple<P...> mine = values;
        std::apply(kernel, mine);
    };
    return run_grid(grid, block, body, err, err_len) ? 0 : 1;
}

}  // namespace emu
