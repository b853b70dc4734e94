"""Layer normalization (Ba, Kiros & Hinton, 2016). The math, derived: specs/layer_norm.md.

Forward, over the trailing `normalized_shape` dimensions of each row of n elements::

    mean  = sum(x) / n
    var   = sum((x - mean)^2) / n                  (biased, as every peer normalizes)
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = x_hat * weight + bias

Backward, with g = dy * weight::

    dx      = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    dweight = sum over rows of dy * x_hat
    dbias   = sum over rows of dy
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.norms import _common

__all__ = ["LayerNormSaved", "layer_norm", "layer_norm_forward", "layer_norm_backward"]

_NAME = "layer_norm"


class LayerNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    x: Any  # the input, its own dtype and shape
    mean: Any  # (*batch, 1, ..., 1): per-row mean, accumulation dtype
    rstd: Any  # same shape and dtype as mean: 1 / sqrt(var + eps)
    weight: Any  # normalized_shape, or None
    bias_dtype: Any  # dtype of the bias, or None when there is no bias
    normalized_ndim: int  # k: how many trailing dims were normalized


def layer_norm(
    x, weight=None, bias=None, *, normalized_shape=None, eps=1e-5, out=None, backend=None
):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing dims."""
    return layer_norm_forward(
        x, weight, bias, normalized_shape=normalized_shape, eps=eps, out=out, backend=backend
    )[0]


def layer_norm_forward(
    x, weight=None, bias=None, *, normalized_shape=None, eps=1e-5, out=None, backend=None
):
    """Layer norm of `x` over its trailing `normalized_shape` dims; returns (y, LayerNormSaved).

    Args map to the spec's symbols: x -> x, weight -> gamma, bias -> beta, eps -> epsilon.
    `normalized_shape` is PyTorch's: an int or tuple of trailing dims; None means weight.shape
    when a weight is given, else the last dim. `eps` sits inside the square root (PyTorch, Flax,
    Keras and ONNX agree; the Keras and Flax *defaults* differ: 1e-3 and 1e-6). `out`, if given,
    receives y.

    >>> import numpy as np, normref
    >>> y = normref.layer_norm(np.array([[1.0, 2.0, 3.0]]))
    >>> np.round(y, 4)
    array([[-1.2247,  0.    ,  1.2247]])
    """
    xp = _xp.namespace(x, weight, bias, out)
    _checks.floating(_NAME, "x", x, xp)
    for name, arr in (("weight", weight), ("bias", bias)):
        if arr is not None:
            _checks.floating(_NAME, name, arr, xp)
    shape = _checks.normalized_shape(_NAME, tuple(x.shape), normalized_shape, weight)
    if bias is not None:
        _checks.shape_is(_NAME, "bias", bias, shape, "normalized_shape")
    eps = _checks.positive(_NAME, "eps", eps)
    _checks.output(_NAME, "out", out, x)

    k = len(shape)
    n = math.prod(shape)
    batch = tuple(x.shape[: x.ndim - k])
    acc = _xp.accumulation_dtype(xp, x.dtype)
    kernels = kernels_for(registry.OPS[_NAME], x, backend)
    if kernels is None:
        y, mean, rstd = _reference_forward(xp, xp.reshape(x, batch + (n,)), weight, bias, eps, acc)
    else:
        rows = math.prod(batch)
        y = _xp.rows_buffer(xp, out, rows, n, x.dtype)
        mean = xp.empty((rows,), dtype=acc)
        rstd = xp.empty((rows,), dtype=acc)
        kernels.layer_norm_forward(
            _xp.as_rows(xp, x, rows, n),
            _xp.param_vector(xp, weight, acc),
            _xp.param_vector(xp, bias, acc),
            eps,
            y,
            mean,
            rstd,
        )
    y = _xp.deliver(xp, y, out, tuple(x.shape))
    stats_shape = batch + (1,) * k
    saved = LayerNormSaved(
        x,
        _xp.reshape(xp, mean, stats_shape),
        _xp.reshape(xp, rstd, stats_shape),
        weight,
        None if bias is None else bias.dtype,
        k,
    )
    return y, saved


def layer_norm_backward(dy, saved: LayerNormSaved, *, out=None, backend=None):
    """Gradients (dx, dweight, dbias) of layer_norm from the upstream gradient dy (None if absent).

    `out`, if given, receives dx. dweight and dbias come back in the dtype of weight and bias.
    """
    x, weight = saved.x, saved.weight
    xp = _common.backward_inputs(_NAME, dy, x, out)

    k = saved.normalized_ndim
    n = math.prod(x.shape[x.ndim - k :])
    batch = tuple(x.shape[: x.ndim - k])
    acc = saved.mean.dtype
    has_bias = saved.bias_dtype is not None
    kernels = kernels_for(registry.OPS[_NAME], x, backend)
    if kernels is None:
        dx, dweight, dbias = _reference_backward(
            xp,
            xp.reshape(dy, batch + (n,)),
            xp.reshape(x, batch + (n,)),
            xp.reshape(saved.mean, batch + (1,)),
            xp.reshape(saved.rstd, batch + (1,)),
            None if weight is None else xp.reshape(weight, (n,)),
            has_bias,
            acc,
        )
    else:
        rows = math.prod(batch)
        dx = _xp.rows_buffer(xp, out, rows, n, x.dtype)
        dweight = xp.empty((n,), dtype=acc) if weight is not None else None
        dbias = xp.empty((n,), dtype=acc) if has_bias else None
        kernels.layer_norm_backward(
            _xp.as_rows(xp, dy, rows, n),
            _xp.as_rows(xp, x, rows, n),
            _xp.reshape(xp, saved.mean, (rows,)),
            _xp.reshape(xp, saved.rstd, (rows,)),
            _xp.param_vector(xp, weight, acc),
            dx,
            dweight,
            dbias,
        )
    dx = _xp.deliver(xp, dx, out, tuple(x.shape))
    shape = tuple(x.shape[x.ndim - k :])
    if dweight is not None:
        dweight = xp.reshape(xp.astype(dweight, weight.dtype, copy=False), shape)
    if dbias is not None:
        dbias = xp.reshape(xp.astype(dbias, saved.bias_dtype, copy=False), shape)
    return dx, dweight, dbias


def _reference_forward(xp, x, weight, bias, eps, acc):
    """x: (*batch, n). Shifted two-pass statistics: subtracting the row's first element first keeps
    float32 exact for rows with a large offset (x - K is exact when x and K are close)."""
    xa = xp.astype(x, acc)
    shift = xa[..., :1] if x.shape[-1] else xp.zeros(x.shape[:-1] + (1,), dtype=acc)
    d = xa - shift
    mean_d = xp.mean(d, axis=-1, keepdims=True)
    centred = d - mean_d
    var = xp.mean(centred * centred, axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    y = centred * rstd
    if weight is not None:
        y = y * xp.reshape(xp.astype(weight, acc), (-1,))
    if bias is not None:
        y = y + xp.reshape(xp.astype(bias, acc), (-1,))
    return xp.astype(y, x.dtype), shift + mean_d, rstd


def _reference_backward(xp, dy, x, mean, rstd, weight, has_bias, acc):
    """dy, x: (*batch, n); mean, rstd: (*batch, 1); weight: (n,) or None."""
    x_hat = (xp.astype(x, acc) - mean) * rstd
    # The exact x_hat has zero mean; removing the mean of the recomputed one cancels the rounding of
    # the saved mean (large in float32 for rows with a large offset).
    x_hat = x_hat - xp.mean(x_hat, axis=-1, keepdims=True)
    dya = xp.astype(dy, acc)
    g = dya if weight is None else dya * xp.astype(weight, acc)
    mean_g = xp.mean(g, axis=-1, keepdims=True)
    mean_gx = xp.mean(g * x_hat, axis=-1, keepdims=True)
    dx = xp.astype(rstd * (g - mean_g - x_hat * mean_gx), x.dtype)
    batch_axes = tuple(range(x.ndim - 1))
    dweight = None if weight is None else xp.sum(dya * x_hat, axis=batch_axes)
    dbias = xp.sum(dya, axis=batch_axes) if has_bias else None
    return dx, dweight, dbias


def layer_norm_variant(
    x,
    weight=None,
    bias=None,
    *,
    normalized_shape=None,
    eps=1e-5,
    eps_outside_sqrt=False,
    unbiased=False,
    fast_variance=False,
):
    """The forward under a peer's differing convention (specs/layer_norm.md, Conventions), for
    diagnosing a mismatch; float64 NumPy math, not a fast path."""
    xp = _xp.namespace(x, weight, bias)
    shape = _checks.normalized_shape(_NAME, tuple(x.shape), normalized_shape, weight)
    n = math.prod(shape)
    xa = xp.reshape(xp.astype(x, xp.float64), tuple(x.shape[: x.ndim - len(shape)]) + (n,))
    mean = xp.mean(xa, axis=-1, keepdims=True)
    if fast_variance:
        var = xp.clip(xp.mean(xa * xa, axis=-1, keepdims=True) - mean * mean, min=0.0)
    else:
        var = xp.sum((xa - mean) ** 2, axis=-1, keepdims=True) / (n - 1 if unbiased else n)
    scale = 1.0 / (xp.sqrt(var) + eps) if eps_outside_sqrt else 1.0 / xp.sqrt(var + eps)
    y = (xa - mean) * scale
    if weight is not None:
        y = y * xp.reshape(xp.astype(weight, xp.float64), (-1,))
    if bias is not None:
        y = y + xp.reshape(xp.astype(bias, xp.float64), (-1,))
    return xp.astype(xp.reshape(y, x.shape), x.dtype)
