"""Numba CPU kernels for LayerNorm and RMSNorm, forward and backward.

The op wrappers (normref/norms/layer_norm.py, rms_norm.py) validate, reshape to C-contiguous
(rows, n) arrays, allocate the outputs and call the four functions at the bottom of this module,
whose signatures and numerics are fixed by docs/contracts.md ("Kernel contract").

How the kernels are built, and why:

- Parallel only across rows (``prange``); each row is reduced by one thread, in an order fixed at
  compile time, so results do not depend on the number of threads.
- ``fastmath={'reassoc'}`` and nothing else: LLVM will not vectorize a float reduction unless it
  may reassociate it (without it LayerNorm runs at ~20% of memory bandwidth), while leaving out
  ``nnan``, ``ninf`` and ``contract`` keeps NaN/Inf handling IEEE and forbids fused multiply-adds.
- Row sums are blocked: partial sums of ``block`` elements are added into the row total, which
  keeps float32 rounding error small on long rows (10^6 elements). Blocks are slices so that every
  inner loop starts at 0, which LLVM vectorizes; ``range(b, b + block)`` was 2.5x slower.
- The large-offset shift ``x - K`` goes through ``_minus``, compiled without fastmath: under
  ``reassoc`` LLVM could rewrite ``(x - K) - mean_d`` as ``x - (K + mean_d)`` and round away exactly
  what the shift keeps.
- Each row is read from memory once and then worked on from cache. Software prefetches
  (_prefetch.py), issued a block at a time inside the cache-resident passes, fetch the next row
  (and claim the lines of the output row about to be written), so memory traffic overlaps the
  arithmetic: 0.6 -> 0.9 of the bandwidth floor on (8192, 1024).
- Two ways to run, chosen per call by ``_blocking`` from the bytes a call touches, counted in the
  accumulation dtype (never from the thread count): problems larger than L2 *stream*, with blocks
  of ``_STREAM_BLOCK`` elements and the prefetches above; problems that fit stay *cached*, with
  blocks of ``_CACHED_BLOCK`` and no prefetches, which there only cost instructions (at (64, 768):
  forward 8.7 -> ~7.7 us, backward 20.4 -> ~18.5 us). The two give results that differ in the
  last bits (different partial sums), each deterministic.
- Parameter gradients (dweight, dbias) are summed over a fixed number of row chunks
  (``_chunks(rows, n)``, independent of the thread count), each accumulated in row order within one
  thread, and the chunk partials are added in chunk order: deterministic for any thread count. The
  partials live in a per-thread scratch buffer kept between calls (see _partials, _scratch).
- float16 and bfloat16 rows pass as their bits (``as_bits``), read and written through _half.py's
  ``load`` and ``store``: computed in float32 and rounded once, like the reference.
- ``weight``/``bias``/``dweight``/``dbias`` may be None: Numba compiles a separate specialisation
  with the ``is None`` branches pruned, so inner loops carry no branch.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from normref.kernels.numba._half import as_bits, load, store
from normref.kernels.numba._prefetch import LINE, prefetch_block

__all__ = ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]

_FASTMATH = {"reassoc"}
_STREAM_BLOCK = 256  # elements per partial sum and per batch of prefetches, for streaming problems
_CACHED_BLOCK = 2048  # elements per partial sum for problems that fit in L2
_STREAM_BYTES = 1 << 20  # a call touching more bytes than this streams (L2 is 1-2 MiB per core)
_MAX_CHUNKS = 16  # row chunks for the parameter-gradient sums (fixed: determinism) ...
_CHUNK_ELEMENTS = 16384  # ... each of at least this many elements, when there are enough
_SKEW = 64  # elements added between blocks of partial sums (see _partials)


def _kernel(fn):
    return njit(cache=True, parallel=True, fastmath=_FASTMATH)(fn)


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


@_kernel
def _ln_forward(x, weight, bias, eps, y, mean, rstd, block, stream):
    acc = mean.dtype.type
    rows, n = x.shape
    if n == 0:  # no x[0] to shift by; the statistics of nothing are NaN, as mean([]) is
        mean[:] = np.nan
        rstd[:] = np.nan
        return
    nf = acc(n)
    eps_ = acc(eps)
    for i in prange(rows):
        xi = x[i]
        yi = y[i]
        nxt = min(i + 1, rows - 1)  # the row to prefetch
        k = load(xi, 0)  # the shift K: x - K is exact for rows with a large offset
        s = acc(0)
        for b in range(0, n, block):
            xb = xi[b : b + block]
            t = acc(0)
            for j in range(xb.shape[0]):
                t += _minus(load(xb, j), k)
            s += t
        m = s / nf
        v = acc(0)
        for b in range(0, n, block):
            xb = xi[b : b + block]
            t = acc(0)
            for j in range(xb.shape[0]):
                d = _minus(_minus(load(xb, j), k), m)
                t += d * d
            v += t
            if stream:
                prefetch_block(y, i, b, block, True)
        r = acc(1) / np.sqrt(v / nf + eps_)
        mean[i] = k + m
        rstd[i] = r
        for b in range(0, n, block):
            xb = xi[b : b + block]
            yb = yi[b : b + block]
            if weight is not None:
                wb = weight[b : b + block]
            if bias is not None:
                bb = bias[b : b + block]
            for j in range(xb.shape[0]):
                x_hat = _minus(_minus(load(xb, j), k), m) * r
                if weight is not None:
                    x_hat = x_hat * wb[j]
                if bias is not None:
                    x_hat = x_hat + bb[j]
                store(yb, j, x_hat)
            if stream:
                prefetch_block(x, nxt, b, block, False)


@_kernel
def _ln_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, scratch, block, stream):
    acc = mean.dtype.type
    rows, n = x.shape
    nf = acc(n)
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
        last = (c + 1) * rows // chunks - 1
        for i in range(c * rows // chunks, last + 1):
            xi = x[i]
            dyi = dy[i]
            dxi = dx[i]
            nxt = min(i + 1, last)  # the row to prefetch
            mu = mean[i]
            r = rstd[i]
            # One pass: sum(g), sum(g * xc), sum(xc) with xc = x - mean; x_hat' = xc * rstd, the
            # rstd factor is applied once per row instead of once per element.
            sg = acc(0)
            sgx = acc(0)
            sx = acc(0)
            for b in range(0, n, block):
                xb = xi[b : b + block]
                dyb = dyi[b : b + block]
                if weight is not None:
                    wb = weight[b : b + block]
                tg = acc(0)
                tgx = acc(0)
                tx = acc(0)
                for j in range(xb.shape[0]):
                    xc = load(xb, j) - mu
                    g = load(dyb, j)
                    if weight is not None:
                        g = g * wb[j]
                    tg += g
                    tgx += g * xc
                    tx += xc
                sg += tg
                sgx += tgx
                sx += tx
                if stream:
                    prefetch_block(x, nxt, b, block, False)
            # mean(g), mean(x_hat'), and mean(g * x_hat) for the re-centred x_hat = x_hat' - mx
            # (re-centring cancels the rounding of the saved mean on large-offset rows).
            mg = sg / nf
            mx = sx * r / nf
            mgx = sgx * r / nf - mx * mg
            for b in range(0, n, block):
                xb = xi[b : b + block]
                dyb = dyi[b : b + block]
                dxb = dxi[b : b + block]
                if weight is not None:
                    wb = weight[b : b + block]
                if dweight is not None:
                    pwb = pwc[b : b + block]
                if dbias is not None:
                    pbb = pbc[b : b + block]
                for j in range(xb.shape[0]):
                    x_hat = (load(xb, j) - mu) * r - mx
                    d = load(dyb, j)
                    g = d
                    if weight is not None:
                        g = d * wb[j]
                    store(dxb, j, r * (g - mg - x_hat * mgx))
                    if dweight is not None:
                        pwb[j] += d * x_hat
                    if dbias is not None:
                        pbb[j] += d
                if stream:
                    prefetch_block(dy, nxt, b, block, False)
                    prefetch_block(dx, nxt, b, block, True)
    if dweight is not None:
        _sum_chunks(pw, dweight)
    if dbias is not None:
        _sum_chunks(pb, dbias)


@_kernel
def _rms_forward(x, weight, eps, y, rstd, block, stream):
    acc = rstd.dtype.type
    rows, n = x.shape
    nf = acc(n)
    eps_ = acc(eps)
    for i in prange(rows):
        xi = x[i]
        yi = y[i]
        nxt = min(i + 1, rows - 1)  # the row to prefetch
        s = acc(0)
        for b in range(0, n, block):
            xb = xi[b : b + block]
            t = acc(0)
            for j in range(xb.shape[0]):
                t += load(xb, j) * load(xb, j)
            s += t
            if stream:
                prefetch_block(y, i, b, block, True)
        r = acc(1) / np.sqrt(s / nf + eps_)
        rstd[i] = r
        for b in range(0, n, block):
            xb = xi[b : b + block]
            yb = yi[b : b + block]
            if weight is not None:
                wb = weight[b : b + block]
            for j in range(xb.shape[0]):
                x_hat = load(xb, j) * r
                if weight is not None:
                    x_hat = x_hat * wb[j]
                store(yb, j, x_hat)
            if stream:
                prefetch_block(x, nxt, b, block, False)


@_kernel
def _rms_backward(dy, x, rstd, weight, dx, dweight, scratch, block, stream):
    acc = rstd.dtype.type
    rows, n = x.shape
    nf = acc(n)
    chunks = _chunks(rows, n)
    pw = _partials(scratch, 0, chunks, n)  # per-chunk partial sums of dweight
    for c in prange(chunks):
        pwc = pw[c, :n]
        if dweight is not None:
            pwc[:] = 0
        last = (c + 1) * rows // chunks - 1
        for i in range(c * rows // chunks, last + 1):
            xi = x[i]
            dyi = dy[i]
            dxi = dx[i]
            nxt = min(i + 1, last)  # the row to prefetch
            r = rstd[i]
            s = acc(0)  # sum(g * x), times rstd once per row: sum(g * x_hat)
            for b in range(0, n, block):
                xb = xi[b : b + block]
                dyb = dyi[b : b + block]
                if weight is not None:
                    wb = weight[b : b + block]
                t = acc(0)
                for j in range(xb.shape[0]):
                    g = load(dyb, j)
                    if weight is not None:
                        g = g * wb[j]
                    t += g * load(xb, j)
                s += t
                if stream:
                    prefetch_block(x, nxt, b, block, False)
            mgx = s * r / nf
            for b in range(0, n, block):
                xb = xi[b : b + block]
                dyb = dyi[b : b + block]
                dxb = dxi[b : b + block]
                if weight is not None:
                    wb = weight[b : b + block]
                if dweight is not None:
                    pwb = pwc[b : b + block]
                for j in range(xb.shape[0]):
                    x_hat = load(xb, j) * r
                    d = load(dyb, j)
                    g = d
                    if weight is not None:
                        g = d * wb[j]
                    store(dxb, j, r * (g - x_hat * mgx))
                    if dweight is not None:
                        pwb[j] += d * x_hat
                if stream:
                    prefetch_block(dy, nxt, b, block, False)
                    prefetch_block(dx, nxt, b, block, True)
    if dweight is not None:
        _sum_chunks(pw, dweight)


_local = threading.local()


def _scratch(rows, n, dtype, arrays):
    """A 64-byte aligned buffer for `arrays` blocks of _partials, kept per thread and per dtype
    (allocating it per call cost ~0.5 ms of page faults at n = 16384)."""
    line = LINE // dtype.itemsize
    stride = -(-n // line) * line
    size = arrays * (max(1, min(rows, _MAX_CHUNKS)) * stride + _SKEW)  # >= what _partials uses
    buf = getattr(_local, dtype.char, None)
    if buf is None or buf.shape[0] < size:
        raw = np.empty(size + line, dtype=dtype)
        skip = (-raw.ctypes.data % LINE) // dtype.itemsize
        buf = raw[skip : skip + size]
        setattr(_local, dtype.char, buf)
    return buf


def _blocking(nbytes):
    """(block, stream) for a call that touches `nbytes` of arrays, counted in the accumulation
    dtype: see the module docstring. (A 16-bit input runs as its float32 twin does, so that its
    result is the float32 result rounded once, to the bit.)"""
    if nbytes > _STREAM_BYTES:
        return _STREAM_BLOCK, True
    return _CACHED_BLOCK, False


# The contract's entry points (docs/contracts.md). eps becomes a Python float so that a NumPy
# scalar eps (rms_norm's default is finfo(dtype).eps) does not compile another specialisation.


def layer_norm_forward(x, weight, bias, eps, y, mean, rstd):
    """y, mean, rstd <- LayerNorm of the rows of x."""
    blocking = _blocking(2 * x.size * mean.itemsize)
    _ln_forward(as_bits(x), weight, bias, float(eps), as_bits(y), mean, rstd, *blocking)


def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
    """dx, and dweight / dbias unless None <- LayerNorm's backward."""
    rows, n = x.shape
    scratch = _scratch(rows, n, mean.dtype, 2)
    blocking = _blocking(3 * x.size * mean.itemsize)
    dy, x, dx = as_bits(dy), as_bits(x), as_bits(dx)
    _ln_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, scratch, *blocking)


def rms_norm_forward(x, weight, eps, y, rstd):
    """y, rstd <- RMSNorm of the rows of x."""
    blocking = _blocking(2 * x.size * rstd.itemsize)
    _rms_forward(as_bits(x), weight, float(eps), as_bits(y), rstd, *blocking)


def rms_norm_backward(dy, x, rstd, weight, dx, dweight):
    """dx, and dweight unless None <- RMSNorm's backward."""
    rows, n = x.shape
    scratch = _scratch(rows, n, rstd.dtype, 1)
    blocking = _blocking(3 * x.size * rstd.itemsize)
    _rms_backward(as_bits(dy), as_bits(x), rstd, weight, as_bits(dx), dweight, scratch, *blocking)
