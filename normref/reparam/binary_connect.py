"""BinaryConnect (Courbariaux, Bengio & David, 2015). The math: specs/binary_connect.md.

The forward and backward passes of a layer use binary weights w_b in {-scale, +scale}, while the
optimizer updates the real-valued weights w they are drawn from (scale = 1 in the paper's
equations; the authors' code uses the Glorot bound H of each layer). Deterministic
binarization, the paper's eq. (1)::

    w_b = +scale if w >= 0 else -scale          (so w = 0 gives +scale)

Stochastic binarization, eq. (2), with the hard sigmoid of eq. (3)::

    p   = clip((w / scale + 1) / 2, 0, 1)
    w_b = +scale with probability p, else -scale

The uniforms come from an explicit seed, never from a global generator (see binary_connect).

Backward: the straight-through estimator, the gradient passed to w unchanged where |w| <= scale
and cancelled outside (mask_gradient=True, BinaryNet's and Larq's rule)::

    dw = dw_b * (|w| <= scale)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for

__all__ = [
    "BinaryConnectSaved",
    "binary_connect",
    "binary_connect_forward",
    "binary_connect_backward",
]

_NAME = "binary_connect"


class BinaryConnectSaved(NamedTuple):
    """What the backward needs from the forward."""

    w: Any  # the real-valued weights, their own dtype and shape
    scale: float
    mask_gradient: bool


def binary_connect(
    w, *, stochastic=False, seed=None, scale=1.0, mask_gradient=True, out=None, backend=None
):
    """w_b in {-scale, +scale}: the sign of w, or a stochastic draw with P(+scale) = hard
    sigmoid of w / scale."""
    return binary_connect_forward(
        w,
        stochastic=stochastic,
        seed=seed,
        scale=scale,
        mask_gradient=mask_gradient,
        out=out,
        backend=backend,
    )[0]


def binary_connect_forward(
    w, *, stochastic=False, seed=None, scale=1.0, mask_gradient=True, out=None, backend=None
):
    """Binarize the real-valued weights `w`; returns (w_b, BinaryConnectSaved).

    Deterministic (the default): +scale where w >= 0 (including w = 0 and -0.0), -scale
    elsewhere. stochastic=True: +scale with probability clip((w / scale + 1) / 2, 0, 1), drawn
    with the uniforms `numpy.random.Generator(numpy.random.PCG64(seed)).random(w.shape)` in
    float64 (C order), compared with that probability computed in float64; `seed` (an int >= 0)
    is required, so a draw is always reproducible. NaN in w gives NaN in w_b.

    `scale` is the binary magnitude and the half-width of the straight-through window;
    `mask_gradient` (only read by the backward) cancels the gradient where |w| > scale.
    `out`, if given (w's shape and dtype, writable), receives w_b and is returned as it.

    >>> import numpy as np, normref
    >>> normref.binary_connect(np.array([-0.3, 0.0, 2.0]))
    array([-1.,  1.,  1.])
    """
    xp = _xp.namespace(w, out)
    _checks.floating(_NAME, "w", w, xp)
    stochastic = _checks.flag(_NAME, "stochastic", stochastic)
    scale = _checks.positive(_NAME, "scale", scale)
    mask_gradient = _checks.flag(_NAME, "mask_gradient", mask_gradient)
    if seed is not None:
        seed = _checks.integer(_NAME, "seed", seed, 0)
    if stochastic and seed is None:
        raise ValueError(
            f"{_NAME}: stochastic=True needs an explicit seed (an int >= 0); normref never "
            "draws from a global random generator"
        )
    _checks.output(_NAME, "out", out, w)
    kernels_for(registry.OPS[_NAME], w, backend)  # validates `backend`; there are no kernels

    plus = xp.full_like(w, scale)
    if stochastic:
        w64 = xp.astype(w, xp.float64)
        p = xp.clip((w64 / scale + 1.0) / 2.0, min=0.0, max=1.0)
        up = p > _uniforms(xp, w, seed)
    else:
        up = w >= 0
    w_b = xp.where(up, plus, -plus)
    # NaN compares false, which would silently make it -scale: keep it NaN instead.
    w_b = _xp.deliver(xp, xp.where(xp.isnan(w), w, w_b), out, tuple(w.shape))
    return w_b, BinaryConnectSaved(w, scale, mask_gradient)


def binary_connect_backward(dw_b, saved: BinaryConnectSaved, *, out=None, backend=None):
    """(dw,): the straight-through gradient, dw_b where |w| <= scale and 0 elsewhere (dw_b
    everywhere with mask_gradient=False); NaN where w is NaN. `out`, if given (w's shape and
    dtype, writable), receives dw and is returned as it."""
    w = saved.w
    xp = _xp.namespace(dw_b, w, out)
    _checks.floating(_NAME, "dw_b", dw_b, xp)
    _checks.same_shape(_NAME, "dw_b", dw_b, "w", w)
    _checks.same_dtype(_NAME, "dw_b", dw_b, "w", w)
    _checks.output(_NAME, "out", out, w)
    kernels_for(registry.OPS[_NAME], w, backend)

    dw = dw_b
    if saved.mask_gradient:
        dw = xp.where(xp.abs(w) <= saved.scale, dw_b, xp.zeros_like(dw_b))
    return (_xp.deliver(xp, xp.where(xp.isnan(w), w, dw), out, tuple(w.shape)),)


def _uniforms(xp, like, seed):
    """U[0, 1) float64 numbers of like's shape from PCG64(seed), on like's device: drawn with
    NumPy on the host whatever the array library, so every library gets the same numbers."""
    draws = np.random.Generator(np.random.PCG64(seed)).random(tuple(like.shape))
    return xp.asarray(draws, device=array_api_compat.device(like))


def binary_connect_variant(
    w, *, stochastic=False, seed=None, scale=1.0, mask_gradient=True, sign_zero_is_zero=False
):
    """The forward under a peer's differing convention (specs/binary_connect.md, Conventions),
    for diagnosing a mismatch.

    sign_zero_is_zero: w = 0 binarizes to 0, as torch.sign / numpy.sign do.
    """
    w_b = binary_connect(w, stochastic=stochastic, seed=seed, scale=scale)
    if sign_zero_is_zero and not stochastic:
        xp = _xp.namespace(w)
        w_b = xp.where(w == 0, xp.zeros_like(w_b), w_b)
    return w_b
