"""Batch-Channel Normalization, micro-batch form (Qiao, Wang, Liu, Shen & Yuille, 2019).
The math, derived: specs/batch_channel_norm.md.

x has shape (N, C, *spatial), S = prod(spatial), m = N * S values per channel. Two steps, each
with its own affine, as in the authors' `BCNorm(estimate=True)` with its `EstBN` batch step
(github.com/joe-siyuan-qiao/Batch-Channel-Normalization, README.md):

1. A batch step that normalizes every channel with *estimated* batch statistics: the running
   estimates, which a training call first moves towards this batch::

       batch_mean = sum(x) / m                                  per channel
       second     = sum((x - running_mean)^2) / m               about the OLD running mean
       new_running_mean = (1 - momentum) * running_mean + momentum * batch_mean
       new_running_var  = (1 - momentum) * running_var  + momentum * second
       rstd  = 1 / sqrt(new_running_var + batch_eps)
       h     = (x - new_running_mean) * rstd * bn_weight[c] + bn_bias[c]

   The estimates are state: no gradient flows through them (the authors compute them under
   torch.no_grad()). In eval mode the running estimates are used as given and not updated.

2. A channel step: group norm of h with `num_groups` groups and batch statistics of each
   (sample, group), in training and eval alike, then an affine with ONE scale and shift PER GROUP
   (weight, bias of shape (G,); group_norm's are per channel)::

       h_hat = (h - mean_g(h)) / sqrt(var_g(h) + eps)
       y     = h_hat * weight[g] + bias[g]

Backward, with the estimates constant::

    dweight[g] = sum(dy * h_hat);  dbias[g] = sum(dy)        over samples, group channels, space
    dh         = grstd * (gg - mean_g(gg) - h_hat * mean_g(gg * h_hat)),  gg = dy * weight[g]
    dbn_weight = sum(dh * x_hat);  dbn_bias = sum(dh)        x_hat = (x - mean) * rstd
    dx         = dh * bn_weight[c] * rstd
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.norms import _common

__all__ = [
    "BatchChannelNormSaved",
    "batch_channel_norm",
    "batch_channel_norm_forward",
    "batch_channel_norm_backward",
]

_NAME = "batch_channel_norm"
_BATCH_AXES = (0, 2)  # of the (N, C, S) view: the batch step's statistics, its parameter sums
_GROUP_AXES = (2, 3)  # of the (N, G, C / G, S) view: the channel step's statistics
_GROUP_PARAM_AXES = (0, 2, 3)  # of the same view: one weight and bias per group


class BatchChannelNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    x: Any  # the input, its own dtype and shape (N, C, *spatial)
    mean: Any  # (C,), accumulation dtype: the running mean that normalized x (updated in training)
    rstd: Any  # (C,), accumulation dtype: 1 / sqrt(running var used + batch_eps)
    bn_weight: Any  # (C,) or None
    bn_bias: Any  # (C,) or None: its values rebuild h, its dtype is dbn_bias's
    group_mean: Any  # (N, G), accumulation dtype: the channel step's mean of h
    group_rstd: Any  # (N, G), accumulation dtype: 1 / sqrt(var_g(h) + eps)
    weight: Any  # (G,) or None
    bias_dtype: Any  # dtype of the (G,) bias, or None when there is no bias


def batch_channel_norm(
    x,
    bn_weight=None,
    bn_bias=None,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    num_groups=None,
    training=True,
    momentum=None,
    eps=1e-5,
    batch_eps=1e-5,
    out=None,
    backend=None,
):
    """(y, new_running_mean, new_running_var): batch_channel_norm_forward without the saved
    tensors. The running estimates come back rather than being updated in place."""
    return batch_channel_norm_forward(
        x,
        bn_weight,
        bn_bias,
        weight,
        bias,
        running_mean,
        running_var,
        num_groups=num_groups,
        training=training,
        momentum=momentum,
        eps=eps,
        batch_eps=batch_eps,
        out=out,
        backend=backend,
    )[:3]


def batch_channel_norm_forward(
    x,
    bn_weight=None,
    bn_bias=None,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    num_groups=None,
    training=True,
    momentum=None,
    eps=1e-5,
    batch_eps=1e-5,
    out=None,
    backend=None,
):
    """Micro-batch Batch-Channel Normalization of `x` (N, C, *spatial); returns
    (y, new_running_mean, new_running_var, BatchChannelNormSaved).

    Args map to the spec's symbols: bn_weight, bn_bias -> gamma_b, beta_b (per channel, (C,), the
    batch step's affine); weight, bias -> gamma_c, beta_c (per group, (G,), the channel step's
    affine); running_mean, running_var -> the estimates mu, sigma^2 (C,), required;
    num_groups -> G (required, divides C); momentum -> r, the weight of this batch in the update
    (the authors' `estbn_moving_speed`), required when training; eps -> the channel step's
    epsilon (BCNorm's `eps`); batch_eps -> the batch step's (1e-5, fixed in the authors' EstBN).

    `training=True` moves the estimates towards this batch, then normalizes with the moved
    estimates; `training=False` normalizes with the estimates as given and returns them as given.
    Works with any batch size, N = 1 included: that is what it is for. Inputs are never modified.

    >>> import numpy as np, normref
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])
    >>> y, rm, rv = normref.batch_channel_norm(x, running_mean=np.zeros(2),
    ...     running_var=np.ones(2), num_groups=2, momentum=0.5)
    >>> np.round(y, 3), rm, rv
    (array([[[-1.,  1.],
            [-1.,  1.]]]), array([ 1., 10.]), array([  3. , 250.5]))
    """
    xp = _xp.namespace(x, bn_weight, bn_bias, weight, bias, running_mean, running_var, out)
    _checks.floating(_NAME, "x", x, xp)
    _checks.min_ndim(_NAME, "x", x, 2, "(N, C, *spatial)")
    channels = x.shape[1]
    groups = _common.groups(_NAME, num_groups, channels)
    _common.per_channel(
        _NAME,
        xp,
        channels,
        bn_weight=bn_weight,
        bn_bias=bn_bias,
        running_mean=running_mean,
        running_var=running_var,
    )
    for name, arr in (("weight", weight), ("bias", bias)):
        if arr is not None:
            _checks.floating(_NAME, name, arr, xp)
            _checks.shape_is(_NAME, name, arr, (groups,), "one value per group, num_groups")
    if running_mean is None or running_var is None:
        raise ValueError(
            f"{_NAME}: running_mean and running_var are required: the batch step normalizes with "
            "these estimates in training and in eval; got "
            f"running_mean={'None' if running_mean is None else 'an array'}, "
            f"running_var={'None' if running_var is None else 'an array'}"
        )
    training = _checks.flag(_NAME, "training", training)
    if momentum is not None:
        momentum = _checks.unit_interval(_NAME, "momentum", momentum)
    elif training:
        # The authors keep the rate in a buffer that starts at 0 (no update at all) and is set by
        # a training script they did not publish; no default would be theirs.
        raise ValueError(
            f"{_NAME}: momentum is required when training: the weight r of this batch in the "
            "update of the running estimates, in [0, 1]; got None"
        )
    eps = _checks.positive(_NAME, "eps", eps)
    batch_eps = _checks.positive(_NAME, "batch_eps", batch_eps)
    _checks.output(_NAME, "out", out, x)
    n, s = x.shape[0], math.prod(x.shape[2:])
    if s == 0 or channels == 0:
        raise ValueError(
            f"{_NAME}: every group must hold at least one value, got x of shape {tuple(x.shape)}"
        )
    kernels_for(registry.OPS[_NAME], x, backend)  # validates `backend`; there are no kernels yet

    acc = _xp.accumulation_dtype(xp, x.dtype)
    xa = xp.astype(xp.reshape(x, (n, channels, s)), acc)
    pshape = (1, channels, 1)
    new_mean, new_var = running_mean, running_var
    use_mean, use_var = running_mean, running_var
    if training and n > 0:
        # An empty batch has no statistics: the estimates stay (the authors' code would average
        # nothing into them, NaN).
        old_mean = xp.reshape(xp.astype(running_mean, acc), pshape)
        batch_mean = xp.mean(xa, axis=_BATCH_AXES)
        dev = xa - old_mean  # about the estimate from before this batch, as the authors do
        second = xp.mean(dev * dev, axis=_BATCH_AXES)
        use_mean, new_mean = _common.moving_average(xp, running_mean, batch_mean, momentum, acc)
        use_var, new_var = _common.moving_average(xp, running_var, second, momentum, acc)
    # Normalize with the updated estimates, as the authors' module reads its buffers back after
    # updating them: a training call's y is an eval call's y with the returned estimates.
    mean = xp.reshape(xp.astype(use_mean, acc), pshape)
    rstd = 1.0 / xp.sqrt(xp.reshape(xp.astype(use_var, acc), pshape) + batch_eps)
    h = _common.affine(xp, (xa - mean) * rstd, bn_weight, bn_bias, pshape, acc)

    view = (n, groups, channels // groups, s)
    h_hat, group_mean, group_rstd, _ = _common.moments(
        xp, xp.reshape(h, view), _GROUP_AXES, eps, acc
    )
    y = _common.affine(xp, h_hat, weight, bias, (1, groups, 1, 1), acc)
    y = _xp.deliver(xp, xp.astype(y, x.dtype), out, tuple(x.shape))
    saved = BatchChannelNormSaved(
        x,
        xp.reshape(mean, (channels,)),
        xp.reshape(rstd, (channels,)),
        bn_weight,
        bn_bias,
        xp.reshape(group_mean, (n, groups)),
        xp.reshape(group_rstd, (n, groups)),
        weight,
        None if bias is None else bias.dtype,
    )
    return y, new_mean, new_var, saved


def batch_channel_norm_backward(dy, saved: BatchChannelNormSaved, *, out=None, backend=None):
    """Gradients (dx, dbn_weight, dbn_bias, dweight, dbias) of batch_channel_norm's y from the
    upstream gradient dy (None for an absent parameter). The running estimates are state: the
    gradient does not flow through them, in training as in eval.

    `out`, if given, receives dx. Parameter gradients come back in the parameters' dtypes.
    """
    x, bn_weight, bn_bias = saved.x, saved.bn_weight, saved.bn_bias
    xp = _common.backward_inputs(_NAME, dy, x, out)
    kernels_for(registry.OPS[_NAME], x, backend)

    n, groups = saved.group_mean.shape
    channels, s = x.shape[1], math.prod(x.shape[2:])
    view = (n, groups, channels // groups, s)
    pshape = (1, channels, 1)
    acc = saved.mean.dtype
    # Rebuild h exactly as the forward did (same operations on the same values).
    xa = xp.astype(xp.reshape(x, (n, channels, s)), acc)
    rstd = xp.reshape(saved.rstd, pshape)
    x_hat = (xa - xp.reshape(saved.mean, pshape)) * rstd
    h = xp.reshape(_common.affine(xp, x_hat, bn_weight, bn_bias, pshape, acc), view)

    # The channel step: group norm's backward with one weight per group.
    group_mean = xp.reshape(saved.group_mean, (n, groups, 1, 1))
    group_rstd = xp.reshape(saved.group_rstd, (n, groups, 1, 1))
    h_hat = _common.recentred(xp, (h - group_mean) * group_rstd, _GROUP_AXES)
    dya = xp.astype(xp.reshape(dy, view), acc)
    weight = saved.weight
    gg = dya if weight is None else dya * xp.reshape(xp.astype(weight, acc), (1, groups, 1, 1))
    dh = _common.moments_backward(xp, gg, h_hat, group_rstd, _GROUP_AXES)
    dweight, dbias = _common.param_grads(
        xp, dya, h_hat, weight, saved.bias_dtype, _GROUP_PARAM_AXES
    )

    # The batch step: a per-channel affine map of x, the estimates being constants.
    dh = xp.reshape(dh, (n, channels, s))
    bn_bias_dtype = None if bn_bias is None else bn_bias.dtype
    dbn_weight, dbn_bias = _common.param_grads(xp, dh, x_hat, bn_weight, bn_bias_dtype, _BATCH_AXES)
    if bn_weight is not None:
        dh = dh * xp.reshape(xp.astype(bn_weight, acc), pshape)
    dx = _xp.deliver(xp, xp.astype(dh * rstd, x.dtype), out, tuple(x.shape))
    return dx, dbn_weight, dbn_bias, dweight, dbias


def batch_channel_norm_variant(
    x,
    bn_weight=None,
    bn_bias=None,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    num_groups=None,
    training=True,
    momentum=None,
    eps=1e-5,
    batch_eps=1e-5,
    batch_statistics=False,
    variance_about_batch_mean=False,
):
    """The forward's outputs (y, new_running_mean, new_running_var) under another convention
    (specs/batch_channel_norm.md, Conventions of peers), for diagnosing a mismatch; float64 math.

    batch_statistics: the batch step is an ordinary batch norm (the authors' BCNorm with
    estimate=False, torch.nn.BatchNorm2d): training normalizes with this batch's mean and biased
    variance and updates the running statistics PyTorch's way (unbiased variance; momentum None
    means nn.BatchNorm2d's default 0.1). variance_about_batch_mean: the estimate's second moment
    is the batch variance, about this batch's mean instead of the old running mean (labml_nn).
    """
    xp = _xp.namespace(x, bn_weight, bn_bias, weight, bias, running_mean, running_var)
    n, channels, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    m = n * s
    f64 = xp.float64
    pshape = (1, channels, 1)
    xa = xp.reshape(xp.astype(x, f64), (n, channels, s))
    new_rm, new_rv = running_mean, running_var
    norm_mean = xp.reshape(xp.astype(running_mean, f64), pshape)
    norm_var = xp.reshape(xp.astype(running_var, f64), pshape)
    if training and m > 0:
        batch_mean, batch_var = _common.variant_moments(xp, xa, _BATCH_AXES)
        if batch_statistics:
            if m < 2:
                raise ValueError(f"{_NAME}: batch_statistics needs more than 1 value per channel")
            rate = 0.1 if momentum is None else momentum
            stat_var = batch_var * (m / (m - 1))
        else:
            rate = momentum
            about = batch_mean if variance_about_batch_mean else norm_mean
            stat_var = xp.mean((xa - about) ** 2, axis=_BATCH_AXES, keepdims=True)
        mean_c, var_c = xp.reshape(batch_mean, (channels,)), xp.reshape(stat_var, (channels,))
        _, new_rm = _common.moving_average(xp, running_mean, mean_c, rate, f64)
        _, new_rv = _common.moving_average(xp, running_var, var_c, rate, f64)
        if batch_statistics:
            norm_mean, norm_var = batch_mean, batch_var
        else:
            norm_mean = xp.reshape(xp.astype(new_rm, f64), pshape)
            norm_var = xp.reshape(xp.astype(new_rv, f64), pshape)
    x_hat = (xa - norm_mean) / xp.sqrt(norm_var + batch_eps)
    h = _common.affine(xp, x_hat, bn_weight, bn_bias, pshape, f64)
    hv = xp.reshape(h, (n, num_groups, channels // num_groups, s))
    gmean, gvar = _common.variant_moments(xp, hv, _GROUP_AXES)
    gshape = (1, num_groups, 1, 1)
    y = _common.affine(xp, (hv - gmean) / xp.sqrt(gvar + eps), weight, bias, gshape, f64)
    return xp.astype(xp.reshape(y, x.shape), x.dtype), new_rm, new_rv
