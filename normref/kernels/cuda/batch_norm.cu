// BatchNorm forward and backward over x viewed as (N, C, S) (numerics: specs/batch_norm.md; the
// Numba kernels in normref/kernels/numba/channel_norms.py compute the same, in the same steps).
//
// T is the storage dtype (float, __half, double), Acc the accumulation dtype (float, float, double).
// Channel c's statistics are over its N * S values, which lie in N planes of S contiguous values.
// That work is cut into *units* of `rows` consecutive samples by `seg` consecutive positions of one
// channel, one block per unit; channel_launch.py (units) picks rows and seg from the shape only.
// Training forward:  batch_norm_stats (per unit) -> batch_norm_stats_finish (per channel)
//                    -> batch_norm_apply (elementwise)
// Backward:          batch_norm_bwd_partial (per unit) -> batch_norm_bwd_finish (per channel)
//                    -> batch_norm_bwd_dx (elementwise)
// Every sum is taken in an order fixed by the launch geometry: same input, same bits.
#include "reduce.cuh"

namespace normref {

constexpr int kUnitThreads = 256;  // blockDim.x of the per-unit kernels (channel_launch.py)
constexpr int kTile = 4096;        // values per block of the elementwise kernels

__device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }

// Unit u: numbered (sample block, channel, segment), segment fastest.
struct Unit {
    int channel, n0, rows, s0, len;  // samples [n0, n0 + rows), positions [s0, s0 + len)

    __device__ Unit(int u, int n, int c, int s, int unit_rows, int seg) {
        const int segments = s / seg + (s % seg != 0);
        channel = (u / segments) % c;
        n0 = u / segments / c * unit_rows;
        s0 = u % segments * seg;
        rows = min_int(unit_rows, n - n0);
        len = min_int(seg, s - s0);
    }
    __device__ int count() const { return rows * len; }
    // Where the unit's i-th value (0 <= i < count(), sample-major) sits in x.
    __device__ long long at(int i, int c, int s) const {
        const int r = i / len;
        return (static_cast<long long>(n0 + r) * c + channel) * s + s0 + (i - r * len);
    }
};

// The first value of a block of the elementwise kernels, and its channel: with these, each value's
// channel takes 32-bit arithmetic only (the 64-bit division happens once per thread).
struct Tile {
    long long begin;
    int offset0, channel0, size;  // begin's position in its plane, its channel, values here

    __device__ Tile(int c, int s, long long total) {
        begin = static_cast<long long>(blockIdx.x) * kTile;
        const long long plane = begin / s;
        offset0 = static_cast<int>(begin - plane * s);
        channel0 = static_cast<int>(plane % c);
        size = total - begin < kTile ? static_cast<int>(total - begin) : kTile;
    }
    __device__ int channel(int i, int c, int s) const { return (channel0 + (offset0 + i) / s) % c; }
};

// Per unit, shifted two-pass with the channel's first value K = x[0, c, 0]:
//   psum = sum(x - K), pm2 = sum((x - K - psum / count)^2).
// The second pass re-reads the unit from L1/L2; the first value's shift keeps float32 exact for a
// channel with a large offset, and a constant channel gives exactly 0.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kUnitThreads)
    batch_norm_stats(const T* __restrict__ x, Acc* __restrict__ psum, Acc* __restrict__ pm2, int n,
                     int c, int s, int unit_rows, int seg) {
    const Unit unit(blockIdx.x, n, c, s, unit_rows, seg);
    const int count = unit.count();
    const Acc shift = to_acc(x[static_cast<long long>(unit.channel) * s]);
    Acc t[1] = {Acc(0)};
    for (int i = threadIdx.x; i < count; i += blockDim.x) t[0] += to_acc(x[unit.at(i, c, s)]) - shift;
    block_sum(t);
    const Acc mean_u = t[0] / count;
    Acc q[1] = {Acc(0)};
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const Acc d = (to_acc(x[unit.at(i, c, s)]) - shift) - mean_u;
        q[0] += d * d;
    }
    block_sum(q);
    if (threadIdx.x == 0) {
        psum[blockIdx.x] = t[0];
        pm2[blockIdx.x] = q[0];
    }
}

// One block per channel combines its units (Chan et al.):
//   centre = mean_d = sum(psum) / m,  sumsq = sum(pm2 + count * (psum / count - mean_d)^2),
//   rstd = 1 / sqrt(sumsq / m + eps),  mean = K + mean_d;  shift = K and centre are kept for
// batch_norm_apply, which normalizes ((x - K) - mean_d) like the reference.
template <typename T, typename Acc>
__global__ void batch_norm_stats_finish(const T* __restrict__ x, const Acc* __restrict__ psum,
                                        const Acc* __restrict__ pm2, int n, int c, int s,
                                        int unit_rows, int seg, Acc eps, Acc* __restrict__ mean,
                                        Acc* __restrict__ rstd, Acc* __restrict__ sumsq,
                                        Acc* __restrict__ shift, Acc* __restrict__ centre) {
    const int channel = blockIdx.x;
    const int segments = s / seg + (s % seg != 0);
    const int per_channel = (n / unit_rows + (n % unit_rows != 0)) * segments;
    const Acc m = static_cast<Acc>(static_cast<long long>(n) * s);
    // the channel's v-th unit: sample block v / segments, segment v % segments
    auto unit_index = [&](int v) { return (v / segments * c + channel) * segments + v % segments; };
    Acc t[1] = {Acc(0)};
    for (int v = threadIdx.x; v < per_channel; v += blockDim.x) t[0] += psum[unit_index(v)];
    block_sum(t);
    const Acc mean_d = t[0] / m;
    Acc q[1] = {Acc(0)};
    for (int v = threadIdx.x; v < per_channel; v += blockDim.x) {
        const int u = unit_index(v);
        const Unit unit(u, n, c, s, unit_rows, seg);
        const Acc count = static_cast<Acc>(unit.count());
        const Acc d = psum[u] / count - mean_d;
        q[0] += pm2[u] + count * d * d;
    }
    block_sum(q);
    if (threadIdx.x == 0) {
        const Acc k = to_acc(x[static_cast<long long>(channel) * s]);
        mean[channel] = k + mean_d;
        rstd[channel] = inv_sqrt(q[0] / m + eps);
        sumsq[channel] = q[0];
        shift[channel] = k;
        centre[channel] = mean_d;
    }
}

// y = ((x - shift) - centre) * rstd * weight + bias per channel; centre, weight, bias: nullptr
// for 0, 1, 0. Eval passes the running mean as the shift and no centre.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kUnitThreads)
    batch_norm_apply(const T* __restrict__ x, const Acc* __restrict__ shift,
                     const Acc* __restrict__ centre, const Acc* __restrict__ rstd,
                     const Acc* __restrict__ weight, const Acc* __restrict__ bias, T* __restrict__ y,
                     int c, int s, long long total) {
    const Tile tile(c, s, total);
    for (int i = threadIdx.x; i < tile.size; i += blockDim.x) {
        const int ch = tile.channel(i, c, s);
        Acc v = to_acc(x[tile.begin + i]) - shift[ch];
        if (centre != nullptr) v -= centre[ch];
        v *= rstd[ch];
        if (weight != nullptr) v *= weight[ch];
        if (bias != nullptr) v += bias[ch];
        y[tile.begin + i] = Store<T>::from(v);
    }
}

// Per unit, with xc = x - mean[c]: sum(dy), sum(dy * xc), sum(xc), into partial[k * units + u].
// The weight is one number per channel: the finish applies it to the sums.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kUnitThreads)
    batch_norm_bwd_partial(const T* __restrict__ dy, const T* __restrict__ x,
                           const Acc* __restrict__ mean, Acc* __restrict__ partial, int n, int c,
                           int s, int unit_rows, int seg) {
    const Unit unit(blockIdx.x, n, c, s, unit_rows, seg);
    const int count = unit.count();
    const Acc mu = mean[unit.channel];
    Acc t[3] = {Acc(0), Acc(0), Acc(0)};
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const long long at = unit.at(i, c, s);
        const Acc g = to_acc(dy[at]);
        const Acc xc = to_acc(x[at]) - mu;
        t[0] += g;
        t[1] += g * xc;
        t[2] += xc;
    }
    block_sum(t);
    if (threadIdx.x == 0) {
        const long long units = gridDim.x;
        for (int k = 0; k < 3; ++k) partial[k * units + blockIdx.x] = t[k];
    }
}

// One block per channel adds its units' partial sums, then with x_hat' = (x - mean) * rstd and
// (batch statistics only) centre = mean(x_hat'), which re-centres x_hat to cancel the saved mean's
// rounding:
//   dbias = sum(dy),  dweight = sum(dy * x_hat') - centre * sum(dy)  (= sum(dy * x_hat)),
//   coefficient = (mean(g), centre, mean(g * x_hat)) with mean(g) = weight * sum(dy) / m and
//   mean(g * x_hat) = weight * sum(dy * x_hat') / m - centre * mean(g).
// dweight, dbias, weight, coefficient: nullptr when not wanted / absent (weight 1).
template <typename Acc>
__global__ void batch_norm_bwd_finish(const Acc* __restrict__ partial, const Acc* __restrict__ rstd,
                                      const Acc* __restrict__ weight, int n, int c, int s,
                                      int unit_rows, int seg, int units, int batch_stats,
                                      Acc* __restrict__ dweight, Acc* __restrict__ dbias,
                                      Acc* __restrict__ coefficient) {
    const int channel = blockIdx.x;
    const int segments = s / seg + (s % seg != 0);
    const int per_channel = (n / unit_rows + (n % unit_rows != 0)) * segments;
    Acc t[3] = {Acc(0), Acc(0), Acc(0)};
    for (int v = threadIdx.x; v < per_channel; v += blockDim.x) {
        const long long u = (v / segments * c + channel) * segments + v % segments;
        for (int k = 0; k < 3; ++k) t[k] += partial[k * static_cast<long long>(units) + u];
    }
    block_sum(t);
    if (threadIdx.x != 0) return;  // after the last block_sum: no barrier follows
    const Acc m = static_cast<Acc>(static_cast<long long>(n) * s);
    const Acc r = rstd[channel];
    const Acc w = weight != nullptr ? weight[channel] : Acc(1);
    const Acc sdyx = t[1] * r;
    const Acc cx = batch_stats ? t[2] * r / m : Acc(0);
    if (dbias != nullptr) dbias[channel] = t[0];
    if (dweight != nullptr) dweight[channel] = batch_stats ? sdyx - cx * t[0] : sdyx;
    if (coefficient != nullptr) {
        const Acc mg = w * t[0] / m;
        coefficient[channel] = mg;
        coefficient[c + channel] = cx;
        coefficient[2 * c + channel] = w * sdyx / m - cx * mg;
    }
}

// dx per value: with the coefficients (batch statistics),
//   dx = rstd * (dy * weight - mean(g) - ((x - mean) * rstd - centre) * mean(g * x_hat));
// without (coefficient nullptr: fixed statistics), dx = dy * weight * rstd.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kUnitThreads)
    batch_norm_bwd_dx(const T* __restrict__ dy, const T* __restrict__ x,
                      const Acc* __restrict__ mean, const Acc* __restrict__ rstd,
                      const Acc* __restrict__ weight, const Acc* __restrict__ coefficient,
                      T* __restrict__ dx, int c, int s, long long total) {
    const Tile tile(c, s, total);
    for (int i = threadIdx.x; i < tile.size; i += blockDim.x) {
        const long long at = tile.begin + i;
        const int ch = tile.channel(i, c, s);
        const Acc r = rstd[ch];
        Acc g = to_acc(dy[at]);
        if (weight != nullptr) g *= weight[ch];
        if (coefficient == nullptr) {
            dx[at] = Store<T>::from(g * r);
        } else {
            const Acc xh = (to_acc(x[at]) - mean[ch]) * r - coefficient[c + ch];
            dx[at] = Store<T>::from(r * (g - coefficient[ch] - xh * coefficient[2 * c + ch]));
        }
    }
}

}  // namespace normref
