"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2016). Derivation: specs/instance_norm.md.

x has shape (N, C, *spatial); with `use_input_stats=True` every (sample, channel) is normalized
over its S = prod(spatial) values::

    mean  = sum(x) / S                        per (sample, channel)
    var   = sum((x - mean)^2) / S             biased
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = x_hat * weight[c] + bias[c]

and running statistics, when given, are updated with the batch average of each sample's update
(PyTorch's semantics: ATen runs batch norm on the (1, N*C, S) view with the running statistics
repeated N times, then averages the N updated copies)::

    running_mean <- mean over samples of ((1 - momentum) * running_mean + momentum * mean)
    running_var  <- mean over samples of ((1 - momentum) * running_var + momentum * var * S/(S-1))

With `use_input_stats=False` the running statistics (per channel) normalize every sample, and the
backward is batch norm's eval backward. Otherwise the backward is group norm's with C groups::

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),  g = dy * weight[c]
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.norms import _common

__all__ = ["InstanceNormSaved", "instance_norm", "instance_norm_forward", "instance_norm_backward"]

_NAME = "instance_norm"
# x is viewed as (N, C, S): statistics over the spatial axis, parameter sums over samples too.
_STAT_AXES = (2,)
_PARAM_SUM_AXES = (0, 2)


class InstanceNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    x: Any  # the input, its own dtype and shape (N, C, *spatial)
    mean: Any  # (N, C) per-instance means, or (C,) the running mean used; accumulation dtype
    rstd: Any  # like mean: 1 / sqrt(var + eps) of the statistics used
    weight: Any  # (C,) or None
    bias_dtype: Any  # dtype of the bias, or None when there is no bias
    use_input_stats: bool  # True: mean and rstd came from x, so the backward goes through them


def instance_norm(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
    out=None,
    backend=None,
):
    """(y, new_running_mean, new_running_var): instance_norm_forward without the saved tensors."""
    return instance_norm_forward(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        use_input_stats=use_input_stats,
        momentum=momentum,
        eps=eps,
        out=out,
        backend=backend,
    )[:3]


def instance_norm_forward(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
    out=None,
    backend=None,
):
    """Instance norm of `x` (N, C, *spatial), as torch.nn.functional.instance_norm; returns
    (y, new_running_mean, new_running_var, InstanceNormSaved).

    Args map to the spec's symbols: x -> x, weight -> gamma, bias -> beta (both (C,)),
    eps -> epsilon. `use_input_stats=True` normalizes each (sample, channel) with its own
    statistics and, when running statistics are given, returns them updated (PyTorch's momentum:
    the weight of the new value; the variance stored unbiased; averaged over the batch).
    `use_input_stats=False` normalizes with the running statistics, which are then required, and
    returns them as given. The running statistics are None when absent; inputs are never modified.
    PyTorch's InstanceNorm modules pass momentum=None as 0.0; here momentum must be in [0, 1].
    Flax's InstanceNorm and ONNX's InstanceNormalization keep no running statistics.

    >>> import numpy as np, normref
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])
    >>> np.round(normref.instance_norm(x)[0], 3)
    array([[[-1.,  1.],
            [-1.,  1.]]])
    """
    xp, channels = _common.channel_inputs(
        _NAME, x, out, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var
    )
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            f"{_NAME}: running_mean and running_var must be given together or not at all"
        )
    use_input_stats = _checks.flag(_NAME, "use_input_stats", use_input_stats)
    if not use_input_stats and running_mean is None:
        raise ValueError(
            f"{_NAME}: use_input_stats=False normalizes with the running statistics, so "
            "running_mean and running_var are required; got None"
        )
    momentum = _checks.unit_interval(_NAME, "momentum", momentum)
    eps = _checks.positive(_NAME, "eps", eps)
    _checks.output(_NAME, "out", out, x)
    n, s = x.shape[0], math.prod(x.shape[2:])
    if use_input_stats and s <= 1:
        # One value per instance has variance 0 and no unbiased estimate; PyTorch refuses S = 1.
        raise ValueError(
            f"{_NAME}: Expected more than 1 spatial element when using input statistics "
            f"(prod(x.shape[2:]) > 1), got input size {tuple(x.shape)}"
        )
    kernels_for(registry.OPS[_NAME], x, backend)  # validates `backend`; there are no kernels yet

    acc = _xp.accumulation_dtype(xp, x.dtype)
    xv = xp.reshape(x, (n, channels, s))
    pshape = (1, channels, 1)
    if use_input_stats:
        x_hat, mean, rstd, sumsq = _common.moments(xp, xv, _STAT_AXES, eps, acc)
        stats_shape = (n, channels)
    else:
        mean = xp.reshape(xp.astype(running_mean, acc), pshape)
        rstd = 1.0 / xp.sqrt(xp.reshape(xp.astype(running_var, acc), pshape) + eps)
        x_hat = (xp.astype(xv, acc) - mean) * rstd
        stats_shape = (channels,)
    y = xp.astype(_common.affine(xp, x_hat, weight, bias, pshape, acc), x.dtype)
    y = _xp.deliver(xp, y, out, tuple(x.shape))

    new_mean, new_var = running_mean, running_var
    if use_input_stats and running_mean is not None and n > 0:
        # An empty batch has nothing to average: the statistics stay (PyTorch gives NaN there).
        new_mean = _batch_averaged_update(xp, running_mean, mean, momentum, acc)
        new_var = _batch_averaged_update(xp, running_var, sumsq / (s - 1), momentum, acc)
    saved = InstanceNormSaved(
        x,
        xp.reshape(mean, stats_shape),
        xp.reshape(rstd, stats_shape),
        weight,
        None if bias is None else bias.dtype,
        use_input_stats,
    )
    return y, new_mean, new_var, saved


def instance_norm_backward(dy, saved: InstanceNormSaved, *, out=None, backend=None):
    """Gradients (dx, dweight, dbias) of instance_norm's y from the upstream gradient dy (None for
    an absent parameter). The running statistics are state, not differentiated.

    `out`, if given, receives dx. dweight and dbias come back in the dtype of weight and bias.
    """
    x = saved.x
    xp = _common.backward_inputs(_NAME, dy, x, out)
    kernels_for(registry.OPS[_NAME], x, backend)

    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    pshape = (1, channels, 1)
    return _common.normalized_backward(
        xp,
        dy,
        saved,
        out,
        view=(n, channels, s),
        pshape=pshape,
        stats_shape=(n, channels, 1) if saved.use_input_stats else pshape,
        axes=_STAT_AXES,
        param_axes=_PARAM_SUM_AXES,
        through_stats=saved.use_input_stats,
    )


def _batch_averaged_update(xp, running, stat, momentum, acc):
    """mean over samples of (momentum * stat + (1 - momentum) * running), stat of shape (N, C, 1):
    each sample updates its own copy of the running statistic, then the copies are averaged (what
    ATen's instance_norm does), in the wider of the accumulation dtype and the statistic's."""
    stat = xp.reshape(stat, (-1, running.shape[0]))
    per_sample, _ = _common.moving_average(xp, running, stat, momentum, acc)
    return xp.astype(xp.mean(per_sample, axis=0), running.dtype)


def instance_norm_variant(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
    fast_variance=False,
):
    """The forward's outputs (y, new_running_mean, new_running_var) under a peer's differing
    convention (specs/instance_norm.md, Conventions), for diagnosing a mismatch; float64 math.

    fast_variance: var = max(0, E[x^2] - E[x]^2) over each instance (Flax's default).
    """
    xp = _xp.namespace(x, weight, bias, running_mean, running_var)
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    f64 = xp.float64
    xa = xp.reshape(xp.astype(x, f64), (n, channels, s))
    if use_input_stats:
        mean, var = _common.variant_moments(xp, xa, _STAT_AXES, fast_variance)
    else:
        mean = xp.reshape(xp.astype(running_mean, f64), (1, channels, 1))
        var = xp.reshape(xp.astype(running_var, f64), (1, channels, 1))
    y = _common.affine(xp, (xa - mean) / xp.sqrt(var + eps), weight, bias, (1, channels, 1), f64)
    y = xp.astype(xp.reshape(y, x.shape), x.dtype)
    if not use_input_stats or running_mean is None or n == 0:
        return y, running_mean, running_var
    new_mean = _batch_averaged_update(xp, running_mean, mean, momentum, f64)
    new_var = _batch_averaged_update(xp, running_var, var * (s / (s - 1)), momentum, f64)
    return y, new_mean, new_var
