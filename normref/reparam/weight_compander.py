"""Weight compander (Cakaj, Mehnert & Yang, 2023). The math, derived: specs/weight_compander.md.

Every weight is the image of a new trainable weight v under one fixed nonlinear function, eq. (1)
of the paper::

    w = a * arctan(v / b)          a, b > 0

It compresses large weights (|w| < a * pi / 2 whatever v) and expands small ones (the slope
a / b at 0 is the largest). a and b are hyperparameters shared by all weights, or, in the
paper's learnable variant (its Section III-B), parameters learned by SGD, one pair per network
("coarse") or per layer ("fine"): pass them as arrays and their gradients come back too.

Backward, with t = v / b::

    dv = dw * a / (b * (1 + t^2))
    da = sum(dw * arctan(t))
    db = -sum(dw * a * t / (b * (1 + t^2)))

1 / (1 + t^2) is evaluated without forming t^2, so no magnitude of v overflows.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for

__all__ = [
    "WeightCompanderSaved",
    "weight_compander",
    "weight_compander_forward",
    "weight_compander_backward",
    "weight_compander_init",
]

_NAME = "weight_compander"


class WeightCompanderSaved(NamedTuple):
    """What the backward needs from the forward."""

    v: Any  # the input, its own dtype and shape
    a: Any  # a Python float (a hyperparameter) or an array in the accumulation dtype
    b: Any  # likewise
    a_like: Any  # the array a was given as (for its shape and dtype), or None for a number
    b_like: Any
    acc: Any  # the accumulation dtype


def weight_compander(v, a=1.0, b=1.0, *, out=None, backend=None):
    """w = a * arctan(v / b), elementwise."""
    return weight_compander_forward(v, a, b, out=out, backend=backend)[0]


def weight_compander_forward(v, a=1.0, b=1.0, *, out=None, backend=None):
    """The weight compander of `v`; returns (w, WeightCompanderSaved).

    `a` scales and bounds the weights (|w| < a * pi / 2), `b` stretches the function along v.
    Each is a number > 0 (a fixed hyperparameter, as in the paper's main method), None (1.0),
    or an array broadcastable to v (a learnable parameter: its gradient comes back from the
    backward; usually 0-d, one per layer or per network). The paper tunes a, b in
    {0.5, ..., 1.0} per network; a = b = 1 (w = arctan(v), its Fig. 2) is normref's default.
    `out`, if given (v's shape and dtype, writable), receives w and is returned as it.

    >>> import numpy as np, normref
    >>> np.round(normref.weight_compander(np.array([-1.0, 0.0, 1.0, 100.0]), 0.5, 1.0), 4)
    array([-0.3927,  0.    ,  0.3927,  0.7804])
    """
    xp = _xp.namespace(v, out, *(p for p in (a, b) if _is_array(p)))
    _checks.floating(_NAME, "v", v, xp)
    acc = _xp.accumulation_dtype(xp, v.dtype)
    a_val, a_like = _parameter(xp, "a", a, v, acc)
    b_val, b_like = _parameter(xp, "b", b, v, acc)
    _checks.output(_NAME, "out", out, v)
    kernels_for(registry.OPS[_NAME], v, backend)  # validates `backend`; there are no kernels

    va = xp.astype(v, acc)
    w = a_val * xp.atan(va / b_val)
    w = _xp.deliver(xp, xp.astype(w, v.dtype), out, tuple(v.shape))
    return w, WeightCompanderSaved(v, a_val, b_val, a_like, b_like, acc)


def weight_compander_backward(dw, saved: WeightCompanderSaved, *, out=None, backend=None):
    """Gradients (dv, da, db) from the upstream gradient dw. da and db are None when a and b were
    numbers (fixed hyperparameters), and in the shapes and dtypes of a and b when they were
    arrays (learnable). `out`, if given (v's shape and dtype, writable), receives dv and is
    returned as it."""
    v = saved.v
    xp = _xp.namespace(dw, v, out)
    _checks.floating(_NAME, "dw", dw, xp)
    _checks.same_shape(_NAME, "dw", dw, "v", v)
    _checks.same_dtype(_NAME, "dw", dw, "v", v)
    _checks.output(_NAME, "out", out, v)
    kernels_for(registry.OPS[_NAME], v, backend)

    a, b = saved.a, saved.b
    t = xp.astype(v, saved.acc) / b
    dwa = xp.astype(dw, saved.acc)
    # d arctan(t) / dt = 1 / (1 + t^2), written as r^2 / (r^2 + q^2) with m = max(|t|, 1),
    # r = 1 / m, q = t / m: no t^2 to overflow (|t| > 1e154 in float64, 1e19 in float32), and
    # the slope goes smoothly to its limit 0.
    r = 1.0 / xp.clip(xp.abs(t), min=1.0)
    q = t * r
    dv = dwa * a / b * (r * r / (r * r + q * q))
    da = db = None
    if saved.a_like is not None:
        da = _sum_to(xp, dwa * xp.atan(t), saved.a_like)
    if saved.b_like is not None:
        db = _sum_to(xp, -dv * t, saved.b_like)  # -dw * a * t / (b * (1 + t^2))
    return _xp.deliver(xp, xp.astype(dv, v.dtype), out, tuple(v.shape)), da, db


def weight_compander_init(w, a=1.0, b=1.0):
    """v = b * tan(w / a), the inverse of the compander (the paper's eq. (4)): the v that
    reproduces an existing initialization w. Every |w| must be < a * pi / 2, the range of the
    compander; the result has w's dtype."""
    op = "weight_compander_init"
    xp = _xp.namespace(w, *(p for p in (a, b) if _is_array(p)))
    _checks.floating(op, "w", w, xp)
    acc = _xp.accumulation_dtype(xp, w.dtype)
    a_val, _ = _parameter(xp, "a", a, w, acc, op)
    b_val, _ = _parameter(xp, "b", b, w, acc, op)
    ratio = xp.astype(w, acc) / a_val
    if not bool(xp.all(xp.abs(ratio) < math.pi / 2)):
        raise ValueError(
            f"{op}: every |w| must be < a * pi / 2, the largest weight the compander can produce; "
            f"got max |w / a| = {float(xp.max(xp.abs(ratio)))} >= pi / 2"
        )
    return xp.astype(b_val * xp.tan(ratio), w.dtype)


def _is_array(p):
    return p is not None and hasattr(p, "shape") and hasattr(p, "dtype")


def _parameter(xp, name, value, v, acc, op=_NAME):
    """(value to compute with, the array it came from or None): None means 1.0, a number must be
    > 0, an array must be floating and broadcast to v's shape."""
    if value is None:
        return 1.0, None
    if not _is_array(value):
        return _checks.positive(op, name, value), None
    _checks.floating(op, name, value, xp)
    shape, target = tuple(value.shape), tuple(v.shape)
    fits = len(shape) <= len(target) and all(n in (1, m) for n, m in zip(shape[::-1], target[::-1]))
    if not fits:
        raise ValueError(
            f"{op}: {name} must broadcast to v's shape {target} (usually shape (), one {name} per "
            f"layer), got {shape}"
        )
    return xp.astype(value, acc), value


def _sum_to(xp, g, like):
    """g summed over the axes along which `like` was broadcast, in like's shape and dtype."""
    shape = tuple(like.shape)
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return xp.astype(xp.reshape(g, shape), like.dtype)
