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

from normref import _checks, _plans, _xp
from normref.norms import _rows

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
    key = _plans.signature((x, weight, bias), out, normalized_shape, eps, backend)
    plan = _FORWARD_PLANS.get(key) or _FORWARD_PLANS.add(
        key, _rows.forward_plan(_NAME, x, weight, bias, normalized_shape, eps, out, backend)
    )
    xp, kernel, eps, batch, rows, n, k, stats_shape, acc, direct = plan
    if kernel is None:
        y, mean, rstd = _reference_forward(xp, xp.reshape(x, batch + (n,)), weight, bias, eps, acc)
        mean, rstd = xp.reshape(mean, stats_shape), xp.reshape(rstd, stats_shape)
    else:
        y = out if direct and out is not None else _xp.rows_buffer(xp, out, rows, n, x.dtype)
        stats = xp.empty((2, rows), dtype=acc)  # mean, rstd
        kernel(
            x if direct else _xp.as_rows(xp, x, rows, n),
            weight if direct else _xp.param_vector(xp, weight, acc),
            bias if direct else _xp.param_vector(xp, bias, acc),
            eps,
            y,
            stats[0],
            stats[1],
        )
        # Indexed, not unpacked: iterating over a NumPy array costs twice as much (0.6 us).
        stats = stats.reshape((2,) + stats_shape)  # a kernel's arrays: NumPy or CuPy
        mean, rstd = stats[0], stats[1]
    y = _xp.deliver(xp, y, out, tuple(x.shape))
    bias_dtype = None if bias is None else bias.dtype
    return y, _tuple_new(LayerNormSaved, (x, mean, rstd, weight, bias_dtype, k))


def layer_norm_backward(dy, saved: LayerNormSaved, *, out=None, backend=None):
    """Gradients (dx, dweight, dbias) of layer_norm from the upstream gradient dy (None if absent).

    `out`, if given, receives dx. dweight and dbias come back in the dtype of weight and bias.
    """
    x, mean, rstd, weight, bias_dtype, k = saved
    key = _plans.signature((dy, x, mean, rstd, weight), out, bias_dtype, k, backend)
    plan = _BACKWARD_PLANS.get(key) or _BACKWARD_PLANS.add(
        key, _rows.backward_plan(_NAME, dy, x, weight, bias_dtype, mean, k, out, backend)
    )
    xp, kernel, _, batch, rows, n, k, _, acc, direct = plan
    has_bias = bias_dtype is not None
    if kernel is None:
        dx, dweight, dbias = _reference_backward(
            xp,
            xp.reshape(dy, batch + (n,)),
            xp.reshape(x, batch + (n,)),
            xp.reshape(mean, batch + (1,)),
            xp.reshape(rstd, batch + (1,)),
            None if weight is None else xp.reshape(weight, (n,)),
            has_bias,
            acc,
        )
    else:
        dx = out if direct and out is not None else _xp.rows_buffer(xp, out, rows, n, x.dtype)
        grads = xp.empty((2, n), dtype=acc)  # dweight, dbias
        dweight = grads[0] if weight is not None else None
        dbias = grads[1] if has_bias else None
        kernel(
            dy if direct else _xp.as_rows(xp, dy, rows, n),
            x if direct else _xp.as_rows(xp, x, rows, n),
            mean.reshape((rows,)),  # a kernel's arrays: NumPy or CuPy
            rstd.reshape((rows,)),
            weight if direct else _xp.param_vector(xp, weight, acc),
            dx,
            dweight,
            dbias,
        )
    dx = _xp.deliver(xp, dx, out, tuple(x.shape))
    if not direct:  # the gradients to the parameters' dtype and shape
        shape = tuple(x.shape[x.ndim - k :])
        if dweight is not None:
            dweight = xp.reshape(xp.astype(dweight, weight.dtype, copy=False), shape)
        if dbias is not None:
            dbias = xp.reshape(xp.astype(dbias, bias_dtype, copy=False), shape)
    return dx, dweight, dbias


_FORWARD_PLANS = _plans.Plans()
_BACKWARD_PLANS = _plans.Plans()
_tuple_new = tuple.__new__  # makes a NamedTuple from a tuple in 0.13 us; its __new__ takes 0.24


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
