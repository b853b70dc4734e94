"""Deliberately deviant implementations, written the way a framework author might, each as an
adapter (normref/conformance/adapter.py): the diagnosis must name the convention each follows.

Every function here is independent NumPy code (none calls normref), computing in float64 for
float64 inputs and float32 otherwise, and rounding once at the end, so that the only difference
from normref is the convention under test.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np


def _dt(x: np.ndarray) -> type:
    return np.float64 if x.dtype == np.float64 else np.float32


def _trailing(x: np.ndarray, weight: np.ndarray | None, normalized_shape: Any) -> tuple[int, ...]:
    if normalized_shape is None:
        k = weight.ndim if weight is not None else 1
    else:
        k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm(*, eps_outside_sqrt=False, unbiased=False, shift=0.0):
    """LayerNorm with eps added to the standard deviation, or the unbiased variance (torch.var's
    default), or every output shifted by `shift` (a bug no convention explains)."""

    def forward(x, weight, bias, *, normalized_shape, eps):
        axes = _trailing(x, weight, normalized_shape)
        xc = x.astype(_dt(x))
        n = int(np.prod([x.shape[a] for a in axes]))
        mean = xc.mean(axis=axes, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):  # unbiased: 0 / 0 for n = 1
            var = ((xc - mean) ** 2).sum(axis=axes, keepdims=True) / (n - 1 if unbiased else n)
            scale = 1 / (np.sqrt(var) + eps) if eps_outside_sqrt else 1 / np.sqrt(var + eps)
            y = (xc - mean) * scale
        if weight is not None:
            y = y * weight.astype(xc.dtype)
        if bias is not None:
            y = y + bias.astype(xc.dtype)
        return (y + shift).astype(x.dtype)

    return forward


def rms_norm_eps_outside_sqrt(x, weight, *, normalized_shape, eps):
    """RMSNorm with eps added to the root mean square: x / (rms + eps)."""
    axes = _trailing(x, weight, normalized_shape)
    xc = x.astype(_dt(x))
    eps = np.finfo(xc.dtype).eps if eps is None else eps
    y = xc / (np.sqrt((xc * xc).mean(axis=axes, keepdims=True)) + eps)
    if weight is not None:
        y = y * weight.astype(xc.dtype)
    return y.astype(x.dtype)


def batch_norm_keras_momentum(
    x, weight, bias, running_mean, running_var, *, training, momentum, eps, num_batches_tracked
):
    """BatchNorm whose running statistics follow Keras: r = momentum * r + (1 - momentum) * stat,
    with the momentum as given and the biased batch variance. (PyTorch's cumulative average for
    momentum=None is kept: Keras has none.)"""
    if not training:
        raise NotImplementedError("training mode only")
    axes = (0, *range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    xc = x.astype(np.float64)
    mean = xc.mean(axis=axes)
    var = ((xc - mean.reshape(shape)) ** 2).mean(axis=axes)
    y = (xc - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.astype(np.float64).reshape(shape) + bias.astype(np.float64).reshape(shape)
    if momentum is None:
        old = 1 - 1 / (num_batches_tracked + 1)
    else:
        old = momentum  # Keras: the momentum weighs the old statistic
    new_mean = old * running_mean.astype(np.float64) + (1 - old) * mean
    new_var = old * running_var.astype(np.float64) + (1 - old) * var
    count = None if num_batches_tracked is None else num_batches_tracked + 1
    return (
        y.astype(x.dtype),
        new_mean.astype(running_mean.dtype),
        new_var.astype(running_var.dtype),
        count,
    )


def adam(*, decoupled: bool, bias_correction: bool = True, eps_inside_sqrt: bool = False):
    """An Adam factory (the adapter protocol's optimizer) with one convention switched:
    decoupled weight decay or L2, bias correction on or off, eps inside or outside the sqrt."""

    def factory(params, *, lr, betas, eps, weight_decay, amsgrad, maximize):
        if amsgrad:
            raise NotImplementedError("no amsgrad")
        b1, b2 = betas
        params = [p.copy() for p in params]
        mu = [np.zeros_like(p) for p in params]
        nu = [np.zeros_like(p) for p in params]
        t = 0

        def step(grads):
            nonlocal t
            t += 1
            bc1, bc2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
            for i, (p, g) in enumerate(zip(params, grads)):
                g = -g if maximize else g
                if weight_decay and decoupled:
                    p = p * (1 - lr * weight_decay)
                elif weight_decay:
                    g = g + weight_decay * p
                mu[i] = b1 * mu[i] + (1 - b1) * g
                nu[i] = b2 * nu[i] + (1 - b2) * g * g
                if eps_inside_sqrt:
                    denom = np.sqrt(nu[i] / bc2 + eps)
                else:
                    denom = np.sqrt(nu[i] / bc2) + eps
                params[i] = (p - lr * (mu[i] / bc1) / denom).astype(p.dtype)
            return params

        return step

    return factory


def clip_by_global_norm(*, torch_eps: bool):
    """A transform factory clipping by the global norm: PyTorch's g * min(c / (norm + 1e-6), 1),
    or without the 1e-6 the way Pascanu et al. and optax write it (untouched below c, else
    g / norm * c)."""

    def factory(params, *, max_norm):
        def apply(grads):
            norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads)))
            if torch_eps:
                scale = min(max_norm / (norm + 1e-6), 1.0)
                return [(g.astype(np.float64) * scale).astype(g.dtype) for g in grads]
            if norm < max_norm:
                return [g.copy() for g in grads]
            return [(g.astype(np.float64) / norm * max_norm).astype(g.dtype) for g in grads]

        return apply

    return factory


def agc_channels_last(params, *, clipping, eps):
    """Adaptive gradient clipping with a unit per output channel of a channels-last layout (JAX's
    (in, out) and HWIO): every axis but the last is reduced; a 1-D array is one unit."""

    def apply(grads):
        out = []
        for p, g in zip(params, grads):
            axes = None if p.ndim <= 1 else tuple(range(p.ndim - 1))
            pc, gc = p.astype(np.float64), g.astype(np.float64)
            p_norm = np.sqrt(np.sum(pc * pc, axis=axes, keepdims=True))
            g_norm = np.sqrt(np.sum(gc * gc, axis=axes, keepdims=True))
            limit = np.maximum(p_norm, eps) * clipping
            clipped = gc * (limit / np.maximum(g_norm, 1e-6))
            out.append(np.where(g_norm < limit, gc, clipped).astype(g.dtype))
        return out

    return apply


def exponential_decay_one_based(*, value, gamma):
    """value * gamma ** (step + 1): a scheduler stepped once before the first update."""
    return lambda step: value * gamma ** (step + 1)


def adapter(
    ops: dict | None = None,
    optimizers: dict | None = None,
    name: str = "deviant",
    *,
    transforms: dict | None = None,
    schedules: dict | None = None,
) -> Any:
    """An adapter object (the protocol accepts any object with the tables)."""
    return SimpleNamespace(
        NAME=name,
        OPS=ops or {},
        OPTIMIZERS=optimizers or {},
        TRANSFORMS=transforms or {},
        SCHEDULES=schedules or {},
    )


# Importable by `normref verify tests.conformance.deviants:LN_EPS_OUTSIDE_SQRT` and friends.
LN_EPS_OUTSIDE_SQRT = adapter({"layer_norm": layer_norm(eps_outside_sqrt=True)}, name="ln eps")
LN_UNBIASED = adapter({"layer_norm": layer_norm(unbiased=True)}, name="ln unbiased")
LN_SHIFTED = adapter({"layer_norm": layer_norm(shift=1e-3)}, name="ln shifted")
RMS_EPS_OUTSIDE_SQRT = adapter({"rms_norm": rms_norm_eps_outside_sqrt}, name="rms eps")
BN_KERAS_MOMENTUM = adapter({"batch_norm": batch_norm_keras_momentum}, name="bn keras")
ADAMW_AS_L2 = adapter(optimizers={"adamw": adam(decoupled=False)}, name="adamw l2")
ADAM_NO_BIAS_CORRECTION = adapter(
    optimizers={"adam": adam(decoupled=False, bias_correction=False)}, name="adam no bc"
)
ADAM_EPS_INSIDE_SQRT = adapter(
    optimizers={"adam": adam(decoupled=False, eps_inside_sqrt=True)}, name="adam eps inside"
)
ADAM_RIGHT = adapter(
    optimizers={"adam": adam(decoupled=False), "adamw": adam(decoupled=True)}, name="adam right"
)
CLIP_NO_EPS = adapter(
    transforms={"clip_by_global_norm": clip_by_global_norm(torch_eps=False)}, name="clip no eps"
)
CLIP_RIGHT = adapter(
    transforms={"clip_by_global_norm": clip_by_global_norm(torch_eps=True)}, name="clip right"
)
AGC_CHANNELS_LAST = adapter(transforms={"adaptive_grad_clip": agc_channels_last}, name="agc last")
EXP_DECAY_ONE_BASED = adapter(
    schedules={"exponential_decay": exponential_decay_one_based}, name="exp 1-based"
)
