"""Numba CPU kernels for BatchNorm and GroupNorm, forward and backward.

The op wrappers (normref/norms/batch_norm.py, group_norm.py) validate, view x as a C-contiguous
(N, C, S) array (S = prod(spatial)), allocate the outputs, cast weight/bias to the accumulation
dtype (float64 for float64, float32 otherwise) and call the five functions at the bottom of this
module. x, y, dy and dx may be float16 or bfloat16: the entry points pass them on as their bits,
which the kernels read and write through _half.py's `load` and `store` (computed in float32,
rounded once, as the reference does; each kernel compiles once more per 16-bit format):

    batch_norm_forward(x, weight, bias, eps, y, mean, rstd, sumsq)     batch statistics
        x, y: (N, C, S); weight, bias: (C,) or None; mean, rstd, sumsq: (C,), written
    batch_norm_apply(x, mean, rstd, weight, bias, y)                    given statistics (eval)
    batch_norm_backward(dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias)
        batch_stats: True when mean and rstd came from x (the training backward goes through
        them), False for fixed running statistics (dx = dy * weight * rstd)
        dweight, dbias: (C,) to write, or None when that gradient is not wanted
    group_norm_forward(x, weight, bias, eps, y, mean, rstd)
        mean, rstd: (N, G), written; G = mean.shape[1] must divide C
    group_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias)

The numerics are the references' (batch_norm.py `_moments`, specs/batch_norm.md, group_norm.md):
shifted two-pass statistics with the shift K = the first value of the channel (BatchNorm) or of
the (sample, group) (GroupNorm), mean = K + mean_d saved, and a backward that re-centres the
recomputed x_hat. They are built like norms.py's LayerNorm kernels:

- ``fastmath={'reassoc'}`` and nothing else (vectorized reductions, IEEE NaN/Inf, no fused
  multiply-adds); the shift ``x - K`` and every ``x - mean`` go through ``_minus``, compiled
  without fastmath, so that reassociation cannot fold them into the sums around them.
- Sums are blocked: partial sums of ``_BLOCK`` values (or of a block's rows, down a column) are
  added into a unit's total, and the units' totals into the channel's, always in the same order.
- Deterministic for any thread count: parallel loops write only per-unit (or per-row, per-channel)
  results, and every total is taken by one thread in a fixed order.
- GroupNorm is LayerNorm over each (sample, group) row of C/G * S contiguous values, with the
  weight and bias of each value's channel. The backward's first pass sums dy, dy * (x - mean) and
  x - mean per (sample, channel) plane, so the weight multiplies three sums per channel instead of
  every value, and those sums give the parameter gradients too, added over the samples in order.
- BatchNorm reduces over N * S values per channel, spread over N planes: that work is cut into
  units (`batch_norm_units`, a function of the shape only). Each unit takes its own two passes
  while its values sit in cache, sum(x - K), then sum((x - K - unit mean)^2), and the units'
  (count, sum, M2) are combined per channel with Chan et al.'s formula, sumsq = sum over units of
  M2_u + count_u * (mean_u - mean_d)^2: x is read from memory once for the statistics instead of
  twice. Two layouts: planes of S >= 200 values are reduced along the plane (a unit: a few
  samples by a segment of positions of one channel); shorter ones ((N, C) inputs, small feature
  maps), where a plane is too short to vectorize, down the columns of the (N, C * S) view (a unit:
  a block of samples, all columns, with a partial per column). Measured crossover: S ~ 196.
- The plane layout's training kernels run a channel per parallel iteration, its units in order:
  the forward normalizes the channel, and the backward writes its dx, right after its statistics,
  while its N * S values are still in L2 (400 KiB at (32, 64, 56, 56)). x (and dy) are then read
  from memory once per pass instead of twice: forward 1.67 -> 1.31 ms there, with the same bits.
  The price is parallelism over channels only, so a BatchNorm over fewer channels than threads
  leaves threads idle.
- Absent weight/bias/dweight/dbias are replaced by ones, zeros and scratch arrays of C values
  instead of compiling a None specialisation of each kernel: x_hat * 1 + 0 == x_hat exactly
  (-0 aside) and dy * 1 == dy, so the results are those of the pruned branches, and CI compiles
  one specialisation per kernel and dtype (every parallel specialisation costs seconds).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from normref.kernels.numba._half import as_bits, load, store, zero
from normref.kernels.numba._prefetch import prefetch_block

__all__ = [
    "batch_norm_units",
    "batch_norm_forward",
    "batch_norm_apply",
    "batch_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]

_FASTMATH = {"reassoc"}
_BLOCK = 256  # elements per partial sum
_UNIT = 8192  # values a BatchNorm plane unit aims at (32 KiB of float32: its second pass hits L1)
_SHORT = 200  # planes shorter than this use the column layout (measured crossover: S ~ 196)
_COLUMN_ROWS = 256  # column layout: at most this many samples per block (sequential column sums)
_SLAB = 1 << 18  # ... and at most this many values (1 MiB of float32: its second pass hits L2)


def _kernel(fn):
    return njit(cache=True, parallel=True, fastmath=_FASTMATH)(fn)


@njit(cache=True)  # strict IEEE on purpose: see the module docstring
def _minus(a, b):
    return a - b


def batch_norm_units(n: int, c: int, s: int) -> tuple[int, int]:
    """(rows, seg): BatchNorm's work units, a function of the shape only (so results do not
    depend on the thread count).

    Planes of S >= _SHORT values (the plane layout): a unit is `rows` consecutive samples by `seg`
    consecutive positions of one channel, up to _UNIT values. Long planes are cut into about equal
    segments, short ones grouped over samples (fewer, larger units: each costs integer divisions
    and loop epilogues).

    Shorter planes ((N, C) inputs, tiny feature maps; seg = 0, the column layout): x is viewed as
    (N, C * S) rows, and a unit is a block of `rows` samples reduced down its columns with the row
    vectorized, where reducing along a plane of a few values could not be.
    """
    if s < _SHORT:
        return max(1, min(n, _COLUMN_ROWS, _SLAB // (c * s))), 0
    if s >= _UNIT:
        segments = -(-s // _UNIT)
        return 1, -(-s // segments)
    return min(n, _UNIT // s), s


@njit(cache=True)
def _unit(u, n, c, s, rows, seg):
    """Plane layout: (channel, index p among the channel's units, n0, n1, s0, s1) of unit u,
    samples [n0, n1) by positions [s0, s1). Units are numbered (sample block, channel, segment),
    segments fastest: a thread's consecutive units share their samples."""
    segments = (s + seg - 1) // seg
    block = u // (segments * c)
    j = u % segments
    n0 = block * rows
    s0 = j * seg
    return (u // segments) % c, block * segments + j, n0, min(n, n0 + rows), s0, min(s, s0 + seg)


@njit(cache=True)
def _unit_index(ch, p, c, segments):
    """Plane layout: the number u of channel ch's p-th unit (the inverse of _unit)."""
    return ((p // segments) * c + ch) * segments + p % segments


@njit(cache=True)
def _channel_unit(ch, p, n, c, s, rows, seg):
    """Plane layout: (n0, n1, s0, s1) of channel ch's p-th unit."""
    u = _unit_index(ch, p, c, (s + seg - 1) // seg)
    return _unit(u, n, c, s, rows, seg)[2:]


@njit(cache=True)
def _per_channel(n, s, rows, seg):
    """Plane layout: how many units each channel has."""
    return ((n + rows - 1) // rows) * ((s + seg - 1) // seg)


@njit(cache=True)
def _spread(psum, pm2, count, mean_d):
    """A part's sum of squares about the channel's mean, from its own sum and sum of squares about
    its own mean (Chan et al.): pm2 + count * (psum / count - mean_d)^2. Strict IEEE."""
    d = psum / count - mean_d
    return pm2 + count * d * d


@njit(cache=True)
def _finish_channel(ch, m, eps, k, t, q, centre, mean, rstd):
    """Channel ch's statistics from t = sum(x - K) and q, its sum of squares about its mean, over
    m values: centre (mean_d = t / m), rstd and mean = K + mean_d. Strict IEEE."""
    acc = mean.dtype.type
    centre[ch] = t / m
    rstd[ch] = acc(1) / np.sqrt(q / m + acc(eps))
    mean[ch] = k + centre[ch]


@njit(cache=True)
def _finish_stats(n, s, eps, shift, centre, sumsq, mean, rstd):
    """From each channel's centre (sum(x - K), made its mean here) and sum of squares."""
    m = mean.dtype.type(n * s)
    for ch in range(mean.shape[0]):
        _finish_channel(ch, m, eps, shift[ch], centre[ch], sumsq[ch], centre, mean, rstd)


@njit(cache=True, fastmath=_FASTMATH)
def _sum_shifted(v, k):
    """sum(v - k), blocked."""
    total = zero(v)
    for b in range(0, v.shape[0], _BLOCK):
        vb = v[b : b + _BLOCK]
        t = zero(v)
        for j in range(vb.shape[0]):
            t += _minus(load(vb, j), k)
        total += t
    return total


@njit(cache=True, fastmath=_FASTMATH)
def _sum_sq_shifted(v, k, m):
    """sum(((v - k) - m)^2), blocked."""
    total = zero(v)
    for b in range(0, v.shape[0], _BLOCK):
        vb = v[b : b + _BLOCK]
        t = zero(v)
        for j in range(vb.shape[0]):
            d = _minus(_minus(load(vb, j), k), m)
            t += d * d
        total += t
    return total


@njit(cache=True, fastmath=_FASTMATH)
def _normalize(v, k, m, r, w, b, out):
    """out = ((v - k) - m) * r * w + b."""
    for j in range(v.shape[0]):
        store(out, j, _minus(_minus(load(v, j), k), m) * r * w + b)


@njit(cache=True, fastmath=_FASTMATH)
def _centred_sums(dy, x, mu):
    """(sum(dy), sum(dy * (x - mu)), sum(x - mu)), blocked. The weight is one number per plane,
    so the callers apply it to these sums instead of to every element."""
    sg = sgx = sx = zero(x)
    for b in range(0, x.shape[0], _BLOCK):
        xb = x[b : b + _BLOCK]
        dyb = dy[b : b + _BLOCK]
        tg = tgx = tx = zero(x)
        for j in range(xb.shape[0]):
            xc = _minus(load(xb, j), mu)
            d = load(dyb, j)
            tg += d
            tgx += d * xc
            tx += xc
        sg += tg
        sgx += tgx
        sx += tx
    return sg, sgx, sx


@njit(cache=True, fastmath=_FASTMATH)
def _dx_batch_stats(dy, x, mu, r, cx, w, mg, mgx, dx):
    """The training backward: dx = r * (dy * w - mean(g) - x_hat * mean(g * x_hat)) with the
    re-centred x_hat = (x - mu) * r - cx."""
    for j in range(x.shape[0]):
        xh = _minus(load(x, j), mu) * r - cx
        store(dx, j, r * (load(dy, j) * w - mg - xh * mgx))


@njit(cache=True, fastmath=_FASTMATH)
def _dx_fixed_stats(dy, w, r, dx):
    """Fixed statistics: dx = dy * w * r."""
    for j in range(dy.shape[0]):
        store(dx, j, load(dy, j) * w * r)


# Column layout: the same, one value per column j of a row, with per-column parameters (a
# channel's value repeated over its S columns). Each updates the row's columns, so the sums down
# a column are taken in row order: no reduction for reassoc to reorder.


@njit(cache=True, fastmath=_FASTMATH)
def _add_shifted_columns(v, k, out):
    for j in range(v.shape[0]):
        out[j] += _minus(load(v, j), k[j])


@njit(cache=True, fastmath=_FASTMATH)
def _add_sq_shifted_columns(v, k, m, out):
    for j in range(v.shape[0]):
        d = _minus(_minus(load(v, j), k[j]), m[j])
        out[j] += d * d


@njit(cache=True, fastmath=_FASTMATH)
def _normalize_columns(v, k, m, r, w, b, out):
    for j in range(v.shape[0]):
        store(out, j, _minus(_minus(load(v, j), k[j]), m[j]) * r[j] * w[j] + b[j])


@njit(cache=True, fastmath=_FASTMATH)
def _add_centred_sums_columns(dy, x, mu, sg, sgx, sx):
    for j in range(x.shape[0]):
        xc = _minus(load(x, j), mu[j])
        d = load(dy, j)
        sg[j] += d
        sgx[j] += d * xc
        sx[j] += xc


@njit(cache=True, fastmath=_FASTMATH)
def _dx_batch_stats_columns(dy, x, mu, r, cx, w, mg, mgx, dx):
    for j in range(x.shape[0]):
        xh = _minus(load(x, j), mu[j]) * r[j] - cx[j]
        store(dx, j, r[j] * (load(dy, j) * w[j] - mg[j] - xh * mgx[j]))


@njit(cache=True, fastmath=_FASTMATH)
def _dx_fixed_stats_columns(dy, w, r, dx):
    for j in range(dy.shape[0]):
        store(dx, j, load(dy, j) * w[j] * r[j])


# ---- BatchNorm -----------------------------------------------------------------------------------
# Forward with batch statistics: per-unit sum and sum of squares about the unit's mean, then per
# channel, in unit order, Chan's combination and _finish_channel, then normalizing ((x - K) -
# mean_d) like the reference: all in _bn_forward_planes, or _bn_stats_columns, _finish_stats and
# _bn_apply_columns. Eval: _bn_apply_* with K = the running mean. Backward: per-unit sums of dy,
# dy * (x - mean) and x - mean, per-channel totals in unit order, _bn_backward_channel, then (batch
# statistics) a dx pass.


@_kernel
def _bn_forward_planes(x, eps, weight, bias, rows, seg, shift, centre, sumsq, mean, rstd, y):
    """Batch statistics and y, a channel per parallel iteration: the channel's units take their
    two passes, Chan's formula combines them, and the channel is normalized while its values are
    still in L2, so that x is read from memory once, not twice."""
    n, c, s = x.shape
    acc = sumsq.dtype.type
    per = _per_channel(n, s, rows, seg)
    segments = (s + seg - 1) // seg
    psum = np.empty((c, per), dtype=sumsq.dtype)  # sum(x - K) over the unit
    pm2 = np.empty((c, per), dtype=sumsq.dtype)  # sum((x - K - unit mean)^2)
    count = np.empty(per, dtype=sumsq.dtype)  # values in the unit, the same for every channel
    for p in range(per):  # p = sample block * segments + segment, as _unit numbers them
        block, j = p // segments, p % segments
        count[p] = acc(
            (min(n, (block + 1) * rows) - block * rows) * (min(s, (j + 1) * seg) - j * seg)
        )
    m = acc(n * s)
    for ch in prange(c):
        k = load(x, (0, ch, 0))  # K: x - K is exact for a channel with a large offset
        shift[ch] = k
        for p in range(per):
            n0, n1, s0, s1 = _channel_unit(ch, p, n, c, s, rows, seg)
            t = _sum_shifted(x[n0, ch, s0:s1], k)
            for i in range(n0 + 1, n1):
                t += _sum_shifted(x[i, ch, s0:s1], k)
            mu = t / count[p]
            q = _sum_sq_shifted(x[n0, ch, s0:s1], k, mu)  # the unit is in L1 now
            for i in range(n0 + 1, n1):
                q += _sum_sq_shifted(x[i, ch, s0:s1], k, mu)
            psum[ch, p] = t
            pm2[ch, p] = q
        t = acc(0)
        for p in range(per):
            t += psum[ch, p]
        mean_d = t / m
        q = acc(0)
        for p in range(per):
            q += _spread(psum[ch, p], pm2[ch, p], count[p], mean_d)
        sumsq[ch] = q
        _finish_channel(ch, m, eps, k, t, q, centre, mean, rstd)
        mc, r, w, b = centre[ch], rstd[ch], weight[ch], bias[ch]
        for p in range(per):  # the channel's values are in L2 now
            n0, n1, s0, s1 = _channel_unit(ch, p, n, c, s, rows, seg)
            for i in range(n0, n1):
                _normalize(x[i, ch, s0:s1], k, mc, r, w, b, y[i, ch, s0:s1])


@_kernel
def _bn_stats_columns(x, rows, shift, centre, sumsq):
    n, c, s = x.shape
    acc = sumsq.dtype.type
    xr = x.reshape((n, c * s))
    for ch in range(c):
        shift[ch] = load(x, (0, ch, 0))
    k_col = np.repeat(shift, s)
    blocks = (n + rows - 1) // rows
    psum = np.zeros((blocks, c * s), dtype=sumsq.dtype)  # per (block, column): sum(x - K)
    pm2 = np.zeros((blocks, c * s), dtype=sumsq.dtype)  # sum((x - K - block column mean)^2)
    for b in prange(blocks):
        n0, n1 = b * rows, min(n, (b + 1) * rows)
        for i in range(n0, n1):
            _add_shifted_columns(xr[i], k_col, psum[b])
        mu = psum[b] / acc(n1 - n0)
        for i in range(n0, n1):  # the block is in L2 now
            _add_sq_shifted_columns(xr[i], k_col, mu, pm2[b])
    m = acc(n * s)
    for ch in prange(c):
        t = acc(0)
        for b in range(blocks):
            for j in range(ch * s, (ch + 1) * s):
                t += psum[b, j]
        mean_d = t / m
        q = acc(0)
        for b in range(blocks):
            count = acc(min(n, (b + 1) * rows) - b * rows)
            for j in range(ch * s, (ch + 1) * s):
                q += _spread(psum[b, j], pm2[b, j], count, mean_d)
        centre[ch] = t
        sumsq[ch] = q


@_kernel
def _bn_apply_planes(x, shift, centre, rstd, weight, bias, rows, seg, y):
    """y = ((x - shift) - centre) * rstd * weight + bias, per channel."""
    n, c, s = x.shape
    for u in prange(_per_channel(n, s, rows, seg) * c):
        ch, _, n0, n1, s0, s1 = _unit(u, n, c, s, rows, seg)
        k, m, r, w, b = shift[ch], centre[ch], rstd[ch], weight[ch], bias[ch]
        for i in range(n0, n1):
            _normalize(x[i, ch, s0:s1], k, m, r, w, b, y[i, ch, s0:s1])


@_kernel
def _bn_apply_columns(x, shift, centre, rstd, weight, bias, rows, y):
    n, c, s = x.shape
    xr = x.reshape((n, c * s))
    yr = y.reshape((n, c * s))
    k, m, r = np.repeat(shift, s), np.repeat(centre, s), np.repeat(rstd, s)
    w, b = np.repeat(weight, s), np.repeat(bias, s)
    for blk in prange((n + rows - 1) // rows):
        for i in range(blk * rows, min(n, (blk + 1) * rows)):
            _normalize_columns(xr[i], k, m, r, w, b, yr[i])


@_kernel
def _bn_backward_planes(dy, x, mean, rstd, weight, batch_stats, rows, seg, dx, dweight, dbias):
    """A channel per parallel iteration, like _bn_forward_planes: its units' sums, in unit order,
    then (batch statistics) its dx while its dy and x are still in L2."""
    n, c, s = x.shape
    acc = mean.dtype.type
    per = _per_channel(n, s, rows, seg)
    m = acc(n * s)
    for ch in prange(c):
        mu, r, w = mean[ch], rstd[ch], weight[ch]
        sdy = sdyx = sx = acc(0)
        for p in range(per):
            n0, n1, s0, s1 = _channel_unit(ch, p, n, c, s, rows, seg)
            sg = sgx = su = acc(0)
            for i in range(n0, n1):
                a, b, d = _centred_sums(dy[i, ch, s0:s1], x[i, ch, s0:s1], mu)
                sg += a
                sgx += b
                su += d
                if not batch_stats:  # dx needs no sums: write it while dy is in L1
                    _dx_fixed_stats(dy[i, ch, s0:s1], w, r, dx[i, ch, s0:s1])
            sdy += sg
            sdyx += sgx
            sx += su
        mg, cx, mgx = _bn_backward_channel(ch, m, sdy, sdyx, sx, r, w, batch_stats, dweight, dbias)
        if batch_stats:
            for p in range(per):  # the channel's dy and x are in L2 now
                n0, n1, s0, s1 = _channel_unit(ch, p, n, c, s, rows, seg)
                for i in range(n0, n1):
                    _dx_batch_stats(
                        dy[i, ch, s0:s1], x[i, ch, s0:s1], mu, r, cx, w, mg, mgx, dx[i, ch, s0:s1]
                    )


@_kernel
def _bn_backward_columns(dy, x, mean, rstd, weight, batch_stats, rows, dx, dweight, dbias):
    n, c, s = x.shape
    dyr, xr, dxr = dy.reshape((n, c * s)), x.reshape((n, c * s)), dx.reshape((n, c * s))
    mu, r, w = np.repeat(mean, s), np.repeat(rstd, s), np.repeat(weight, s)
    blocks = (n + rows - 1) // rows
    partial = np.zeros((3, blocks, c * s), dtype=mean.dtype)
    for blk in prange(blocks):
        sg, sgx, sx = partial[0, blk], partial[1, blk], partial[2, blk]
        for i in range(blk * rows, min(n, (blk + 1) * rows)):
            _add_centred_sums_columns(dyr[i], xr[i], mu, sg, sgx, sx)
            if not batch_stats:
                _dx_fixed_stats_columns(dyr[i], w, r, dxr[i])
    total = np.zeros((3, c), dtype=mean.dtype)
    for ch in prange(c):
        for t in range(3):
            for blk in range(blocks):
                for j in range(ch * s, (ch + 1) * s):
                    total[t, ch] += partial[t, blk, j]
    coefficient = np.empty((3, c), dtype=mean.dtype)
    _bn_backward_finish(n * s, total, rstd, weight, batch_stats, dweight, dbias, coefficient)
    if batch_stats:
        mg = np.repeat(coefficient[0], s)
        cx = np.repeat(coefficient[1], s)
        mgx = np.repeat(coefficient[2], s)
        for blk in prange(blocks):
            for i in range(blk * rows, min(n, (blk + 1) * rows)):
                _dx_batch_stats_columns(dyr[i], xr[i], mu, r, cx, w, mg, mgx, dxr[i])


@njit(cache=True)
def _bn_backward_finish(m, total, rstd, weight, batch_stats, dweight, dbias, coefficient):
    """_bn_backward_channel for every channel, its coefficients (mean(g), centre, mean(g *
    x_hat)) written to coefficient[:, ch]."""
    mf = rstd.dtype.type(m)
    for ch in range(rstd.shape[0]):
        sdy, sdyx, sx = total[0, ch], total[1, ch], total[2, ch]
        mg, cx, mgx = _bn_backward_channel(
            ch, mf, sdy, sdyx, sx, rstd[ch], weight[ch], batch_stats, dweight, dbias
        )
        coefficient[0, ch] = mg
        coefficient[1, ch] = cx
        coefficient[2, ch] = mgx


@njit(cache=True)
def _bn_backward_channel(ch, m, sdy, sdyx, sx, r, w, batch_stats, dweight, dbias):
    """Channel ch's dweight and dbias, and dx's coefficients (mean(g), centre, mean(g * x_hat)),
    from its sum(dy), sum(dy * (x - mean)), sum(x - mean) over its m values, with x_hat' = (x -
    mean) * rstd and, for batch statistics, centre = mean(x_hat') (re-centring x_hat cancels the
    saved mean's rounding): dbias = sum(dy), dweight = sum(dy * (x_hat' - centre)) = sum(dy *
    x_hat') - centre * sum(dy). The weight is one number per channel, so mean(g) = weight *
    sum(dy) / m and mean(g * x_hat) = weight * sum(dy * x_hat') / m - centre * mean(g). Strict
    IEEE."""
    sdyx = sdyx * r
    cx = sx * r / m if batch_stats else dweight.dtype.type(0)
    dbias[ch] = sdy
    dweight[ch] = sdyx - cx * sdy if batch_stats else sdyx
    mg = w * sdy / m
    return mg, cx, w * sdyx / m - cx * mg


# ---- GroupNorm -----------------------------------------------------------------------------------
# One (sample, group) row of cg * S contiguous values per parallel iteration. Planes of S >= _SHORT
# values are handled a channel at a time (scalar weight); shorter ones ((N, C) inputs, small
# feature maps) a row at a time, with each value's weight read from the weight repeated S times
# (C * S values: they stay in cache) -- a call per channel of a few values would cost more than
# the values.


@njit(cache=True, fastmath=_FASTMATH)
def _normalize_weighted(v, k, m, r, w, b, out):
    """out = ((v - k) - m) * r * w + b, with a weight and a bias per value."""
    for j in range(v.shape[0]):
        store(out, j, _minus(_minus(load(v, j), k), m) * r * w[j] + b[j])


@njit(cache=True, fastmath=_FASTMATH)
def _weighted_centred_sums(dy, x, mu, w):
    """(sum(g), sum(g * (x - mu)), sum(x - mu)) with g = dy * w, a weight per value; blocked."""
    sg = sgx = sx = zero(x)
    for b in range(0, x.shape[0], _BLOCK):
        xb = x[b : b + _BLOCK]
        dyb = dy[b : b + _BLOCK]
        wb = w[b : b + _BLOCK]
        tg = tgx = tx = zero(x)
        for j in range(xb.shape[0]):
            xc = _minus(load(xb, j), mu)
            g = load(dyb, j) * wb[j]
            tg += g
            tgx += g * xc
            tx += xc
        sg += tg
        sgx += tgx
        sx += tx
    return sg, sgx, sx


@njit(cache=True, fastmath=_FASTMATH)
def _dx_weighted(dy, x, mu, r, cx, w, mg, mgx, dx):
    """_dx_batch_stats with a weight per value."""
    for j in range(x.shape[0]):
        xh = _minus(load(x, j), mu) * r - cx
        store(dx, j, r * (load(dy, j) * w[j] - mg - xh * mgx))


@_kernel
def _gn_forward(x, weight, bias, eps, y, mean, rstd):
    n, c, s = x.shape
    groups = mean.shape[1]
    cg = c // groups
    size = cg * s
    acc = mean.dtype.type
    xr = x.reshape((n * groups, size))
    yr = y.reshape((n * groups, size))
    short = s < _SHORT
    w_values = np.repeat(weight, s if short else 0)  # short planes: a weight per value
    b_values = np.repeat(bias, s if short else 0)
    for row in prange(n * groups):
        i = row // groups
        g = row % groups
        xi = xr[row]
        yi = yr[row]
        nxt = min(row + 1, n * groups - 1)  # the row to prefetch
        k = load(xi, 0)  # the shift K: x - K is exact for a group with a large offset
        m = _sum_shifted(xi, k) / acc(size)
        q = acc(0)  # _sum_sq_shifted's blocks, each claiming its lines of the output row
        for b in range(0, size, _BLOCK):
            q += _sum_sq_shifted(xi[b : b + _BLOCK], k, m)
            prefetch_block(yr, row, b, _BLOCK, True)
        r = acc(1) / np.sqrt(q / acc(size) + acc(eps))
        mean[i, g] = k + m
        rstd[i, g] = r
        # Normalized a block at a time, each fetching its lines of the next row (the row is in L1).
        if short:
            values = slice(g * size, (g + 1) * size)
            w_row, b_row = w_values[values], b_values[values]
            for b in range(0, size, _BLOCK):
                block = slice(b, b + _BLOCK)
                _normalize_weighted(xi[block], k, m, r, w_row[block], b_row[block], yi[block])
                prefetch_block(xr, nxt, b, _BLOCK, False)
        else:
            for j in range(cg):
                ch = g * cg + j
                for b in range(j * s, (j + 1) * s, _BLOCK):
                    block = slice(b, min(b + _BLOCK, (j + 1) * s))
                    _normalize(xi[block], k, m, r, weight[ch], bias[ch], yi[block])
                    prefetch_block(xr, nxt, b, block.stop - b, False)


@_kernel
def _gn_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
    n, c, s = x.shape
    groups = mean.shape[1]
    cg = c // groups
    size = cg * s
    acc = mean.dtype.type
    nf = acc(size)
    rows = (n * groups, size)
    dyr, xr, dxr = dy.reshape(rows), x.reshape(rows), dx.reshape(rows)
    short = s < _SHORT
    w_values = np.repeat(weight, s if short else 0)
    pw = np.empty((n, c), dtype=mean.dtype)  # per (sample, channel): sum over S of dy * x_hat
    pb = np.empty((n, c), dtype=mean.dtype)  # ... and of dy
    for row in prange(n * groups):
        i = row // groups
        g = row % groups
        mu = mean[i, g]
        r = rstd[i, g]
        dyi, xi, dxi = dyr[row], xr[row], dxr[row]
        nxt = min(row + 1, n * groups - 1)  # the row to prefetch
        # Pass 1: sum(g), sum(g * xc), sum(xc), with xc = x - mean and g = dy * weight[channel].
        # Long planes: per channel sum(dy), sum(dy * xc) (kept for the parameter gradients) and
        # sum(xc), with the channel's weight applied to the sums instead of to every value.
        if short:
            values = slice(g * size, (g + 1) * size)
            sg, sgx, sx = _weighted_centred_sums(dyi, xi, mu, w_values[values])
        else:
            sg = sgx = sx = acc(0)
            for ch in range(g * cg, (g + 1) * cg):
                a, b, d = _centred_sums(dy[i, ch], x[i, ch], mu)
                pb[i, ch] = a
                pw[i, ch] = b
                sg += weight[ch] * a
                sgx += weight[ch] * b
                sx += d
        mg = sg / nf
        cx = sx * r / nf  # mean(x_hat'): re-centring x_hat cancels the saved mean's rounding
        mgx = sgx * r / nf - cx * mg  # mean(g * x_hat) for the re-centred x_hat
        # Pass 2 (the row is in L2): dx, and the parameter gradients' sums per channel:
        # sum(dy * x_hat), which for long planes is r * sum(dy * xc) - cx * sum(dy)
        if short:
            _dx_weighted(dyi, xi, mu, r, cx, w_values[values], mg, mgx, dxi)
            for j in range(cg):
                tw = tb = acc(0)
                for t in range(j * s, (j + 1) * s):
                    d = load(dyi, t)
                    tw += d * (_minus(load(xi, t), mu) * r - cx)
                    tb += d
                pw[i, g * cg + j] = tw
                pb[i, g * cg + j] = tb
        else:  # a block at a time, each fetching its lines of the next row
            for j in range(cg):
                ch = g * cg + j
                for b in range(j * s, (j + 1) * s, _BLOCK):
                    block = slice(b, min(b + _BLOCK, (j + 1) * s))
                    w = weight[ch]
                    _dx_batch_stats(dyi[block], xi[block], mu, r, cx, w, mg, mgx, dxi[block])
                    prefetch_block(dyr, nxt, b, block.stop - b, False)
                    prefetch_block(xr, nxt, b, block.stop - b, False)
                    prefetch_block(dxr, nxt, b, block.stop - b, True)
                pw[i, ch] = pw[i, ch] * r - cx * pb[i, ch]
    _sum_rows(pw, dweight)
    _sum_rows(pb, dbias)


@njit(cache=True)
def _sum_rows(partial, out):
    """out[j] = partial[0, j] + partial[1, j] + ..., always in row order."""
    out[:] = 0
    for i in range(partial.shape[0]):
        for j in range(out.shape[0]):
            out[j] += partial[i, j]


# ---- the contract's entry points -----------------------------------------------------------------
# eps becomes a Python float, so that a NumPy scalar eps compiles no second specialisation. Inputs
# pass through np.ascontiguousarray (free when they already are): a strided view would compile
# another, slower specialisation ('A' layout), which GroupNorm's reshape cannot even type.


def _storage(a):
    """An input as the kernels read it: C-contiguous, float16 as its uint16 bits (outputs are
    C-contiguous by contract: as_bits alone)."""
    return as_bits(np.ascontiguousarray(a))


def _or_fill(param, channels, dtype, value):
    """`param`, or `value` repeated: an absent weight acts as 1, a bias as 0 (module docstring)."""
    return np.full(channels, value, dtype) if param is None else np.ascontiguousarray(param)


def batch_norm_forward(x, weight, bias, eps, y, mean, rstd, sumsq):
    """y, mean, rstd, sumsq <- BatchNorm of x (N, C, S) with its batch statistics."""
    n, c, s = x.shape
    rows, seg = batch_norm_units(n, c, s)
    x, y = _storage(x), as_bits(y)
    shift, centre = np.empty(c, mean.dtype), np.empty(c, mean.dtype)
    if seg:
        w, b = _or_fill(weight, c, mean.dtype, 1), _or_fill(bias, c, mean.dtype, 0)
        _bn_forward_planes(x, float(eps), w, b, rows, seg, shift, centre, sumsq, mean, rstd, y)
        return
    _bn_stats_columns(x, rows, shift, centre, sumsq)
    _finish_stats(n, s, float(eps), shift, centre, sumsq, mean, rstd)
    _apply(x, shift, centre, rstd, weight, bias, rows, seg, y)


def batch_norm_apply(x, mean, rstd, weight, bias, y):
    """y <- (x - mean) * rstd * weight + bias with given per-channel mean and rstd (C,)."""
    n, c, s = x.shape
    rows, seg = batch_norm_units(n, c, s)
    mean, rstd = np.ascontiguousarray(mean), np.ascontiguousarray(rstd)
    centre = np.zeros(c, mean.dtype)  # the mean is the shift, nothing more to subtract
    _apply(_storage(x), mean, centre, rstd, weight, bias, rows, seg, as_bits(y))


def _apply(x, shift, centre, rstd, weight, bias, rows, seg, y):
    c, acc = x.shape[1], rstd.dtype
    weight, bias = _or_fill(weight, c, acc, 1), _or_fill(bias, c, acc, 0)
    if seg:
        _bn_apply_planes(x, shift, centre, rstd, weight, bias, rows, seg, y)
    else:
        _bn_apply_columns(x, shift, centre, rstd, weight, bias, rows, y)


def batch_norm_backward(dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias):
    """dx, and dweight / dbias unless None <- BatchNorm's backward; batch_stats: whether mean and
    rstd are x's batch statistics (training) or fixed running statistics."""
    n, c, s = x.shape
    rows, seg = batch_norm_units(n, c, s)
    acc = mean.dtype
    dy, x, dx = _storage(dy), _storage(x), as_bits(dx)
    mean, rstd = np.ascontiguousarray(mean), np.ascontiguousarray(rstd)
    dweight = np.empty(c, acc) if dweight is None else dweight
    dbias = np.empty(c, acc) if dbias is None else dbias
    weight, batch_stats = _or_fill(weight, c, acc, 1), bool(batch_stats)
    if seg:
        _bn_backward_planes(dy, x, mean, rstd, weight, batch_stats, rows, seg, dx, dweight, dbias)
    else:
        _bn_backward_columns(dy, x, mean, rstd, weight, batch_stats, rows, dx, dweight, dbias)


def group_norm_forward(x, weight, bias, eps, y, mean, rstd):
    """y, mean, rstd (N, G) <- GroupNorm of x (N, C, S) over G = mean.shape[1] groups."""
    c, acc = x.shape[1], mean.dtype
    weight, bias = _or_fill(weight, c, acc, 1), _or_fill(bias, c, acc, 0)
    _gn_forward(_storage(x), weight, bias, float(eps), as_bits(y), mean, rstd)


def group_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
    """dx, and dweight / dbias unless None <- GroupNorm's backward."""
    c, acc = x.shape[1], mean.dtype
    dy, x, dx = _storage(dy), _storage(x), as_bits(dx)
    mean, rstd = np.ascontiguousarray(mean), np.ascontiguousarray(rstd)
    dweight = np.empty(c, acc) if dweight is None else dweight
    dbias = np.empty(c, acc) if dbias is None else dbias
    _gn_backward(dy, x, mean, rstd, _or_fill(weight, c, acc, 1), dx, dweight, dbias)
