"""Weight normalization (Salimans & Kingma, 2016). The math, derived: specs/weight_norm.md.

The weight is w = g * v / ||v||, with one norm per slice of v along `dim` (the norm is taken over
every other dimension: per output channel for PyTorch's default dim=0), or one norm over the whole
tensor for dim=None, where g is a scalar::

    norm = sqrt(sum(v^2))                 over the slice
    w    = v * (g / norm)

Backward, with dw = dL/dw and sums over the slice::

    dg = sum(dw * v) / norm
    dv = (g / norm) * (dw - v * dg / norm)

A slice of v that is all zeros has no direction: w, dg and dv are NaN there, as in PyTorch.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for

__all__ = [
    "WeightNormSaved",
    "weight_norm",
    "weight_norm_forward",
    "weight_norm_backward",
    "weight_norm_init",
]

_NAME = "weight_norm"


class WeightNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    v: Any  # the direction parameter, its own dtype and shape
    g_shape: tuple[int, ...]  # the shape g was given in; dg comes back in it
    g_dtype: Any
    g: Any  # g in the accumulation dtype, in the keepdims shape of `norm`
    norm: Any  # ||v|| per slice, accumulation dtype, keepdims shape (1, .., n_dim, .., 1)
    axes: tuple[int, ...]  # the axes the norm reduces over


def weight_norm(g, v, *, dim=0, out=None, backend=None):
    """w = g * v / ||v||, the norm over every dimension of v except `dim` (dim=None: all)."""
    return weight_norm_forward(g, v, dim=dim, out=out, backend=backend)[0]


def weight_norm_forward(g, v, *, dim=0, out=None, backend=None):
    """Weight normalization of the direction `v` with magnitude `g`; returns (w, WeightNormSaved).

    `dim` is PyTorch's: the dimension that keeps one norm per index (0, the output channels, by
    default); dim=None takes one norm over the whole tensor and g is a scalar (shape ()). A
    negative dim is refused: PyTorch reads dim=-1 as "the whole tensor", Python indexing as "the
    last axis", and normref will not guess; write dim=None or dim=v.ndim - 1.

    `g` has PyTorch's shape, v.shape with every dimension but `dim` set to 1 (what
    `weight_norm_init` returns), or the flat shape (v.shape[dim],); for dim=None, shape ().
    The result has v's shape and dtype. `out`, if given (v's shape and dtype, writable),
    receives w and is returned as it; the Numba and CUDA kernels write straight into a
    C-contiguous `out` for dim=0 and dim=None (another dim costs one copy into it).

    >>> import numpy as np, normref
    >>> normref.weight_norm(np.array([[2.0], [3.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
    array([[1.2, 1.6],
           [0. , 3. ]])
    """
    xp = _xp.namespace(g, v, out)
    _checks.floating(_NAME, "v", v, xp)
    _checks.floating(_NAME, "g", g, xp)
    _checks.min_ndim(_NAME, "v", v, 1, "(the weight's shape)")
    axes, keep = _layout(tuple(v.shape), dim)
    _check_g(g, keep, tuple(v.shape), dim)
    _checks.output(_NAME, "out", out, v)
    kernels = kernels_for(registry.OPS[_NAME], v, backend)

    acc = _xp.accumulation_dtype(xp, v.dtype)
    ga = xp.reshape(xp.astype(g, acc), keep)
    if kernels is None:
        va = xp.astype(v, acc)
        norm = xp.sqrt(xp.sum(va * va, axis=axes, keepdims=True))
        w = _xp.deliver(xp, xp.astype(va * (ga / norm), v.dtype), out, tuple(v.shape))
    else:
        rows, n = _rows_shape(tuple(v.shape), dim)
        w = _rows_out(xp, out, rows, n, dim, v.dtype)
        norm = xp.empty((rows,), dtype=acc)
        kernels.weight_norm_forward(_as_rows(xp, v, dim), _xp.param_vector(xp, ga, acc), w, norm)
        w = _from_rows(xp, w, tuple(v.shape), dim, out)
        norm = xp.reshape(norm, _norm_shape(tuple(v.shape), axes))
    return w, WeightNormSaved(v, tuple(g.shape), g.dtype, ga, norm, axes)


def weight_norm_backward(dw, saved: WeightNormSaved, *, out=None, backend=None):
    """Gradients (dg, dv) of weight_norm from the upstream gradient dw, in the shapes and dtypes
    of g and v.

    `out`, if given (v's shape and dtype, writable), receives dv, the gradient of the weight-sized
    input, and is returned as it (written straight by the kernels as in the forward).
    """
    v = saved.v
    xp = _xp.namespace(dw, v, out)
    _checks.floating(_NAME, "dw", dw, xp)
    _checks.same_shape(_NAME, "dw", dw, "v", v)
    _checks.same_dtype(_NAME, "dw", dw, "v", v)
    _checks.output(_NAME, "out", out, v)
    kernels = kernels_for(registry.OPS[_NAME], v, backend)

    acc = saved.norm.dtype
    if kernels is None:
        va = xp.astype(v, acc)
        dwa = xp.astype(dw, acc)
        # dg per slice, still in the keepdims shape so that it broadcasts against v.
        dg = xp.sum(dwa * va, axis=saved.axes, keepdims=True) / saved.norm
        dv = xp.astype((saved.g / saved.norm) * (dwa - va * (dg / saved.norm)), v.dtype)
        dv = _xp.deliver(xp, dv, out, tuple(v.shape))
    else:
        shape = tuple(v.shape)
        dim = _dim_of(saved.axes, len(shape))
        rows, n = _rows_shape(shape, dim)
        dv = _rows_out(xp, out, rows, n, dim, v.dtype)
        dg = xp.empty((rows,), dtype=acc)
        kernels.weight_norm_backward(
            _as_rows(xp, dw, dim),
            _as_rows(xp, v, dim),
            _xp.param_vector(xp, saved.g, acc),
            _xp.param_vector(xp, saved.norm, acc),
            dv,
            dg,
        )
        dv = _from_rows(xp, dv, shape, dim, out)
    dg = xp.reshape(xp.astype(dg, saved.g_dtype), saved.g_shape)
    return dg, dv


def weight_norm_init(w, dim=0):
    """(g, v) such that weight_norm(g, v, dim=dim) == w: g = ||w|| per slice, in PyTorch's
    keepdims shape (shape () for dim=None), and v a copy of w. PyTorch's `right_inverse`."""
    xp = _xp.namespace(w)
    _checks.floating("weight_norm_init", "w", w, xp)
    _checks.min_ndim("weight_norm_init", "w", w, 1, "(the weight's shape)")
    axes, keep = _layout(tuple(w.shape), dim, op="weight_norm_init")
    acc = _xp.accumulation_dtype(xp, w.dtype)
    wa = xp.astype(w, acc)
    g = xp.reshape(xp.sqrt(xp.sum(wa * wa, axis=axes, keepdims=True)), keep)
    return xp.astype(g, w.dtype), xp.asarray(w, copy=True)


def _layout(shape, dim, op=_NAME):
    """(axes the norm reduces over, g's keepdims shape) for a v of `shape`."""
    if dim is None:
        return tuple(range(len(shape))), ()
    d = _checks.axis(op, "dim", dim, len(shape), negative=False)
    axes = tuple(i for i in range(len(shape)) if i != d)
    keep = tuple(n if i == d else 1 for i, n in enumerate(shape))
    return axes, keep


# --- the kernels' layout: one row per slice ----------------------------------------------------
# The kernels (normref/kernels/numba/reparam.py, cuda/reparam_launch.py) take v as a C-contiguous
# (rows, n) array with one slice per row: for dim=0 (the output channels) that is v itself
# reshaped, a view; for another dim, v with `dim` moved to the front, a copy; for dim=None, one row.


def _rows_shape(shape, dim):
    rows = 1 if dim is None else shape[dim]
    return rows, math.prod(shape) // rows if rows else 0


def _as_rows(xp, a, dim):
    """`a` (v's shape) as the kernels' C-contiguous (rows, n) array."""
    rows, n = _rows_shape(tuple(a.shape), dim)
    if dim not in (None, 0):
        a = xp.moveaxis(a, dim, 0)
    return _xp.as_rows(xp, a, rows, n)


def _rows_out(xp, out, rows, n, dim, dtype):
    """Where a kernel writes its (rows, n) result: for dim=0 and dim=None the rows are v's own
    C order, so a C-contiguous `out` itself; for another dim the rows are v with `dim` moved to
    the front, which `out` cannot hold, so a new array (`_from_rows` copies it into `out`)."""
    if dim in (None, 0):
        return _xp.rows_buffer(xp, out, rows, n, dtype)
    return xp.empty((rows, n), dtype=dtype)


def _from_rows(xp, a2, shape, dim, out=None):
    """The (rows, n) result of a kernel back in v's shape, C-contiguous, or written into `out`
    (no copy when the kernel wrote into it already: `_rows_out`)."""
    if dim in (None, 0):
        return _xp.deliver(xp, a2, out, shape)
    moved = (shape[dim],) + shape[:dim] + shape[dim + 1 :]
    back = xp.moveaxis(xp.reshape(a2, moved), 0, dim)
    if out is not None:
        out[...] = back  # the one copy, straight from the moved layout
        return out
    return xp.reshape(xp.reshape(back, (-1,)), shape)  # flattening copies, in C order


def _norm_shape(shape, axes):
    """The keepdims shape of the norm: v's shape with the reduced axes set to 1."""
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _dim_of(axes, ndim):
    """The `dim` that reduces over `axes` (None: all of them)."""
    kept = [i for i in range(ndim) if i not in axes]
    return kept[0] if kept else None


def _check_g(g, keep, v_shape, dim):
    allowed = [keep] if dim is None else [keep, (v_shape[dim],)]
    if tuple(g.shape) not in allowed:
        forms = " or ".join(str(s) for s in dict.fromkeys(allowed))
        raise ValueError(
            f"{_NAME}: g must have shape {forms} (one magnitude per slice of v along "
            f"dim={dim} for v of shape {v_shape}), got {tuple(g.shape)}"
        )


def weight_norm_variant(g, v, *, dim=0, flax_eps=False):
    """The forward under a peer's differing convention (specs/weight_norm.md, Conventions), for
    diagnosing a mismatch; float64 math, not a fast path.

    flax_eps: Flax's WeightNorm, w = g * v * rsqrt(sum(v^2) + 1e-12) (finite for a zero slice).
    """
    xp = _xp.namespace(g, v)
    axes, keep = _layout(tuple(v.shape), dim)
    va = xp.astype(v, xp.float64)
    sumsq = xp.sum(va * va, axis=axes, keepdims=True)
    inv = 1.0 / xp.sqrt(sumsq + 1e-12) if flax_eps else 1.0 / xp.sqrt(sumsq)
    w = va * inv * xp.reshape(xp.astype(g, xp.float64), keep)
    return xp.astype(w, v.dtype)
