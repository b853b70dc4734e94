"""Weight standardization (Qiao et al., 2019). The math, derived: specs/weight_standardization.md.

Each output channel (dimension 0) of the weight is standardized over its fan-in, the n values of
weight[c] (n = prod(weight.shape[1:])), as in the authors' PyTorch code: the standard deviation is
the unbiased one (torch.std's default) and eps is added to it, outside the square root::

    mean  = sum(weight[c]) / n
    std   = sqrt(sum((weight[c] - mean)^2) / (n - 1))
    w[c]  = (weight[c] - mean) / (std + eps)

Backward, with g = dw[c], y = w[c] and means over the n values of the channel::

    dweight[c] = (g - mean(g)) / (std + eps) - y * sum(g * y) / ((n - 1) * std)

(the last term is taken as 0 for a constant channel, std = 0, where std has no derivative).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for

__all__ = [
    "WeightStandardizationSaved",
    "weight_standardization",
    "weight_standardization_forward",
    "weight_standardization_backward",
]

_NAME = "weight_standardization"


class WeightStandardizationSaved(NamedTuple):
    """What the backward needs from the forward."""

    weight: Any  # the input, its own dtype and shape
    mean: Any  # (C, 1) accumulation dtype: the per-channel mean
    std: Any  # (C, 1) accumulation dtype: the unbiased standard deviation (without eps)
    eps: float


def weight_standardization(weight, *, eps=1e-5, out=None, backend=None):
    """w = (weight - mean) / (std + eps) per output channel, std unbiased."""
    return weight_standardization_forward(weight, eps=eps, out=out, backend=backend)[0]


def weight_standardization_forward(weight, *, eps=1e-5, out=None, backend=None):
    """Weight standardization of `weight` (C_out, *fan_in); returns
    (w, WeightStandardizationSaved).

    The authors' reference implementation (joe-siyuan-qiao/WeightStandardization, PyTorch): the
    unbiased standard deviation, with eps = 1e-5 added to it. timm's StdConv2d and BiT divide by
    sqrt(biased var + eps) instead; see specs/weight_standardization.md, Conventions. The fan-in
    must hold at least 2 values (the unbiased estimate divides by n - 1). `out`, if given
    (weight's shape and dtype, writable), receives w and is returned as it; the kernels write
    straight into a C-contiguous `out`.

    >>> import numpy as np, normref
    >>> np.round(normref.weight_standardization(np.array([[1.0, 2.0, 3.0]])), 4)
    array([[-1.,  0.,  1.]])
    """
    xp = _xp.namespace(weight, out)
    _checks.floating(_NAME, "weight", weight, xp)
    _checks.min_ndim(_NAME, "weight", weight, 2, "(C_out, *fan_in)")
    eps = _checks.positive(_NAME, "eps", eps)
    channels, n = weight.shape[0], math.prod(weight.shape[1:])
    if n < 2:
        raise ValueError(
            f"{_NAME}: each output channel needs at least 2 values for the unbiased standard "
            f"deviation, got weight of shape {tuple(weight.shape)} (fan-in {n})"
        )
    _checks.output(_NAME, "out", out, weight)
    kernels = kernels_for(registry.OPS[_NAME], weight, backend)

    acc = _xp.accumulation_dtype(xp, weight.dtype)
    if kernels is None:
        centred, mean, sumsq = channel_moments(xp, xp.reshape(weight, (channels, n)), acc)
        std = xp.sqrt(sumsq / (n - 1))
        w = xp.astype(centred / (std + eps), weight.dtype)
    else:  # the same numerics, one output channel per row (normref/kernels/*/reparam*)
        w = _xp.rows_buffer(xp, out, channels, n, weight.dtype)
        mean = xp.empty((channels,), dtype=acc)
        std = xp.empty((channels,), dtype=acc)
        kernels.weight_standardization_forward(
            _xp.as_rows(xp, weight, channels, n), eps, w, mean, std
        )
        mean, std = xp.reshape(mean, (channels, 1)), xp.reshape(std, (channels, 1))
    w = _xp.deliver(xp, w, out, tuple(weight.shape))
    return w, WeightStandardizationSaved(weight, mean, std, eps)


def weight_standardization_backward(
    dw, saved: WeightStandardizationSaved, *, out=None, backend=None
):
    """(dweight,): the gradient of weight_standardization from the upstream gradient dw.

    `out`, if given (weight's shape and dtype, writable), receives dweight and is returned as it
    (written straight by the kernels when C-contiguous).
    """
    weight = saved.weight
    xp = _xp.namespace(dw, weight, out)
    _checks.floating(_NAME, "dw", dw, xp)
    _checks.same_shape(_NAME, "dw", dw, "weight", weight)
    _checks.same_dtype(_NAME, "dw", dw, "weight", weight)
    _checks.output(_NAME, "out", out, weight)
    kernels = kernels_for(registry.OPS[_NAME], weight, backend)

    channels, n = weight.shape[0], math.prod(weight.shape[1:])
    acc = saved.mean.dtype
    if kernels is not None:
        dweight = _xp.rows_buffer(xp, out, channels, n, weight.dtype)
        kernels.weight_standardization_backward(
            _xp.as_rows(xp, dw, channels, n),
            _xp.as_rows(xp, weight, channels, n),
            _xp.param_vector(xp, saved.mean, acc),
            _xp.param_vector(xp, saved.std, acc),
            saved.eps,
            dweight,
        )
        return (_xp.deliver(xp, dweight, out, tuple(weight.shape)),)

    centred = recentred(xp, xp.reshape(weight, (channels, n)), saved.mean, acc)
    denom = saved.std + saved.eps
    y = centred / denom
    g = xp.astype(xp.reshape(dw, (channels, n)), acc)
    # d std / d weight = centred / ((n - 1) * std): undefined at std = 0, where centred = 0 too;
    # that term is taken as 0 there rather than 0 / 0.
    positive = xp.astype(saved.std > 0, acc)
    inv_std = positive / (saved.std + (1.0 - positive))  # 1 / std, and 0 where std = 0
    gy = xp.sum(g * y, axis=1, keepdims=True)
    dweight = (g - xp.mean(g, axis=1, keepdims=True)) / denom - y * gy * inv_std / (n - 1)
    return (_xp.deliver(xp, xp.astype(dweight, weight.dtype), out, tuple(weight.shape)),)


# --- shared with scaled_weight_standardization ---------------------------------------------


def channel_moments(xp, w2, acc):
    """Shifted two-pass statistics of each row of the (C, n) matrix w2, in `acc`:
    (centred = w2 - mean, mean (C, 1), sumsq = sum(centred^2) (C, 1)).

    Subtracting the row's first element K first keeps float32 exact for a channel with a large
    offset (w - K is exact when w and K are within a factor of 2), and a constant channel gives
    centred = 0 exactly (design.md §6).
    """
    wa = xp.astype(w2, acc)
    shift = wa[:, :1]
    d = wa - shift
    mean_d = xp.mean(d, axis=1, keepdims=True)
    centred = d - mean_d
    return centred, shift + mean_d, xp.sum(centred * centred, axis=1, keepdims=True)


def recentred(xp, w2, mean, acc):
    """w2 - mean recomputed from the saved mean, minus its own row mean: the exact centred weight
    has mean 0, and removing the mean cancels the rounding of the saved mean (as layer_norm's
    backward does)."""
    centred = xp.astype(w2, acc) - mean
    return centred - xp.mean(centred, axis=1, keepdims=True)


def weight_standardization_variant(weight, *, eps=1e-5, unbiased=True, eps_inside_sqrt=False):
    """The forward under a peer's differing convention (specs/weight_standardization.md,
    Conventions), for diagnosing a mismatch; float64 math, not a fast path.

    unbiased=False: the biased (population) variance. eps_inside_sqrt: divide by
    sqrt(var + eps) instead of std + eps.
    """
    xp = _xp.namespace(weight)
    channels, n = weight.shape[0], math.prod(weight.shape[1:])
    wa = xp.reshape(xp.astype(weight, xp.float64), (channels, n))
    centred = wa - xp.mean(wa, axis=1, keepdims=True)
    var = xp.sum(centred * centred, axis=1, keepdims=True) / (n - 1 if unbiased else n)
    scale = 1.0 / xp.sqrt(var + eps) if eps_inside_sqrt else 1.0 / (xp.sqrt(var) + eps)
    return xp.astype(xp.reshape(centred * scale, tuple(weight.shape)), weight.dtype)
