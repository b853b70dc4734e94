"""Scaled weight standardization (Brock, De & Smith, 2021: NF-ResNets and NF-Nets). The math,
derived: specs/scaled_weight_standardization.md.

Each output channel c (dimension 0) of the weight is centred over its fan-in of N values and
scaled to unit norm, then multiplied by a learnable per-channel gain and the activation's
nonlinearity constant gamma. With DeepMind's reference code (nfnets/base.py, WSConv2D)::

    mean  = sum(weight[c]) / N
    var   = sum((weight[c] - mean)^2) / N          (biased)
    w[c]  = gamma * gain[c] * (weight[c] - mean) / sqrt(max(N * var, eps))

N * var is just sum((weight[c] - mean)^2), so this is the centred weight divided by its norm.
Backward, with h = dw[c] * gamma * gain[c], c_hat = (weight[c] - mean) / sqrt(max(N * var, eps))
and r = 1 / sqrt(max(N * var, eps))::

    dweight[c] = r * (h - mean(h) - [N * var > eps] * c_hat * sum(h * c_hat))
    dgain[c]   = gamma * sum(dw[c] * c_hat)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.reparam.weight_standardization import channel_moments, recentred

__all__ = [
    "ScaledWeightStandardizationSaved",
    "scaled_weight_standardization",
    "scaled_weight_standardization_forward",
    "scaled_weight_standardization_backward",
]

_NAME = "scaled_weight_standardization"


class ScaledWeightStandardizationSaved(NamedTuple):
    """What the backward needs from the forward."""

    weight: Any  # the input, its own dtype and shape
    gain: Any  # (C, 1) in the accumulation dtype, or None
    gain_shape: tuple[int, ...] | None  # the shape gain was given in; dgain comes back in it
    gain_dtype: Any
    mean: Any  # (C, 1) accumulation dtype
    rscale: Any  # (C, 1): r = 1 / sqrt(max(N * var, eps))
    active: Any  # (C, 1) in the accumulation dtype: 1 where N * var > eps, else 0
    gamma: float


def scaled_weight_standardization(
    weight, gain=None, *, gamma=1.0, eps=1e-4, out=None, backend=None
):
    """w = gamma * gain * (weight - mean) / sqrt(max(N * var, eps)) per output channel."""
    return scaled_weight_standardization_forward(
        weight, gain, gamma=gamma, eps=eps, out=out, backend=backend
    )[0]


def scaled_weight_standardization_forward(
    weight, gain=None, *, gamma=1.0, eps=1e-4, out=None, backend=None
):
    """Scaled weight standardization of `weight` (C_out, *fan_in); returns
    (w, ScaledWeightStandardizationSaved).

    `gain` is the learnable per-channel gain (None: 1), of shape (C_out,) (DeepMind's) or
    (C_out, 1, ..., 1) (timm's ScaledStdConv2d). `gamma` is the nonlinearity's gain constant of
    the NF-ResNet paper (1.7139588594436646 for ReLU in DeepMind's table; DeepMind applies it to
    the activation instead, which is the same network). `eps` (1e-4) is a floor on N * var,
    DeepMind's `jnp.maximum(var * fan_in, eps)`; timm adds its eps = 1e-6 to var inside the
    square root instead (specs/scaled_weight_standardization.md, Conventions). `out`, if given
    (weight's shape and dtype, writable), receives w and is returned as it.

    >>> import numpy as np, normref
    >>> np.round(normref.scaled_weight_standardization(np.array([[1.0, 2.0, 3.0]])), 4)
    array([[-0.7071,  0.    ,  0.7071]])
    """
    xp = _xp.namespace(weight, gain, out)
    _checks.floating(_NAME, "weight", weight, xp)
    _checks.min_ndim(_NAME, "weight", weight, 2, "(C_out, *fan_in)")
    channels, n = weight.shape[0], math.prod(weight.shape[1:])
    if gain is not None:
        _checks.floating(_NAME, "gain", gain, xp)
        keep = (channels,) + (1,) * (weight.ndim - 1)
        if tuple(gain.shape) not in ((channels,), keep):
            raise ValueError(
                f"{_NAME}: gain must have shape {(channels,)} or {keep} (one gain per output "
                f"channel, weight.shape[0]), got {tuple(gain.shape)}"
            )
    gamma = _checks.finite(_NAME, "gamma", gamma)
    eps = _checks.positive(_NAME, "eps", eps)
    _checks.output(_NAME, "out", out, weight)
    kernels_for(registry.OPS[_NAME], weight, backend)  # validates `backend`; there are no kernels

    acc = _xp.accumulation_dtype(xp, weight.dtype)
    centred, mean, sumsq = channel_moments(xp, xp.reshape(weight, (channels, n)), acc)
    # sumsq = N * var. The floor applies to it, not to var (DeepMind's placement).
    rscale = 1.0 / xp.sqrt(xp.clip(sumsq, min=eps))
    active = xp.astype(sumsq > eps, acc)
    ga = None if gain is None else xp.reshape(xp.astype(gain, acc), (channels, 1))
    scale = gamma * rscale if ga is None else gamma * ga * rscale
    w = _xp.deliver(xp, xp.astype(centred * scale, weight.dtype), out, tuple(weight.shape))
    saved = ScaledWeightStandardizationSaved(
        weight,
        ga,
        None if gain is None else tuple(gain.shape),
        None if gain is None else gain.dtype,
        mean,
        rscale,
        active,
        gamma,
    )
    return w, saved


def scaled_weight_standardization_backward(
    dw, saved: ScaledWeightStandardizationSaved, *, out=None, backend=None
):
    """(dweight, dgain) from the upstream gradient dw; dgain is None when there was no gain.

    `out`, if given (weight's shape and dtype, writable), receives dweight and is returned as it.
    """
    weight = saved.weight
    xp = _xp.namespace(dw, weight, out)
    _checks.floating(_NAME, "dw", dw, xp)
    _checks.same_shape(_NAME, "dw", dw, "weight", weight)
    _checks.same_dtype(_NAME, "dw", dw, "weight", weight)
    _checks.output(_NAME, "out", out, weight)
    kernels_for(registry.OPS[_NAME], weight, backend)

    channels, n = weight.shape[0], math.prod(weight.shape[1:])
    acc = saved.mean.dtype
    c_hat = recentred(xp, xp.reshape(weight, (channels, n)), saved.mean, acc) * saved.rscale
    g = xp.astype(xp.reshape(dw, (channels, n)), acc)
    h = g * saved.gamma if saved.gain is None else g * (saved.gamma * saved.gain)
    # Where the floor eps is active the scale r is a constant and only the centring remains.
    proj = saved.active * xp.sum(h * c_hat, axis=1, keepdims=True)
    dweight = saved.rscale * (h - xp.mean(h, axis=1, keepdims=True) - c_hat * proj)
    dweight = _xp.deliver(xp, xp.astype(dweight, weight.dtype), out, tuple(weight.shape))
    dgain = None
    if saved.gain is not None:
        dgain = saved.gamma * xp.sum(g * c_hat, axis=1)
        dgain = xp.reshape(xp.astype(dgain, saved.gain_dtype), saved.gain_shape)
    return dweight, dgain


def scaled_weight_standardization_variant(weight, gain=None, *, gamma=1.0, eps=1e-4, timm=False):
    """The forward under a peer's differing convention
    (specs/scaled_weight_standardization.md, Conventions), for diagnosing a mismatch; float64.

    timm: ScaledStdConv2d, w = gain * gamma / sqrt(N) * (weight - mean) / sqrt(var + eps),
    i.e. eps inside the square root and multiplied by N: sqrt(N * var + N * eps).
    """
    xp = _xp.namespace(weight, gain)
    channels, n = weight.shape[0], math.prod(weight.shape[1:])
    wa = xp.reshape(xp.astype(weight, xp.float64), (channels, n))
    centred = wa - xp.mean(wa, axis=1, keepdims=True)
    sumsq = xp.sum(centred * centred, axis=1, keepdims=True)
    if timm:
        scale = gamma / math.sqrt(n) / xp.sqrt(sumsq / n + eps)
    else:
        scale = gamma / xp.sqrt(xp.clip(sumsq, min=eps))
    if gain is not None:
        scale = scale * xp.reshape(xp.astype(gain, xp.float64), (channels, 1))
    return xp.astype(xp.reshape(centred * scale, tuple(weight.shape)), weight.dtype)
