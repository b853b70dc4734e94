"""Numba CPU kernels for LayerNorm and RMSNorm, forward and backward.

The op wrappers (normref/norms/layer_norm.py, rms_norm.py) validate, reshape to C-contiguous
(rows, n) arrays, allocate the outputs and call the four functions at the bottom of this module,
whose signatures and numerics are fixed by docs/contracts.md ("Kernel contract"), or rather what
`entry` gives for them: the choices below that depend only on the call's shape and dtype, made once
per call plan.

How the kernels are built, and why:

- Parallel only across rows (``prange``); each row is reduced by one thread, in an order fixed at
  compile time, so results do not depend on the number of threads.
- ``fastmath={'reassoc'}`` and nothing else: LLVM will not vectorize a float reduction unless it
  may reassociate it (without it LayerNorm runs at ~20% of memory bandwidth), while leaving out
  ``nnan``, ``ninf`` and ``contract`` keeps NaN/Inf handling IEEE and forbids fused multiply-adds.
- Long rows are summed in blocks: partial sums of ``_BLOCK`` elements are added into the row total,
  which keeps float32 rounding error small on long rows (10^6 elements). Blocks are slices so that
  every inner loop starts at 0, which LLVM vectorizes; ``range(b, b + block)`` was 2.5x slower.
- The large-offset shift ``x - K`` goes through ``_minus``, compiled without fastmath: under
  ``reassoc`` LLVM could rewrite ``(x - K) - mean_d`` as ``x - (K + mean_d)`` and round away exactly
  what the shift keeps.
- Each row is read from memory once and then worked on from cache. Software prefetches
  (_prefetch.py), issued a block at a time inside the cache-resident passes, fetch the next row
  (and claim the lines of the output row about to be written), so memory traffic overlaps the
  arithmetic: 0.6 -> 0.9 of the bandwidth floor on (8192, 1024).
- Two ways to run, chosen per call by ``_short`` from the row length and the bytes a call touches,
  counted in the accumulation dtype (never from the thread count), each deterministic; their
  results differ in the last bits (other partial sums):
  - *streaming* (``_ln_forward`` ...): rows in blocks, with the prefetches above, for problems
    larger than L2 or rows longer than ``_SHORT_ROW``;
  - *short rows* (``_ln_forward_short`` ...): each row whole, no blocks and no prefetches (which in
    cache only cost instructions), for the small calls whose time is the arithmetic. The forward
    keeps d = (x - K) - mean_d in y between its passes (two fewer operations per element in the
    last), and the backward takes rows two at a time (the partial sums of dweight and dbias are
    read and written once per pair; those read-modify-writes, more than the arithmetic, bound it).
    At (64, 768): forward 8.1 -> 7.4 us, backward 17.2 -> 13.3 us.
  Both are built of the same passes (``_shifted_sum``, ``_ln_grads`` ...), inlined at Numba IR
  level, so each formula is written once.
- Parameter gradients (dweight, dbias) are summed over a fixed number of row chunks
  (``_chunks(rows, n)``, independent of the thread count), each accumulated in row order within one
  thread, and the chunk partials are added in chunk order: deterministic for any thread count. The
  partials live in a per-thread scratch buffer kept between calls (see _partials, _scratch).
- float16 and bfloat16 rows pass as their bits (``as_bits``), read and written through _half.py's
  ``load`` and ``store``: computed in float32 and rounded once, like the reference.
- ``weight``/``bias``/``dweight``/``dbias`` may be None: Numba compiles a separate specialisation
  with the ``is None`` branches pruned, so inner loops carry no branch (the passes are told whether
  to add into the partial sums by flags that LLVM folds: a local variable that may be None is not
  pruned inside an inlined pass).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from normref._buffers import on_line
from normref.kernels.numba._half import as_bits, holds_floats, load, store, zero
from normref.kernels.numba._prefetch import LINE, prefetch_block

__all__ = [
    "entry",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
]

_FASTMATH = {"reassoc"}
_BLOCK = 256  # elements per partial sum and per batch of prefetches, for streaming problems
_SHORT_ROW = 2048  # the longest row that runs whole (a single partial sum) ...
_STREAM_BYTES = 1 << 20  # ... in a call touching at most this many bytes (L2 is 1-2 MiB per core)
_MAX_CHUNKS = 16  # row chunks for the parameter-gradient sums (fixed: determinism) ...
_CHUNK_ELEMENTS = 16384  # ... each of at least this many elements, when there are enough
_SKEW = 64  # elements added between blocks of partial sums (see _partials)


def _kernel(fn):
    return njit(cache=True, parallel=True, fastmath=_FASTMATH)(fn)


def _inline(fn):
    """A pass over a row, or a block of one, shared by the kernels: inlined at Numba IR level (a
    call that takes arrays would cost reference-count updates), so its `is None` branches go with
    the caller's arguments and its loops vectorize in place."""
    return njit(inline="always", fastmath=_FASTMATH)(fn)


@njit(cache=True)  # strict IEEE on purpose: see the module docstring
def _minus(a, b):
    return a - b


@njit(cache=True)
def _chunks(rows, n):
    """How many row chunks the backward splits the rows into: a function of the shape only, never
    of the thread count. Small problems get fewer chunks: each costs a partial row of n to zero and
    sum, which at (64, 768) took as long as the rows themselves. A power of two, so that the chunks
    share out evenly over the usual thread counts."""
    most = max(1, min(rows, _MAX_CHUNKS, rows * n // _CHUNK_ELEMENTS))
    chunks = 1
    while chunks * 2 <= most:
        chunks *= 2
    return chunks


@njit(cache=True)
def _partials(scratch, k, chunks, n):
    """The k-th block of per-chunk partial sums in `scratch` (see _scratch), shaped
    (chunks, stride): chunk c sums into [c, :n]. Each chunk's row starts on a cache line of its
    own, so that threads on neighbouring chunks never write to one line (that false sharing made
    the 2-thread backward at (64, 768) no faster than 1 thread); blocks are _SKEW elements more
    than a multiple of the row size apart, else loads of one wait on stores to the other (4K
    aliasing)."""
    line = LINE // scratch.itemsize
    stride = (n + line - 1) // line * line
    start = k * (chunks * stride + _SKEW)
    return scratch[start : start + chunks * stride].reshape((chunks, stride))


@njit(cache=True)
def _sum_chunks(partial, out):
    """out[j] = partial[0, j] + partial[1, j] + ..., always in chunk order. Serial: a parallel
    region costs more than the sum below n ~ 10^4, and little above."""
    out[:] = 0
    for c in range(partial.shape[0]):
        pc = partial[c]
        for j in range(out.shape[0]):
            out[j] += pc[j]


@njit(cache=True)
def _rows_of_chunk(c, chunks, rows):
    """The rows [first, end) of chunk c."""
    return c * rows // chunks, (c + 1) * rows // chunks


# --- LayerNorm: the passes -----------------------------------------------------------------------


@_inline
def _shifted_sum(xb, k):
    """sum(x - K)."""
    t = zero(xb)
    for j in range(xb.shape[0]):
        t += _minus(load(xb, j), k)
    return t


@_inline
def _centred_squares(xb, k, m, yb, keep):
    """sum(d * d) for d = (x - K) - mean_d; with `keep`, d is also written to yb, where the last
    pass reads it back instead of computing it again."""
    t = zero(xb)
    for j in range(xb.shape[0]):
        d = _minus(_minus(load(xb, j), k), m)
        if keep:
            store(yb, j, d)
        t += d * d
    return t


@_inline
def _normalize(xb, k, m, r, wb, bb, yb, kept):
    """y = d * rstd * weight + bias (`kept`: d is in yb already)."""
    for j in range(xb.shape[0]):
        if kept:
            x_hat = load(yb, j) * r
        else:
            x_hat = _minus(_minus(load(xb, j), k), m) * r
        if wb is not None:
            x_hat = x_hat * wb[j]
        if bb is not None:
            x_hat = x_hat + bb[j]
        store(yb, j, x_hat)


@_inline
def _ln_grad_sums(xb, dyb, wb, mu):
    """sum(g), sum(g * xc), sum(xc) for g = dy * weight, xc = x - mean: one pass. x_hat' is
    xc * rstd: the rstd factor is applied once per row instead of once per element."""
    tg = zero(xb)
    tgx = zero(xb)
    tx = zero(xb)
    for j in range(xb.shape[0]):
        xc = load(xb, j) - mu
        g = load(dyb, j)
        if wb is not None:
            g = g * wb[j]
        tg += g
        tgx += g * xc
        tx += xc
    return tg, tgx, tx


@njit(cache=True)
def _ln_grad_stats(sg, sgx, sx, r, nf):
    """(mean(x_hat'), mean(g), mean(g * x_hat)) for the re-centred x_hat = x_hat' - mean(x_hat')
    (re-centring cancels the rounding of the saved mean on large-offset rows); nf: the row length
    in the accumulation dtype."""
    mx = sx * r / nf
    mg = sg / nf
    return mx, mg, sgx * r / nf - mx * mg


@_inline
def _ln_row_stats(xi, dyi, weight, mu, r, nf):
    """_ln_grad_stats of a whole row."""
    sg, sgx, sx = _ln_grad_sums(xi, dyi, weight, mu)
    return _ln_grad_stats(sg, sgx, sx, r, nf)


@_inline
def _ln_grad(xv, d, wb, j, mu, r, mx, mg, mgx):
    """(x_hat, dx) of one element."""
    g = d
    if wb is not None:
        g = d * wb[j]
    x_hat = (xv - mu) * r - mx
    return x_hat, r * (g - mg - x_hat * mgx)


@_inline
def _ln_grads(xb, dyb, dxb, wb, pwb, pbb, sums_w, sums_b, mu, r, mx, mg, mgx):
    """dx of one row (or block), and its terms of the parameter-gradient partial sums pwb, pbb
    (added only when sums_w, sums_b: flags, not None, which a local variable could not prune)."""
    for j in range(xb.shape[0]):
        d = load(dyb, j)
        x_hat, dx = _ln_grad(load(xb, j), d, wb, j, mu, r, mx, mg, mgx)
        store(dxb, j, dx)
        if sums_w:
            pwb[j] += d * x_hat
        if sums_b:
            pbb[j] += d


@_inline
def _ln_grads_pair(x0, dy0, dx0, s0, x1, dy1, dx1, s1, wb, pwb, pbb, sums_w, sums_b):
    """_ln_grads of two rows at once (s0, s1: their (mean, rstd, mx, mg, mgx)): the partial sums
    are read and written once for both."""
    mu0, r0, mx0, mg0, mgx0 = s0
    mu1, r1, mx1, mg1, mgx1 = s1
    for j in range(x0.shape[0]):
        d0 = load(dy0, j)
        d1 = load(dy1, j)
        x_hat0, dx = _ln_grad(load(x0, j), d0, wb, j, mu0, r0, mx0, mg0, mgx0)
        store(dx0, j, dx)
        x_hat1, dx = _ln_grad(load(x1, j), d1, wb, j, mu1, r1, mx1, mg1, mgx1)
        store(dx1, j, dx)
        if sums_w:
            pwb[j] += d0 * x_hat0 + d1 * x_hat1
        if sums_b:
            pbb[j] += d0 + d1


# --- LayerNorm: the kernels ----------------------------------------------------------------------


@_kernel
def _ln_forward(x, weight, bias, eps, y, mean, rstd):
    """Streaming: each row read from memory once, in blocks, prefetching the next."""
    acc = mean.dtype.type
    rows, n = x.shape
    if n == 0:  # no x[0] to shift by; the statistics of nothing are NaN, as mean([]) is
        mean[:] = np.nan
        rstd[:] = np.nan
        return
    for i in prange(rows):
        xi = x[i]
        yi = y[i]
        nxt = min(i + 1, rows - 1)  # the row to prefetch
        k = load(xi, 0)  # the shift K: x - K is exact for rows with a large offset
        s = acc(0)
        for b in range(0, n, _BLOCK):
            s += _shifted_sum(xi[b : b + _BLOCK], k)
        m = s / acc(n)
        v = acc(0)
        for b in range(0, n, _BLOCK):
            v += _centred_squares(xi[b : b + _BLOCK], k, m, yi, False)
            prefetch_block(y, i, b, _BLOCK, True)
        r = acc(1) / np.sqrt(v / acc(n) + acc(eps))
        mean[i] = k + m
        rstd[i] = r
        for b in range(0, n, _BLOCK):
            blk = slice(b, b + _BLOCK)
            wb = None if weight is None else weight[blk]
            bb = None if bias is None else bias[blk]
            _normalize(xi[blk], k, m, r, wb, bb, yi[blk], False)
            prefetch_block(x, nxt, b, _BLOCK, False)


@_kernel
def _ln_forward_short(x, weight, bias, eps, y, mean, rstd):
    """Short rows in cache: each row whole, and d kept in y between the passes when y holds the
    accumulation dtype (two fewer operations per element in the last pass)."""
    acc = mean.dtype.type
    rows, n = x.shape
    for i in prange(rows):
        xi = x[i]
        yi = y[i]
        k = load(xi, 0)
        m = _shifted_sum(xi, k) / acc(n)
        v = _centred_squares(xi, k, m, yi, holds_floats(yi))
        r = acc(1) / np.sqrt(v / acc(n) + acc(eps))
        mean[i] = k + m
        rstd[i] = r
        _normalize(xi, k, m, r, weight, bias, yi, holds_floats(yi))


@_kernel
def _ln_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, scratch):
    """Streaming: each row of x and dy read from memory once, in blocks, prefetching the next."""
    acc = mean.dtype.type
    rows, n = x.shape
    chunks = _chunks(rows, n)
    pw = _partials(scratch, 0, chunks, n)  # per-chunk partial sums of dweight
    pb = _partials(scratch, 1, chunks, n)  # ... and of dbias
    for c in prange(chunks):
        pwc = pw[c, :n]
        pbc = pb[c, :n]
        if dweight is not None:
            pwc[:] = 0
        if dbias is not None:
            pbc[:] = 0
        first, end = _rows_of_chunk(c, chunks, rows)
        for i in range(first, end):
            xi = x[i]
            dyi = dy[i]
            dxi = dx[i]
            nxt = min(i + 1, end - 1)  # the row to prefetch
            mu = mean[i]
            r = rstd[i]
            sg = acc(0)
            sgx = acc(0)
            sx = acc(0)
            for b in range(0, n, _BLOCK):
                blk = slice(b, b + _BLOCK)
                tg, tgx, tx = _ln_grad_sums(
                    xi[blk], dyi[blk], None if weight is None else weight[blk], mu
                )
                sg += tg
                sgx += tgx
                sx += tx
                prefetch_block(x, nxt, b, _BLOCK, False)
            mx, mg, mgx = _ln_grad_stats(sg, sgx, sx, r, acc(n))
            for b in range(0, n, _BLOCK):
                blk = slice(b, b + _BLOCK)
                _ln_grads(
                    xi[blk],
                    dyi[blk],
                    dxi[blk],
                    None if weight is None else weight[blk],
                    pwc[blk],
                    pbc[blk],
                    dweight is not None,
                    dbias is not None,
                    mu,
                    r,
                    mx,
                    mg,
                    mgx,
                )
                prefetch_block(dy, nxt, b, _BLOCK, False)
                prefetch_block(dx, nxt, b, _BLOCK, True)
    if dweight is not None:
        _sum_chunks(pw, dweight)
    if dbias is not None:
        _sum_chunks(pb, dbias)


@_kernel
def _ln_backward_short(dy, x, mean, rstd, weight, dx, dweight, dbias, scratch):
    """Short rows in cache: each row whole, and two rows at a time after the first of an odd count,
    so that the parameter-gradient partial sums are read and written once per pair: those
    read-modify-writes, more than the arithmetic, bound the backward at (64, 768)."""
    acc = mean.dtype.type
    rows, n = x.shape
    chunks = _chunks(rows, n)
    pw = _partials(scratch, 0, chunks, n)
    pb = _partials(scratch, 1, chunks, n)
    want_w = dweight is not None
    want_b = dbias is not None
    for c in prange(chunks):
        pwc = pw[c, :n]
        pbc = pb[c, :n]
        if want_w:
            pwc[:] = 0
        if want_b:
            pbc[:] = 0
        first, end = _rows_of_chunk(c, chunks, rows)
        pairs = first + (end - first) % 2  # the first row of an odd count goes alone
        for i in range(first, pairs):
            mu, r = mean[i], rstd[i]
            mx, mg, mgx = _ln_row_stats(x[i], dy[i], weight, mu, r, acc(n))
            _ln_grads(x[i], dy[i], dx[i], weight, pwc, pbc, want_w, want_b, mu, r, mx, mg, mgx)
        for i in range(pairs, end, 2):
            j = i + 1
            s0 = (mean[i], rstd[i]) + _ln_row_stats(x[i], dy[i], weight, mean[i], rstd[i], acc(n))
            s1 = (mean[j], rstd[j]) + _ln_row_stats(x[j], dy[j], weight, mean[j], rstd[j], acc(n))
            _ln_grads_pair(
                x[i], dy[i], dx[i], s0, x[j], dy[j], dx[j], s1, weight, pwc, pbc, want_w, want_b
            )
    if dweight is not None:
        _sum_chunks(pw, dweight)
    if dbias is not None:
        _sum_chunks(pb, dbias)


# --- RMSNorm: the passes -------------------------------------------------------------------------


@_inline
def _squares(xb):
    """sum(x * x)."""
    t = zero(xb)
    for j in range(xb.shape[0]):
        v = load(xb, j)
        t += v * v
    return t


@_inline
def _rms_normalize(xb, r, wb, yb):
    """y = x * rstd * weight."""
    for j in range(xb.shape[0]):
        x_hat = load(xb, j) * r
        if wb is not None:
            x_hat = x_hat * wb[j]
        store(yb, j, x_hat)


@_inline
def _rms_grad_sum(xb, dyb, wb):
    """sum(g * x) for g = dy * weight; times rstd once per row, it is sum(g * x_hat)."""
    t = zero(xb)
    for j in range(xb.shape[0]):
        g = load(dyb, j)
        if wb is not None:
            g = g * wb[j]
        t += g * load(xb, j)
    return t


@_inline
def _rms_grad(xv, d, wb, j, r, mgx):
    """(x_hat, dx) of one element."""
    g = d
    if wb is not None:
        g = d * wb[j]
    x_hat = xv * r
    return x_hat, r * (g - x_hat * mgx)


@_inline
def _rms_grads(xb, dyb, dxb, wb, pwb, sums_w, r, mgx):
    """dx of one row (or block), and its terms of the dweight partial sums (see _ln_grads)."""
    for j in range(xb.shape[0]):
        d = load(dyb, j)
        x_hat, dx = _rms_grad(load(xb, j), d, wb, j, r, mgx)
        store(dxb, j, dx)
        if sums_w:
            pwb[j] += d * x_hat


@_inline
def _rms_grads_pair(x0, dy0, dx0, r0, mgx0, x1, dy1, dx1, r1, mgx1, wb, pwb, sums_w):
    """_rms_grads of two rows at once: the partial sums are read and written once for both."""
    for j in range(x0.shape[0]):
        d0 = load(dy0, j)
        d1 = load(dy1, j)
        x_hat0, dx = _rms_grad(load(x0, j), d0, wb, j, r0, mgx0)
        store(dx0, j, dx)
        x_hat1, dx = _rms_grad(load(x1, j), d1, wb, j, r1, mgx1)
        store(dx1, j, dx)
        if sums_w:
            pwb[j] += d0 * x_hat0 + d1 * x_hat1


# --- RMSNorm: the kernels ------------------------------------------------------------------------


@_kernel
def _rms_forward(x, weight, eps, y, rstd):
    """Streaming: each row read from memory once, in blocks, prefetching the next."""
    acc = rstd.dtype.type
    rows, n = x.shape
    for i in prange(rows):
        xi = x[i]
        yi = y[i]
        nxt = min(i + 1, rows - 1)  # the row to prefetch
        s = acc(0)
        for b in range(0, n, _BLOCK):
            s += _squares(xi[b : b + _BLOCK])
            prefetch_block(y, i, b, _BLOCK, True)
        r = acc(1) / np.sqrt(s / acc(n) + acc(eps))
        rstd[i] = r
        for b in range(0, n, _BLOCK):
            blk = slice(b, b + _BLOCK)
            _rms_normalize(xi[blk], r, None if weight is None else weight[blk], yi[blk])
            prefetch_block(x, nxt, b, _BLOCK, False)


@_kernel
def _rms_forward_short(x, weight, eps, y, rstd):
    """Short rows in cache: each row whole."""
    acc = rstd.dtype.type
    rows, n = x.shape
    for i in prange(rows):
        r = acc(1) / np.sqrt(_squares(x[i]) / acc(n) + acc(eps))
        rstd[i] = r
        _rms_normalize(x[i], r, weight, y[i])


@_kernel
def _rms_backward(dy, x, rstd, weight, dx, dweight, scratch):
    """Streaming: each row of x and dy read from memory once, in blocks, prefetching the next."""
    acc = rstd.dtype.type
    rows, n = x.shape
    chunks = _chunks(rows, n)
    pw = _partials(scratch, 0, chunks, n)  # per-chunk partial sums of dweight
    for c in prange(chunks):
        pwc = pw[c, :n]
        if dweight is not None:
            pwc[:] = 0
        first, end = _rows_of_chunk(c, chunks, rows)
        for i in range(first, end):
            xi = x[i]
            dyi = dy[i]
            dxi = dx[i]
            nxt = min(i + 1, end - 1)  # the row to prefetch
            r = rstd[i]
            s = acc(0)
            for b in range(0, n, _BLOCK):
                blk = slice(b, b + _BLOCK)
                s += _rms_grad_sum(xi[blk], dyi[blk], None if weight is None else weight[blk])
                prefetch_block(x, nxt, b, _BLOCK, False)
            mgx = s * r / acc(n)
            for b in range(0, n, _BLOCK):
                blk = slice(b, b + _BLOCK)
                _rms_grads(
                    xi[blk],
                    dyi[blk],
                    dxi[blk],
                    None if weight is None else weight[blk],
                    pwc[blk],
                    dweight is not None,
                    r,
                    mgx,
                )
                prefetch_block(dy, nxt, b, _BLOCK, False)
                prefetch_block(dx, nxt, b, _BLOCK, True)
    if dweight is not None:
        _sum_chunks(pw, dweight)


@_kernel
def _rms_backward_short(dy, x, rstd, weight, dx, dweight, scratch):
    """Short rows in cache: each row whole, two rows at a time (see _ln_backward_short)."""
    acc = rstd.dtype.type
    rows, n = x.shape
    chunks = _chunks(rows, n)
    pw = _partials(scratch, 0, chunks, n)
    for c in prange(chunks):
        pwc = pw[c, :n]
        if dweight is not None:
            pwc[:] = 0
        first, end = _rows_of_chunk(c, chunks, rows)
        pairs = first + (end - first) % 2  # the first row of an odd count goes alone
        for i in range(first, pairs):
            mgx = _rms_grad_sum(x[i], dy[i], weight) * rstd[i] / acc(n)
            _rms_grads(x[i], dy[i], dx[i], weight, pwc, dweight is not None, rstd[i], mgx)
        for i in range(pairs, end, 2):
            j = i + 1
            mgx0 = _rms_grad_sum(x[i], dy[i], weight) * rstd[i] / acc(n)
            mgx1 = _rms_grad_sum(x[j], dy[j], weight) * rstd[j] / acc(n)
            _rms_grads_pair(
                x[i],
                dy[i],
                dx[i],
                rstd[i],
                mgx0,
                x[j],
                dy[j],
                dx[j],
                rstd[j],
                mgx1,
                weight,
                pwc,
                dweight is not None,
            )
    if dweight is not None:
        _sum_chunks(pw, dweight)


_local = threading.local()


def _scratch(rows, n, dtype, arrays):
    """A 64-byte aligned buffer for `arrays` blocks of _partials, kept per thread and per dtype
    (allocating it per call cost ~0.5 ms of page faults at n = 16384)."""
    buf = getattr(_local, dtype.char, None)
    # >= what _partials uses: each chunk's row padded to a whole cache line (< n + 16 elements)
    size = arrays * (min(rows, _MAX_CHUNKS) * (n + 16) + _SKEW)
    if buf is None or buf.shape[0] < size:
        buf = on_line((size,), dtype)
        setattr(_local, dtype.char, buf)
    return buf


def _short(rows, n, arrays, itemsize):
    """Whether a call runs as short rows in cache: rows of 1 to _SHORT_ROW elements, and the call's
    `arrays` arrays of (rows, n), counted in the accumulation dtype (`itemsize` bytes: a 16-bit
    input runs as its float32 twin does, so that its result is the float32 result rounded once, to
    the bit), within _STREAM_BYTES."""
    return 0 < n <= _SHORT_ROW and arrays * rows * n * itemsize <= _STREAM_BYTES


# name: (short-row kernel, streaming kernel, how many (rows, n) arrays _short counts, the argument
# positions of the row arrays a 16-bit call passes as bits, blocks of _partials scratch)
_KERNELS = {
    "layer_norm_forward": (_ln_forward_short, _ln_forward, 2, (0, 4), 0),
    "layer_norm_backward": (_ln_backward_short, _ln_backward, 3, (0, 1, 5), 2),
    "rms_norm_forward": (_rms_forward_short, _rms_forward, 2, (0, 3), 0),
    "rms_norm_backward": (_rms_backward_short, _rms_backward, 3, (0, 1, 4), 1),
}


def entry(name, rows, n, dtype):
    """The function that does what entry point `name` does on (rows, n) row arrays of `dtype`, with
    what depends only on those decided now: an op's call plan (normref/_plans.py) asks once and
    keeps it. For a float32 or float64 forward it is the compiled kernel itself."""
    short, streaming, arrays, row_args, blocks = _KERNELS[name]
    half = np.dtype(dtype).itemsize == 2  # float16, bfloat16: computed in float32
    acc = np.dtype(np.float32) if half else np.dtype(dtype)
    kernel = short if _short(rows, n, arrays, acc.itemsize) else streaming
    if not (half or blocks):
        return kernel

    def call(*args):
        if half:  # the row arrays as their bits (see _half.py)
            args = [as_bits(a) if at in row_args else a for at, a in enumerate(args)]
        if blocks:
            args = (*args, _scratch(rows, n, acc, blocks))
        kernel(*args)

    return call


# The contract's entry points (docs/contracts.md): each runs what entry() gives for its arrays. eps
# becomes a Python float so that a NumPy scalar eps (rms_norm's default is finfo(dtype).eps) does
# not compile another specialisation.


def layer_norm_forward(x, weight, bias, eps, y, mean, rstd):
    """y, mean, rstd <- LayerNorm of the rows of x."""
    entry("layer_norm_forward", *x.shape, x.dtype)(x, weight, bias, float(eps), y, mean, rstd)


def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
    """dx, and dweight / dbias unless None <- LayerNorm's backward."""
    entry("layer_norm_backward", *x.shape, x.dtype)(dy, x, mean, rstd, weight, dx, dweight, dbias)


def rms_norm_forward(x, weight, eps, y, rstd):
    """y, rstd <- RMSNorm of the rows of x."""
    entry("rms_norm_forward", *x.shape, x.dtype)(x, weight, float(eps), y, rstd)


def rms_norm_backward(dy, x, rstd, weight, dx, dweight):
    """dx, and dweight unless None <- RMSNorm's backward."""
    entry("rms_norm_backward", *x.shape, x.dtype)(dy, x, rstd, weight, dx, dweight)
