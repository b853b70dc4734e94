"""What the normalizations share: the checks of their arguments, and the math of the channel norms.

The channel norms (batch_norm, instance_norm, group_norm, batch_channel_norm) reshape x to a view in
which every statistic is a reduction over `axes` (kept as size-1 dims) and every parameter
broadcasts from `pshape` (size C along the channel dims, 1 elsewhere).
"""

from __future__ import annotations

import math

from normref import _checks, _xp

__all__ = [
    "affine",
    "backward_inputs",
    "channel_inputs",
    "groups",
    "kernel_backward",
    "moments",
    "moments_backward",
    "moving_average",
    "normalized_backward",
    "param_grads",
    "per_channel",
    "recentred",
    "variant_moments",
]


# --- checks -------------------------------------------------------------------------------------


def channel_inputs(op, x, out, **arrays):
    """(xp, C) for a channel norm's forward, once x is checked as a floating (N, C, *spatial) array
    and `arrays` (weight, bias, running statistics) as `per_channel` checks them."""
    xp = _xp.namespace(x, *arrays.values(), out)
    _checks.floating(op, "x", x, xp)
    _checks.min_ndim(op, "x", x, 2, "(N, C, *spatial)")
    channels = x.shape[1]
    per_channel(op, xp, channels, **arrays)
    return xp, channels


def per_channel(op, xp, channels, **arrays):
    """Checks that each given array (None: absent) is floating with one value per channel."""
    for name, arr in arrays.items():
        if arr is not None:
            _checks.floating(op, name, arr, xp)
            _checks.shape_is(op, name, arr, (channels,), "one value per channel, x.shape[1]")


def groups(op, num_groups, channels):
    """`num_groups`, checked: given, an integer >= 1, dividing the number of channels."""
    if num_groups is None:
        raise TypeError(
            f"{op}: num_groups is required: a positive integer dividing the number of "
            f"channels C = {channels}"
        )
    groups = _checks.integer(op, "num_groups", num_groups, 1)
    if channels % groups:
        raise ValueError(
            f"{op}: num_groups must divide the number of channels C = {channels} "
            f"(x.shape[1]), got num_groups={groups}"
        )
    return groups


def backward_inputs(op, dy, x, out):
    """The array namespace of a backward call, once dy and out are checked against the saved x."""
    xp = _xp.namespace(dy, x, out)
    _checks.floating(op, "dy", dy, xp)
    _checks.same_shape(op, "dy", dy, "x", x)
    _checks.same_dtype(op, "dy", dy, "x", x)
    _checks.output(op, "out", out, x)
    return xp


# --- the math of the channel norms ----------------------------------------------------------------


def moments(xp, xv, axes, eps, acc):
    """Shifted two-pass statistics of `xv` over `axes`: (x_hat, mean, rstd, sumsq), all in `acc`,
    mean/rstd/sumsq with `axes` kept as size-1 dims; sumsq = sum((x - mean)^2).

    Subtracting the group's first element K first keeps float32 exact for data with a large
    offset (x - K is exact when x and K are within a factor of 2: Sterbenz), and a constant group
    gives x_hat = 0 exactly.
    """
    xa = xp.astype(xv, acc)
    first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(xa.ndim))
    shift = xa[first]
    d = xa - shift
    mean_d = xp.mean(d, axis=axes, keepdims=True)
    centred = d - mean_d
    count = math.prod(xv.shape[i] for i in axes)
    sumsq = xp.sum(centred * centred, axis=axes, keepdims=True)
    rstd = 1.0 / xp.sqrt(sumsq / count + eps)
    return centred * rstd, shift + mean_d, rstd, sumsq


def recentred(xp, x_hat, axes):
    """The recomputed x_hat minus its mean over `axes`: the exact x_hat has mean 0, and removing
    the mean cancels the rounding of the saved mean (large in float32 for large-offset data)."""
    return x_hat - xp.mean(x_hat, axis=axes, keepdims=True)


def moments_backward(xp, g, x_hat, rstd, axes):
    """dx of x_hat = (x - mean) * rstd with mean and rstd taken over `axes`, given g = dL/dx_hat."""
    mean_g = xp.mean(g, axis=axes, keepdims=True)
    mean_gx = xp.mean(g * x_hat, axis=axes, keepdims=True)
    return rstd * (g - mean_g - x_hat * mean_gx)


def affine(xp, x_hat, weight, bias, pshape, acc):
    """x_hat * weight + bias in `acc`, the parameters broadcast from `pshape`."""
    y = x_hat
    if weight is not None:
        y = y * xp.reshape(xp.astype(weight, acc), pshape)
    if bias is not None:
        y = y + xp.reshape(xp.astype(bias, acc), pshape)
    return y


def param_grads(xp, dya, x_hat, weight, bias_dtype, axes):
    """(dweight, dbias): sums of dy * x_hat and of dy over `axes`, flattened to the parameters'
    (C,) and returned in their dtypes; None for an absent parameter."""
    dweight = dbias = None
    if weight is not None:
        dweight = xp.reshape(xp.sum(dya * x_hat, axis=axes), (-1,))
        dweight = xp.astype(dweight, weight.dtype, copy=False)
    if bias_dtype is not None:
        dbias = xp.astype(xp.reshape(xp.sum(dya, axis=axes), (-1,)), bias_dtype)
    return dweight, dbias


def normalized_backward(
    xp, dy, saved, out, *, view, pshape, stats_shape, axes, param_axes, through_stats
):
    """(dx, dweight, dbias) of y = x_hat * weight + bias, x_hat = (x - mean) * rstd, on `view` of
    `saved.x`: the saved mean and rstd broadcast from `stats_shape`, the weight from `pshape`, and
    the parameter gradients summed over `param_axes`. `through_stats`: mean and rstd were reduced
    from x over `axes`, so the gradient goes through them; otherwise they are constants."""
    x, weight = saved.x, saved.weight
    acc = saved.mean.dtype
    mean = xp.reshape(saved.mean, stats_shape)
    rstd = xp.reshape(saved.rstd, stats_shape)
    x_hat = (xp.astype(xp.reshape(x, view), acc) - mean) * rstd
    dya = xp.astype(xp.reshape(dy, view), acc)
    g = dya if weight is None else dya * xp.reshape(xp.astype(weight, acc), pshape)
    if through_stats:
        x_hat = recentred(xp, x_hat, axes)
        dx = moments_backward(xp, g, x_hat, rstd, axes)
    else:
        dx = g * rstd  # the statistics are constants: only the scaling remains
    dx = _xp.deliver(xp, xp.astype(dx, x.dtype), out, tuple(x.shape))
    dweight, dbias = param_grads(xp, dya, x_hat, weight, saved.bias_dtype, param_axes)
    return dx, dweight, dbias


def kernel_backward(xp, kernel, dy, saved, out, *stats):
    """(dx, dweight, dbias) from a channel norm's backward kernel (contract:
    normref/kernels/numba/channel_norms.py), called as kernel(dy, x, *stats, dx, dweight, dbias)
    with dy, x and dx viewed as (N, C, S), dweight and dbias (C,) in the accumulation dtype."""
    x, weight = saved.x, saved.weight
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    view = (n, channels, s)
    acc = saved.mean.dtype
    dx = _xp.rows_buffer(xp, out, n * channels, s, x.dtype)
    dweight = None if weight is None else xp.empty((channels,), dtype=acc)
    dbias = None if saved.bias_dtype is None else xp.empty((channels,), dtype=acc)
    kernel(
        xp.reshape(_xp.as_rows(xp, dy, n * channels, s), view),
        xp.reshape(_xp.as_rows(xp, x, n * channels, s), view),
        *stats,
        xp.reshape(dx, view),
        dweight,
        dbias,
    )
    dx = _xp.deliver(xp, dx, out, tuple(x.shape))
    if dweight is not None:
        dweight = xp.astype(dweight, weight.dtype, copy=False)
    if dbias is not None:
        dbias = xp.astype(dbias, saved.bias_dtype, copy=False)
    return dx, dweight, dbias


def moving_average(xp, running, stat, factor, acc):
    """factor * stat + (1 - factor) * running in PyTorch's order of operations, computed in the
    wider of the accumulation dtype and the running statistic's: (that value, and its copy in the
    running statistic's dtype). Normalizing with the first keeps a float16 state from rounding y
    twice; the second is the new state."""
    dtype = xp.result_type(running.dtype, acc)
    stat, running_ = xp.astype(stat, dtype, copy=False), xp.astype(running, dtype, copy=False)
    new = factor * stat + (1.0 - factor) * running_
    return new, xp.astype(new, running.dtype)


def variant_moments(xp, xa, axes, fast_variance=False):
    """(mean, var) of `xa` over `axes`, kept as size-1 dims, as the *_variant formulas compute them
    (plainly, without the reference's shift): the biased variance, or with `fast_variance`
    max(0, E[x^2] - E[x]^2) (Flax's default)."""
    mean = xp.mean(xa, axis=axes, keepdims=True)
    if fast_variance:
        var = xp.mean(xa * xa, axis=axes, keepdims=True) - mean * mean
        var = xp.where(var > 0, var, xp.zeros_like(var))
    else:
        var = xp.mean((xa - mean) ** 2, axis=axes, keepdims=True)
    return mean, var
