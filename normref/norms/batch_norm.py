"""Batch normalization (Ioffe & Szegedy, 2015). The math, derived: specs/batch_norm.md.

x has shape (N, C, *spatial); every channel c is normalized with statistics over the m = N * S
values it holds (S = prod(spatial)). In training mode (batch statistics)::

    mean  = sum(x) / m                        per channel
    var   = sum((x - mean)^2) / m             biased, to normalize
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = x_hat * weight + bias
    running_mean <- (1 - momentum) * running_mean + momentum * mean
    running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)   (unbiased)

In eval mode the running statistics replace mean and var, and nothing is updated.

Backward, with g = dy * weight and sums over the m values of a channel::

    training: dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    eval:     dx = rstd * g
    dweight = sum(dy * x_hat);  dbias = sum(dy)

The math shared with the other channel norms, which normalize over other axes of the same kind of
view, is in normref/norms/_common.py.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.norms import _common

__all__ = ["BatchNormSaved", "batch_norm", "batch_norm_forward", "batch_norm_backward"]

_NAME = "batch_norm"
_STAT_AXES = (0, 2)  # of the (N, C, S) view: everything but the channel


class BatchNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    x: Any  # the input, its own dtype and shape (N, C, *spatial)
    mean: Any  # (C,), accumulation dtype: the batch mean, or the running mean used in eval
    rstd: Any  # (C,), accumulation dtype: 1 / sqrt(var + eps) of the statistics used
    weight: Any  # (C,) or None
    bias_dtype: Any  # dtype of the bias, or None when there is no bias
    batch_stats: bool  # True: mean and rstd came from x, so the backward goes through them


def batch_norm(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training=True,
    momentum=0.1,
    eps=1e-5,
    num_batches_tracked=None,
    out=None,
    backend=None,
):
    """(y, new_running_mean, new_running_var, new_num_batches_tracked): batch_norm_forward
    without the saved tensors. The running state comes back rather than being updated in place."""
    return batch_norm_forward(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        training=training,
        momentum=momentum,
        eps=eps,
        num_batches_tracked=num_batches_tracked,
        out=out,
        backend=backend,
    )[:4]


def batch_norm_forward(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training=True,
    momentum=0.1,
    eps=1e-5,
    num_batches_tracked=None,
    out=None,
    backend=None,
):
    """Batch norm of `x` (N, C, *spatial) per channel; returns
    (y, new_running_mean, new_running_var, new_num_batches_tracked, BatchNormSaved).

    Args map to the spec's symbols: x -> x, weight -> gamma, bias -> beta, eps -> epsilon, all
    per channel (C,). `training=True` normalizes with the batch statistics and, when running
    statistics are given, returns them updated with PyTorch's convention
    `r = (1 - momentum) * r + momentum * stat`, storing the *unbiased* variance. Keras, Flax and
    ONNX use the opposite momentum (the weight of the old value, default 0.99 / 0.99 / 0.9) and
    store the biased variance: see specs/batch_norm.md, Conventions. `momentum=None` is PyTorch's
    cumulative moving average, which needs `num_batches_tracked` (the number of batches already
    averaged); the count comes back incremented whenever the running statistics were updated.
    `training=False` normalizes with the running statistics, or with the batch statistics when
    there are none (PyTorch's `track_running_stats=False`). Inputs are never modified; the running
    statistics come back as given when they are not updated, and as None when absent.

    >>> import numpy as np, normref
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> y, rm, rv, _, _ = normref.batch_norm_forward(x, running_mean=np.zeros(2),
    ...                                              running_var=np.ones(2))
    >>> np.round(y, 3), rm, rv
    (array([[-1., -1.],
           [ 1.,  1.]]), array([0.2, 2. ]), array([ 1.1, 20.9]))
    """
    xp, channels = _common.channel_inputs(
        _NAME, x, out, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var
    )
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            f"{_NAME}: running_mean and running_var must be given together or not at all, got "
            f"running_mean={'None' if running_mean is None else 'an array'} and "
            f"running_var={'None' if running_var is None else 'an array'}"
        )
    training = _checks.flag(_NAME, "training", training)
    eps = _checks.positive(_NAME, "eps", eps)
    if momentum is not None:
        momentum = _checks.unit_interval(_NAME, "momentum", momentum)
    if num_batches_tracked is not None:
        num_batches_tracked = _checks.integer(_NAME, "num_batches_tracked", num_batches_tracked, 0)
    _checks.output(_NAME, "out", out, x)

    n, s = x.shape[0], math.prod(x.shape[2:])
    m = n * s
    tracked = running_mean is not None
    batch_stats = training or not tracked
    update = training and tracked
    if batch_stats and m == 1:
        # One value per channel has variance 0 and no unbiased estimate; PyTorch refuses it too.
        raise ValueError(
            f"{_NAME}: Expected more than 1 value per channel when training (batch statistics "
            f"need N * prod(spatial) > 1), got input size {tuple(x.shape)}"
        )
    if update:
        if momentum is None and num_batches_tracked is None:
            raise ValueError(
                f"{_NAME}: momentum=None (cumulative moving average) needs num_batches_tracked, "
                "the number of batches already averaged into the running statistics; got None"
            )
        # PyTorch's BatchNorm: the count goes up first, then momentum=None averages over it.
        factor = momentum if momentum is not None else 1.0 / (num_batches_tracked + 1)
    kernels = kernels_for(registry.OPS[_NAME], x, backend)

    acc = _xp.accumulation_dtype(xp, x.dtype)
    if kernels is not None:  # x is not empty (kernels_for), so m > 0
        y, mean, rstd, sumsq = _kernel_forward(
            kernels, xp, x, weight, bias, running_mean, running_var, batch_stats, eps, out, acc
        )
    else:
        xv = xp.reshape(x, (n, channels, s))
        pshape = (1, channels, 1)
        if batch_stats and m > 0:
            x_hat, mean, rstd, sumsq = _common.moments(xp, xv, _STAT_AXES, eps, acc)
        else:
            # Eval with running statistics, or an empty batch: nothing to estimate from x. An
            # empty batch normalizes with mean 0 and rstd 1 and leaves the running statistics as
            # they are (PyTorch returns early for it, before any update).
            batch_stats = False
            if tracked and m > 0:
                mean = xp.reshape(xp.astype(running_mean, acc), pshape)
                rstd = 1.0 / xp.sqrt(xp.reshape(xp.astype(running_var, acc), pshape) + eps)
            else:
                mean = xp.zeros(pshape, dtype=acc)
                rstd = xp.ones(pshape, dtype=acc)
            x_hat = (xp.astype(xv, acc) - mean) * rstd
        y = xp.astype(_common.affine(xp, x_hat, weight, bias, pshape, acc), x.dtype)
    y = _xp.deliver(xp, y, out, tuple(x.shape))

    new_mean, new_var, new_count = running_mean, running_var, num_batches_tracked
    if update:
        if m > 0:
            mean_c = xp.reshape(mean, (channels,))
            _, new_mean = _common.moving_average(xp, running_mean, mean_c, factor, acc)
            # The unbiased variance sum / (m - 1), as PyTorch divides the sum of squares directly.
            unbiased = xp.reshape(sumsq, (channels,)) / (m - 1)
            _, new_var = _common.moving_average(xp, running_var, unbiased, factor, acc)
        if num_batches_tracked is not None:
            new_count = num_batches_tracked + 1
    saved = BatchNormSaved(
        x,
        xp.reshape(mean, (channels,)),
        xp.reshape(rstd, (channels,)),
        weight,
        None if bias is None else bias.dtype,
        batch_stats,
    )
    return y, new_mean, new_var, new_count, saved


def batch_norm_backward(dy, saved: BatchNormSaved, *, out=None, backend=None):
    """Gradients (dx, dweight, dbias) of batch_norm's y from the upstream gradient dy (None for an
    absent parameter). The running statistics are state, not differentiated.

    `out`, if given, receives dx. dweight and dbias come back in the dtype of weight and bias.
    """
    x = saved.x
    xp = _common.backward_inputs(_NAME, dy, x, out)
    kernels = kernels_for(registry.OPS[_NAME], x, backend)
    if kernels is not None:
        acc = saved.mean.dtype
        return _common.kernel_backward(
            xp,
            kernels.batch_norm_backward,
            dy,
            saved,
            out,
            _xp.param_vector(xp, saved.mean, acc),
            _xp.param_vector(xp, saved.rstd, acc),
            _xp.param_vector(xp, saved.weight, acc),
            saved.batch_stats,
        )
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    return _common.normalized_backward(
        xp,
        dy,
        saved,
        out,
        view=(n, channels, s),
        pshape=(1, channels, 1),
        stats_shape=(1, channels, 1),
        axes=_STAT_AXES,
        param_axes=_STAT_AXES,
        through_stats=saved.batch_stats,
    )


def _kernel_forward(
    kernels, xp, x, weight, bias, running_mean, running_var, batch_stats, eps, out, acc
):
    """(y, mean, rstd, sumsq) from the kernels (contract: kernels/numba/channel_norms.py): y as an
    (N * C, S) buffer for `_xp.deliver`; mean, rstd, sumsq (C,) in `acc`, sumsq None in eval."""
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    view = (n, channels, s)
    y = _xp.rows_buffer(xp, out, n * channels, s, x.dtype)
    x3 = xp.reshape(_xp.as_rows(xp, x, n * channels, s), view)
    w, b = _xp.param_vector(xp, weight, acc), _xp.param_vector(xp, bias, acc)
    if batch_stats:
        mean, rstd, sumsq = (xp.empty((channels,), dtype=acc) for _ in range(3))
        kernels.batch_norm_forward(x3, w, b, eps, xp.reshape(y, view), mean, rstd, sumsq)
        return y, mean, rstd, sumsq
    # The running statistics, as the reference path computes them (copies: saved keeps them).
    mean = _xp.param_vector(xp, xp.astype(running_mean, acc), acc)
    rstd = 1.0 / xp.sqrt(_xp.param_vector(xp, xp.astype(running_var, acc), acc) + eps)
    kernels.batch_norm_apply(x3, mean, rstd, w, b, xp.reshape(y, view))
    return y, mean, rstd, None


def batch_norm_variant(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training=True,
    momentum=0.1,
    eps=1e-5,
    num_batches_tracked=None,
    momentum_weights_old=False,
    biased_running_var=False,
    fast_variance=False,
):
    """The forward's outputs (y, new_running_mean, new_running_var, new_num_batches_tracked)
    under a peer's differing convention (specs/batch_norm.md, Conventions), for diagnosing a
    mismatch; float64 math, not a fast path.

    momentum_weights_old: r = momentum * r + (1 - momentum) * stat (Keras, Flax, ONNX), with the
    number as given. biased_running_var: the running variance averages the biased variance.
    fast_variance: var = max(0, E[x^2] - E[x]^2) (Flax's default).
    """
    xp = _xp.namespace(x, weight, bias, running_mean, running_var)
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    m = n * s
    f64 = xp.float64
    pshape = (1, channels, 1)
    xa = xp.reshape(xp.astype(x, f64), (n, channels, s))
    tracked = running_mean is not None
    if training or not tracked:
        mean, var = _common.variant_moments(xp, xa, _STAT_AXES, fast_variance)
    else:
        mean = xp.reshape(xp.astype(running_mean, f64), pshape)
        var = xp.reshape(xp.astype(running_var, f64), pshape)
    y = _common.affine(xp, (xa - mean) / xp.sqrt(var + eps), weight, bias, pshape, f64)
    y = xp.astype(xp.reshape(y, x.shape), x.dtype)
    if not (training and tracked):
        return y, running_mean, running_var, num_batches_tracked
    # The weight of the new statistic. momentum=None (a cumulative average) exists only in PyTorch,
    # so it keeps PyTorch's meaning under every variant.
    if momentum is None:
        factor = 1.0 / (num_batches_tracked + 1)
    else:
        factor = 1.0 - momentum if momentum_weights_old else momentum
    stat_var = var if biased_running_var else var * (m / (m - 1))
    mean_c, var_c = xp.reshape(mean, (channels,)), xp.reshape(stat_var, (channels,))
    _, new_mean = _common.moving_average(xp, running_mean, mean_c, factor, f64)
    _, new_var = _common.moving_average(xp, running_var, var_c, factor, f64)
    count = None if num_batches_tracked is None else num_batches_tracked + 1
    return y, new_mean, new_var, count
