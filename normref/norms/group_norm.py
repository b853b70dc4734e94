"""Group normalization (Wu & He, 2018). The math, derived: specs/group_norm.md.

x has shape (N, C, *spatial); the C channels are split into G = num_groups groups of C / G
consecutive channels, and each (sample, group) is normalized over its n = (C / G) * S values
(S = prod(spatial)), then scaled and shifted per channel::

    mean  = sum(x) / n                         per (sample, group)
    var   = sum((x - mean)^2) / n              biased
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = x_hat * weight[c] + bias[c]

Backward, with g = dy * weight[c] and means over the n values of a (sample, group)::

    dx      = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    dweight = sum over samples and spatial positions of dy * x_hat
    dbias   = sum over samples and spatial positions of dy

One group is layer norm over (C, *spatial) with a per-channel affine; C groups is instance norm.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.norms.batch_norm import _affine, _moments, _moments_backward, _param_grads, _recentred

__all__ = ["GroupNormSaved", "group_norm", "group_norm_forward", "group_norm_backward"]

_NAME = "group_norm"
# x is viewed as (N, G, C / G, S): statistics over the last two axes, parameters over the middle.
_STAT_AXES = (2, 3)
_PARAM_SUM_AXES = (0, 3)


class GroupNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    x: Any  # the input, its own dtype and shape (N, C, *spatial)
    mean: Any  # (N, G): per (sample, group) mean, accumulation dtype
    rstd: Any  # (N, G): 1 / sqrt(var + eps), accumulation dtype
    weight: Any  # (C,) or None
    bias_dtype: Any  # dtype of the bias, or None when there is no bias


def group_norm(x, weight=None, bias=None, *, num_groups=None, eps=1e-5, out=None, backend=None):
    """y = (x - mean) / sqrt(var + eps) * weight + bias per (sample, group); see
    group_norm_forward."""
    return group_norm_forward(
        x, weight, bias, num_groups=num_groups, eps=eps, out=out, backend=backend
    )[0]


def group_norm_forward(
    x, weight=None, bias=None, *, num_groups=None, eps=1e-5, out=None, backend=None
):
    """Group norm of `x` (N, C, *spatial); returns (y, GroupNormSaved).

    Args map to the spec's symbols: x -> x, weight -> gamma, bias -> beta (both per channel, (C,)),
    num_groups -> G, eps -> epsilon. `num_groups` is required (keyword-only, like every
    hyperparameter in normref) and must divide C; group g holds channels g*C/G .. (g+1)*C/G - 1, as
    in PyTorch, Flax, Keras and ONNX. Defaults differ: Flax and Keras use 32 groups and eps 1e-6 /
    1e-3. `out`, if given, receives y.

    >>> import numpy as np, normref
    >>> x = np.array([[1.0, 3.0, 10.0, 30.0]])
    >>> np.round(normref.group_norm(x, num_groups=2), 3)
    array([[-1.,  1., -1.,  1.]])
    """
    xp = _xp.namespace(x, weight, bias, out)
    _checks.floating(_NAME, "x", x, xp)
    _checks.min_ndim(_NAME, "x", x, 2, "(N, C, *spatial)")
    channels = x.shape[1]
    for name, arr in (("weight", weight), ("bias", bias)):
        if arr is not None:
            _checks.floating(_NAME, name, arr, xp)
            _checks.shape_is(_NAME, name, arr, (channels,), "one value per channel, x.shape[1]")
    if num_groups is None:
        raise TypeError(
            f"{_NAME}: num_groups is required: a positive integer dividing the number of "
            f"channels C = {channels}"
        )
    groups = _checks.integer(_NAME, "num_groups", num_groups, 1)
    if channels % groups:
        raise ValueError(
            f"{_NAME}: num_groups must divide the number of channels C = {channels} "
            f"(x.shape[1]), got num_groups={groups}"
        )
    eps = _checks.positive(_NAME, "eps", eps)
    _checks.output(_NAME, "out", out, x)
    n, s = x.shape[0], math.prod(x.shape[2:])
    if s == 0 or channels == 0:
        raise ValueError(
            f"{_NAME}: every group must hold at least one value, got x of shape {tuple(x.shape)}"
        )
    kernels = kernels_for(registry.OPS[_NAME], x, backend)

    acc = _xp.accumulation_dtype(xp, x.dtype)
    if kernels is None:
        view = (n, groups, channels // groups, s)
        pshape = (1, groups, channels // groups, 1)
        x_hat, mean, rstd, _ = _moments(xp, xp.reshape(x, view), _STAT_AXES, eps, acc)
        y = xp.astype(_affine(xp, x_hat, weight, bias, pshape, acc), x.dtype)
    else:
        # contract: normref/kernels/numba/channel_norms.py; x viewed as (N, C, S)
        y = _xp.rows_buffer(xp, out, n * channels, s, x.dtype)
        mean = xp.empty((n, groups), dtype=acc)
        rstd = xp.empty((n, groups), dtype=acc)
        kernels.group_norm_forward(
            xp.reshape(_xp.as_rows(xp, x, n * channels, s), (n, channels, s)),
            _xp.param_vector(xp, weight, acc),
            _xp.param_vector(xp, bias, acc),
            eps,
            xp.reshape(y, (n, channels, s)),
            mean,
            rstd,
        )
    y = _xp.deliver(xp, y, out, tuple(x.shape))
    saved = GroupNormSaved(
        x,
        xp.reshape(mean, (n, groups)),
        xp.reshape(rstd, (n, groups)),
        weight,
        None if bias is None else bias.dtype,
    )
    return y, saved


def group_norm_backward(dy, saved: GroupNormSaved, *, out=None, backend=None):
    """Gradients (dx, dweight, dbias) of group_norm from the upstream gradient dy (None for an
    absent parameter).

    `out`, if given, receives dx. dweight and dbias come back in the dtype of weight and bias.
    """
    x, weight = saved.x, saved.weight
    xp = _xp.namespace(dy, x, out)
    _checks.floating(_NAME, "dy", dy, xp)
    _checks.same_shape(_NAME, "dy", dy, "x", x)
    _checks.same_dtype(_NAME, "dy", dy, "x", x)
    _checks.output(_NAME, "out", out, x)
    kernels = kernels_for(registry.OPS[_NAME], x, backend)

    n, groups = saved.mean.shape
    channels, s = x.shape[1], math.prod(x.shape[2:])
    if kernels is not None:
        return _kernel_backward(kernels, xp, dy, saved, out, (n, channels, s))
    view = (n, groups, channels // groups, s)
    pshape = (1, groups, channels // groups, 1)
    acc = saved.mean.dtype
    mean = xp.reshape(saved.mean, (n, groups, 1, 1))
    rstd = xp.reshape(saved.rstd, (n, groups, 1, 1))
    x_hat = _recentred(xp, (xp.astype(xp.reshape(x, view), acc) - mean) * rstd, _STAT_AXES)
    dya = xp.astype(xp.reshape(dy, view), acc)
    g = dya if weight is None else dya * xp.reshape(xp.astype(weight, acc), pshape)
    dx = _moments_backward(xp, g, x_hat, rstd, _STAT_AXES)
    dx = _xp.deliver(xp, xp.astype(dx, x.dtype), out, tuple(x.shape))
    dweight, dbias = _param_grads(xp, dya, x_hat, weight, saved.bias_dtype, _PARAM_SUM_AXES)
    return dx, dweight, dbias


def _kernel_backward(kernels, xp, dy, saved, out, view):
    """group_norm_backward's (dx, dweight, dbias) from the kernels; `view` is (N, C, S)."""
    x, weight = saved.x, saved.weight
    n, channels, s = view
    acc = saved.mean.dtype
    dx = _xp.rows_buffer(xp, out, n * channels, s, x.dtype)
    dweight = None if weight is None else xp.empty((channels,), dtype=acc)
    dbias = None if saved.bias_dtype is None else xp.empty((channels,), dtype=acc)
    groups = saved.mean.shape[1]
    kernels.group_norm_backward(
        xp.reshape(_xp.as_rows(xp, dy, n * channels, s), view),
        xp.reshape(_xp.as_rows(xp, x, n * channels, s), view),
        _xp.as_rows(xp, saved.mean, n, groups),
        _xp.as_rows(xp, saved.rstd, n, groups),
        _xp.param_vector(xp, weight, acc),
        xp.reshape(dx, view),
        dweight,
        dbias,
    )
    dx = _xp.deliver(xp, dx, out, tuple(x.shape))
    if dweight is not None:
        dweight = xp.astype(dweight, weight.dtype)
    if dbias is not None:
        dbias = xp.astype(dbias, saved.bias_dtype)
    return dx, dweight, dbias


def group_norm_variant(
    x,
    weight=None,
    bias=None,
    *,
    num_groups=None,
    eps=1e-5,
    fast_variance=False,
    cast_before_affine=False,
):
    """The forward under a peer's differing convention (specs/group_norm.md, Conventions), for
    diagnosing a mismatch; float64 math, not a fast path.

    fast_variance: var = max(0, E[x^2] - E[x]^2) (Flax's default; ONNX's function body without
    the clamp). cast_before_affine: the normalized value is rounded to x's dtype before the
    weight and bias apply (ONNX GroupNormalization-21).
    """
    xp = _xp.namespace(x, weight, bias)
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    view = (n, num_groups, channels // num_groups, s)
    xa = xp.reshape(xp.astype(x, xp.float64), view)
    mean = xp.mean(xa, axis=_STAT_AXES, keepdims=True)
    if fast_variance:
        var = xp.mean(xa * xa, axis=_STAT_AXES, keepdims=True) - mean * mean
        var = xp.where(var > 0, var, xp.zeros_like(var))
    else:
        var = xp.mean((xa - mean) ** 2, axis=_STAT_AXES, keepdims=True)
    x_hat = (xa - mean) / xp.sqrt(var + eps)
    if cast_before_affine:
        x_hat = xp.astype(xp.astype(x_hat, x.dtype), xp.float64)
    y = _affine(xp, x_hat, weight, bias, (1, num_groups, channels // num_groups, 1), xp.float64)
    return xp.astype(xp.reshape(y, x.shape), x.dtype)
