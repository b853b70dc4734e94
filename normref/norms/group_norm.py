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
from normref.norms import _common

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
    xp, channels = _common.channel_inputs(_NAME, x, out, weight=weight, bias=bias)
    groups = _common.groups(_NAME, num_groups, channels)
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
        x_hat, mean, rstd, _ = _common.moments(xp, xp.reshape(x, view), _STAT_AXES, eps, acc)
        y = xp.astype(_common.affine(xp, x_hat, weight, bias, pshape, acc), x.dtype)
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
    x = saved.x
    xp = _common.backward_inputs(_NAME, dy, x, out)
    kernels = kernels_for(registry.OPS[_NAME], x, backend)

    n, groups = saved.mean.shape
    if kernels is not None:
        return _common.kernel_backward(
            xp,
            kernels.group_norm_backward,
            dy,
            saved,
            out,
            _xp.as_rows(xp, saved.mean, n, groups),
            _xp.as_rows(xp, saved.rstd, n, groups),
            _xp.param_vector(xp, saved.weight, saved.mean.dtype),
        )
    channels, s = x.shape[1], math.prod(x.shape[2:])
    return _common.normalized_backward(
        xp,
        dy,
        saved,
        out,
        view=(n, groups, channels // groups, s),
        pshape=(1, groups, channels // groups, 1),
        stats_shape=(n, groups, 1, 1),
        axes=_STAT_AXES,
        param_axes=_PARAM_SUM_AXES,
        through_stats=True,
    )


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
    pshape = (1, num_groups, channels // num_groups, 1)
    xa = xp.reshape(xp.astype(x, xp.float64), view)
    mean, var = _common.variant_moments(xp, xa, _STAT_AXES, fast_variance)
    x_hat = (xa - mean) / xp.sqrt(var + eps)
    if cast_before_affine:
        x_hat = xp.astype(xp.astype(x_hat, x.dtype), xp.float64)
    y = _common.affine(xp, x_hat, weight, bias, pshape, xp.float64)
    return xp.astype(xp.reshape(y, x.shape), x.dtype)
