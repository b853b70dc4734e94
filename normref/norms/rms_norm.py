"""Root-mean-square layer normalization (Zhang & Sennrich, 2019). Derivation: specs/rms_norm.md.

Forward, over the trailing `normalized_shape` dimensions of each row of n elements::

    rstd  = 1 / sqrt(sum(x^2) / n + eps)
    x_hat = x * rstd
    y     = x_hat * weight

Backward, with g = dy * weight::

    dx      = rstd * (g - x_hat * mean(g * x_hat))
    dweight = sum over rows of dy * x_hat
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks, _plans, _xp
from normref.norms import _rows

__all__ = ["RMSNormSaved", "rms_norm", "rms_norm_forward", "rms_norm_backward"]

_NAME = "rms_norm"


class RMSNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    x: Any  # the input, its own dtype and shape
    rstd: Any  # (*batch, 1, ..., 1): 1 / sqrt(mean(x^2) + eps), accumulation dtype
    weight: Any  # normalized_shape, or None
    normalized_ndim: int  # k: how many trailing dims were normalized


def rms_norm(x, weight=None, *, normalized_shape=None, eps=None, out=None, backend=None):
    """y = x / sqrt(mean(x^2) + eps) * weight over the trailing dims; see rms_norm_forward."""
    return rms_norm_forward(
        x, weight, normalized_shape=normalized_shape, eps=eps, out=out, backend=backend
    )[0]


def rms_norm_forward(x, weight=None, *, normalized_shape=None, eps=None, out=None, backend=None):
    """RMS norm of `x` over its trailing `normalized_shape` dims; returns (y, RMSNormSaved).

    Args map to the spec's symbols: x -> x, weight -> g (gain), eps -> epsilon. `eps=None` is
    PyTorch's default: the machine epsilon of the compute dtype (float32's for 16-bit inputs); Flax
    and Keras default to 1e-6, ONNX to 1e-5. The weight multiplies in the compute dtype before the
    single rounding to x's dtype (PyTorch; Hugging Face's Llama rounds first). `out` receives y.

    >>> import numpy as np, normref
    >>> y = normref.rms_norm(np.array([[3.0, 4.0]]), eps=1e-12)
    >>> np.round(y, 4)
    array([[0.8485, 1.1314]])
    """
    key = _plans.signature((x, weight), out, normalized_shape, eps, backend)
    plan = _FORWARD_PLANS.get(key) or _FORWARD_PLANS.add(
        key, _rows.forward_plan(_NAME, x, weight, None, normalized_shape, eps, out, backend)
    )
    xp, kernel, eps, batch, rows, n, k, stats_shape, acc, direct = plan
    if kernel is None:
        y, rstd = _reference_forward(xp, xp.reshape(x, batch + (n,)), weight, eps, acc)
    else:
        y = out if direct and out is not None else _xp.rows_buffer(xp, out, rows, n, x.dtype)
        rstd = xp.empty((rows,), dtype=acc)
        kernel(
            x if direct else _xp.as_rows(xp, x, rows, n),
            weight if direct else _xp.param_vector(xp, weight, acc),
            eps,
            y,
            rstd,
        )
    y = _xp.deliver(xp, y, out, tuple(x.shape))
    return y, _tuple_new(RMSNormSaved, (x, _xp.reshape(xp, rstd, stats_shape), weight, k))


def rms_norm_backward(dy, saved: RMSNormSaved, *, out=None, backend=None):
    """Gradients (dx, dweight) of rms_norm from the upstream gradient dy (dweight None if absent).

    `out`, if given, receives dx. dweight comes back in the dtype of weight.
    """
    x, rstd, weight, k = saved
    key = _plans.signature((dy, x, rstd, weight), out, k, backend)
    plan = _BACKWARD_PLANS.get(key) or _BACKWARD_PLANS.add(
        key, _rows.backward_plan(_NAME, dy, x, weight, None, rstd, k, out, backend)
    )
    xp, kernel, _, batch, rows, n, k, _, acc, direct = plan
    if kernel is None:
        dx, dweight = _reference_backward(
            xp,
            xp.reshape(dy, batch + (n,)),
            xp.reshape(x, batch + (n,)),
            xp.reshape(rstd, batch + (1,)),
            None if weight is None else xp.reshape(weight, (n,)),
            acc,
        )
    else:
        dx = out if direct and out is not None else _xp.rows_buffer(xp, out, rows, n, x.dtype)
        dweight = xp.empty((n,), dtype=acc) if weight is not None else None
        kernel(
            dy if direct else _xp.as_rows(xp, dy, rows, n),
            x if direct else _xp.as_rows(xp, x, rows, n),
            rstd.reshape((rows,)),  # a kernel's arrays: NumPy or CuPy
            weight if direct else _xp.param_vector(xp, weight, acc),
            dx,
            dweight,
        )
    dx = _xp.deliver(xp, dx, out, tuple(x.shape))
    if dweight is not None and not direct:  # to the weight's dtype and shape
        dweight = xp.reshape(xp.astype(dweight, weight.dtype, copy=False), tuple(weight.shape))
    return dx, dweight


_FORWARD_PLANS = _plans.Plans()
_BACKWARD_PLANS = _plans.Plans()
_tuple_new = tuple.__new__  # makes a NamedTuple from a tuple in half the time its __new__ takes


def _reference_forward(xp, x, weight, eps, acc):
    """x: (*batch, n)."""
    xa = xp.astype(x, acc)
    rstd = 1.0 / xp.sqrt(xp.mean(xa * xa, axis=-1, keepdims=True) + eps)
    y = xa * rstd
    if weight is not None:
        y = y * xp.reshape(xp.astype(weight, acc), (-1,))
    return xp.astype(y, x.dtype), rstd


def _reference_backward(xp, dy, x, rstd, weight, acc):
    """dy, x: (*batch, n); rstd: (*batch, 1); weight: (n,) or None."""
    x_hat = xp.astype(x, acc) * rstd
    dya = xp.astype(dy, acc)
    g = dya if weight is None else dya * xp.astype(weight, acc)
    mean_gx = xp.mean(g * x_hat, axis=-1, keepdims=True)
    dx = xp.astype(rstd * (g - x_hat * mean_gx), x.dtype)
    dweight = None if weight is None else xp.sum(dya * x_hat, axis=tuple(range(x.ndim - 1)))
    return dx, dweight


def rms_norm_variant(
    x,
    weight=None,
    *,
    normalized_shape=None,
    eps=None,
    eps_outside_sqrt=False,
    cast_before_weight=False,
):
    """The forward under a peer's differing convention (specs/rms_norm.md, Conventions), for
    diagnosing a mismatch; not a fast path."""
    xp = _xp.namespace(x, weight)
    shape = _checks.normalized_shape(_NAME, tuple(x.shape), normalized_shape, weight)
    acc = _xp.accumulation_dtype(xp, x.dtype)
    eps = xp.finfo(acc).eps if eps is None else float(eps)
    xa = xp.reshape(xp.astype(x, xp.float64), tuple(x.shape[: x.ndim - len(shape)]) + (-1,))
    ms = xp.mean(xa * xa, axis=-1, keepdims=True)
    y = xa / (xp.sqrt(ms) + eps) if eps_outside_sqrt else xa / xp.sqrt(ms + eps)
    if cast_before_weight:
        y = xp.astype(xp.astype(y, x.dtype), xp.float64)
    if weight is not None:
        y = y * xp.reshape(xp.astype(weight, xp.float64), (-1,))
    return xp.astype(xp.reshape(y, x.shape), x.dtype)
