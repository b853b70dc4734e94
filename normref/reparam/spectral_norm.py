"""Spectral normalization (Miyato et al., 2018). The math, derived: specs/spectral_norm.md.

The weight is divided by an estimate of its largest singular value. The weight is viewed as a
matrix W of shape (h, rest): dimension `dim` first, everything else flattened (PyTorch's layout).
u (h,) and v (rest,) are state that the caller carries from step to step. In training mode each
call first runs `n_power_iterations` steps of the power method, starting from v::

    u = normalize(W v)            normalize(x) = x / max(||x||, eps)
    v = normalize(W^T u)

then, in both modes::

    sigma = u . (W v)
    w     = weight / sigma

Backward, with u and v treated as constants (as PyTorch's autograd does: it runs the power
iteration without recording it)::

    dweight = dw / sigma - (sum(dw * weight) / sigma^2) * (u v^T, laid out like weight)

With exact=True, sigma, u and v are the largest singular value and its singular vectors from an
SVD, and the same formula is then the exact gradient of weight / sigma_max(W).

A 1-D weight needs no estimate: w = weight / max(||weight||, eps), with no u and v (PyTorch).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for

__all__ = [
    "SpectralNormSaved",
    "spectral_norm",
    "spectral_norm_forward",
    "spectral_norm_backward",
    "spectral_norm_init",
]

_NAME = "spectral_norm"


class SpectralNormSaved(NamedTuple):
    """What the backward needs from the forward."""

    weight: Any  # the input, its own dtype and shape
    u: Any  # (h,) accumulation dtype: the u sigma was computed with; None for a 1-D weight
    v: Any  # (rest,) likewise
    sigma: Any  # 0-d, accumulation dtype: sigma, or max(||weight||, eps) for a 1-D weight
    perm: tuple[int, ...]  # the permutation that brings `dim` to the front
    clamped: bool  # 1-D weight only: ||weight|| <= eps, so the norm was replaced by eps


def spectral_norm(
    weight,
    u=None,
    v=None,
    *,
    dim=0,
    n_power_iterations=1,
    eps=1e-12,
    training=True,
    exact=False,
    out=None,
    backend=None,
):
    """(w, new_u, new_v): spectral_norm_forward without the saved tensors. The state comes back
    rather than being updated in place."""
    return spectral_norm_forward(
        weight,
        u,
        v,
        dim=dim,
        n_power_iterations=n_power_iterations,
        eps=eps,
        training=training,
        exact=exact,
        out=out,
        backend=backend,
    )[:3]


def spectral_norm_forward(
    weight,
    u=None,
    v=None,
    *,
    dim=0,
    n_power_iterations=1,
    eps=1e-12,
    training=True,
    exact=False,
    out=None,
    backend=None,
):
    """Spectral normalization of `weight`; returns (w, new_u, new_v, SpectralNormSaved).

    `dim` (PyTorch's) is the output dimension, the rows of the matrix view: 0 for Linear and
    ConvNd weights, 1 for ConvTransposeNd. `u` (weight.shape[dim],) and `v` (the product of the
    other dimensions,) are the power-iteration state, never modified: the updated vectors come
    back. `training=True` runs `n_power_iterations` (>= 0) power steps starting from v (the
    given u is then only a placeholder, as in PyTorch); `training=False` uses u and v as they
    are and returns them unchanged. `eps` bounds the norms divided by (F.normalize's clamp).

    `exact=True` replaces the estimate by an SVD: sigma is the largest singular value, and in
    training mode the returned u, v are its singular vectors (signed to agree with the given u);
    the backward is then the exact gradient. Use it to measure how far the estimate is off.

    A 1-D weight has no u and v (pass None): w = weight / max(||weight||, eps).

    `out`, if given (weight's shape and dtype, writable), receives w and is returned as it; the
    new u and v are always new arrays (small, and never written into the caller's state).

    One power step from v = (1, 1) estimates sigma = 2.86 for a largest singular value of 3:

    >>> import numpy as np, normref
    >>> W = np.array([[3.0, 0.0], [0.0, 1.0]])
    >>> w, u, v = normref.spectral_norm(W, np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    >>> np.round(w, 3), np.round(u, 3), np.round(v, 3)
    (array([[1.048, 0.   ],
           [0.   , 0.349]]), array([0.949, 0.316]), array([0.994, 0.11 ]))
    """
    xp = _xp.namespace(weight, u, v, out)
    _checks.floating(_NAME, "weight", weight, xp)
    _checks.min_ndim(_NAME, "weight", weight, 1, "(out, *in) with out along dim")
    dim = _checks.axis(_NAME, "dim", dim, weight.ndim)
    n_power_iterations = _checks.integer(_NAME, "n_power_iterations", n_power_iterations, 0)
    eps = _checks.positive(_NAME, "eps", eps)
    training = _checks.flag(_NAME, "training", training)
    exact = _checks.flag(_NAME, "exact", exact)
    perm = (dim,) + tuple(i for i in range(weight.ndim) if i != dim)
    h = weight.shape[dim]
    rest = math.prod(weight.shape[i] for i in perm[1:])
    if weight.ndim == 1:
        if u is not None or v is not None:
            raise ValueError(
                f"{_NAME}: a 1-D weight is divided by its exact norm and keeps no state; "
                "pass u=None and v=None"
            )
    else:
        for name, vec, n in (("u", u, h), ("v", v, rest)):
            if vec is None:
                raise ValueError(
                    f"{_NAME}: {name} is required for a weight of {weight.ndim} dimensions "
                    "(create it with spectral_norm_init)"
                )
            _checks.floating(_NAME, name, vec, xp)
            _checks.shape_is(_NAME, name, vec, (n,), f"the weight as a ({h}, {rest}) matrix")
    _checks.output(_NAME, "out", out, weight)
    kernels_for(registry.OPS[_NAME], weight, backend)  # validates `backend`; there are no kernels

    acc = _xp.accumulation_dtype(xp, weight.dtype)
    wa = xp.astype(weight, acc)
    if weight.ndim == 1:
        norm = xp.sqrt(xp.sum(wa * wa))
        clamped = bool(norm <= eps)
        denom = xp.clip(norm, min=eps)
        w = _xp.deliver(xp, xp.astype(wa / denom, weight.dtype), out, tuple(weight.shape))
        return w, None, None, SpectralNormSaved(weight, None, None, denom, perm, clamped)

    mat = _as_matrix(xp, wa, perm, h, rest)
    ua, va = xp.astype(u, acc), xp.astype(v, acc)
    if exact:
        ua, va, sigma = _top_singular(xp, mat, ua)
    else:
        if training:
            ua, va = _power_iteration(xp, mat, ua, va, n_power_iterations, eps)
        sigma = xp.sum(ua * xp.matmul(mat, va))
    w = _xp.deliver(xp, xp.astype(wa / sigma, weight.dtype), out, tuple(weight.shape))
    if training:
        new_u, new_v = xp.astype(ua, u.dtype), xp.astype(va, v.dtype)
    else:
        new_u, new_v = u, v  # eval never changes the state
    return w, new_u, new_v, SpectralNormSaved(weight, ua, va, sigma, perm, False)


def spectral_norm_backward(dw, saved: SpectralNormSaved, *, out=None, backend=None):
    """(dweight,): the gradient of spectral_norm's w from the upstream gradient dw, with u and v
    constants (PyTorch's autograd; exact for exact=True). u and v are state, not differentiated.
    `out`, if given (weight's shape and dtype, writable), receives dweight and is returned as it.
    """
    weight = saved.weight
    xp = _xp.namespace(dw, weight, out)
    _checks.floating(_NAME, "dw", dw, xp)
    _checks.same_shape(_NAME, "dw", dw, "weight", weight)
    _checks.same_dtype(_NAME, "dw", dw, "weight", weight)
    _checks.output(_NAME, "out", out, weight)
    kernels_for(registry.OPS[_NAME], weight, backend)

    acc = saved.sigma.dtype
    wa, dwa = xp.astype(weight, acc), xp.astype(dw, acc)
    sigma = saved.sigma
    if saved.u is None:
        # w = x / n with n = ||x||: dx = (dw - x_hat * sum(x_hat * dw)) / n. Where the norm was
        # clamped to eps, the denominator is a constant and only dw / eps remains.
        if saved.clamped:
            dweight = dwa / sigma
        else:
            x_hat = wa / sigma
            dweight = (dwa - x_hat * xp.sum(x_hat * dwa)) / sigma
    else:
        h, rest = saved.u.shape[0], saved.v.shape[0]
        # d sigma / d W = u v^T (u, v constant), so d(W / sigma) pulls dw back to
        # dw / sigma - sum(dw * W) / sigma^2 * u v^T.
        coeff = xp.sum(dwa * wa) / (sigma * sigma)
        outer = xp.reshape(saved.u, (h, 1)) * xp.reshape(saved.v, (1, rest))
        dweight = dwa / sigma - coeff * _from_matrix(xp, outer, saved.perm, tuple(weight.shape))
    return (_xp.deliver(xp, xp.astype(dweight, weight.dtype), out, tuple(weight.shape)),)


def spectral_norm_init(weight, u0, v0, *, dim=0, eps=1e-12, n_power_iterations=15):
    """The state (u, v) PyTorch's spectral_norm starts from: u0 and v0 (random vectors drawn by
    the caller; PyTorch draws them from N(0, 1)) normalized, then refined by 15 power steps.
    Returned in the dtypes of u0 and v0.

    torch.nn.utils.parametrizations.spectral_norm(module) leaves its buffers one training step
    further on: registering the parametrization runs it once, with its own n_power_iterations,
    to check the output. n_power_iterations=15 + that number reproduces those buffers."""
    op = "spectral_norm_init"
    xp = _xp.namespace(weight, u0, v0)
    _checks.floating(op, "weight", weight, xp)
    _checks.min_ndim(op, "weight", weight, 2, "(out, *in): a 1-D weight keeps no u, v")
    dim = _checks.axis(op, "dim", dim, weight.ndim)
    eps = _checks.positive(op, "eps", eps)
    n_power_iterations = _checks.integer(op, "n_power_iterations", n_power_iterations, 0)
    perm = (dim,) + tuple(i for i in range(weight.ndim) if i != dim)
    h, rest = weight.shape[dim], math.prod(weight.shape[i] for i in perm[1:])
    for name, vec, n in (("u0", u0, h), ("v0", v0, rest)):
        _checks.floating(op, name, vec, xp)
        _checks.shape_is(op, name, vec, (n,), f"the weight as a ({h}, {rest}) matrix")
    acc = _xp.accumulation_dtype(xp, weight.dtype)
    mat = _as_matrix(xp, xp.astype(weight, acc), perm, h, rest)
    u = _normalize(xp, xp.astype(u0, acc), eps)
    v = _normalize(xp, xp.astype(v0, acc), eps)
    u, v = _power_iteration(xp, mat, u, v, n_power_iterations, eps)
    return xp.astype(u, u0.dtype), xp.astype(v, v0.dtype)


def _as_matrix(xp, wa, perm, h, rest):
    """The weight as an (h, rest) matrix: dimension `dim` first, the others flattened in order."""
    return xp.reshape(xp.permute_dims(wa, perm), (h, rest))


def _from_matrix(xp, mat, perm, shape):
    """Inverse of _as_matrix: an (h, rest) matrix back in the weight's layout."""
    moved = xp.reshape(mat, tuple(shape[i] for i in perm))
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return xp.permute_dims(moved, inverse)


def _normalize(xp, x, eps):
    """x / max(||x||, eps): torch.nn.functional.normalize, which never divides by zero."""
    return x / xp.clip(xp.sqrt(xp.sum(x * x)), min=eps)


def _power_iteration(xp, mat, u, v, steps, eps):
    """PyTorch's order: u from v first, then v from the new u."""
    for _ in range(steps):
        u = _normalize(xp, xp.matmul(mat, v), eps)
        v = _normalize(xp, xp.matmul(mat.T, u), eps)
    return u, v


def _top_singular(xp, mat, u_given):
    """(u1, v1, sigma_max) of `mat` from an SVD, the sign of the pair chosen so that u1 points the
    way of the given u (a singular pair is defined up to a joint sign flip)."""
    left, values, right_t = xp.linalg.svd(mat, full_matrices=False)
    u1, v1 = left[:, 0], right_t[0, :]
    flip = xp.astype(xp.sum(u1 * u_given) < 0, u1.dtype)
    sign = 1.0 - 2.0 * flip
    return u1 * sign, v1 * sign, values[0]


def spectral_norm_variant(
    weight,
    u=None,
    v=None,
    *,
    dim=0,
    n_power_iterations=1,
    eps=1e-12,
    training=True,
    exact=False,
    start_from_u=False,
    flax=False,
):
    """The outputs (w, new_u, new_v) under a peer's differing convention
    (specs/spectral_norm.md, Conventions), for diagnosing a mismatch; float64 math.

    start_from_u: each power step computes v from u first, then u from v (Flax, Keras), so the
    given v is never read in training mode. flax: start_from_u, and Flax's other choices:
    normalize(x) = x * rsqrt(sum(x^2) + eps), the power steps run in eval mode too (only the
    storing of u is skipped), sigma = 0 is replaced by 1, and a 1-D weight is returned unchanged.
    """
    xp = _xp.namespace(weight, u, v)
    f64 = xp.float64
    wa = xp.astype(weight, f64)
    if weight.ndim == 1:
        if flax:
            return xp.asarray(weight, copy=True), None, None
        return xp.astype(wa / xp.clip(xp.sqrt(xp.sum(wa * wa)), min=eps), weight.dtype), None, None
    dim = dim % weight.ndim
    perm = (dim,) + tuple(i for i in range(weight.ndim) if i != dim)
    h, rest = weight.shape[dim], math.prod(weight.shape[i] for i in perm[1:])
    mat = _as_matrix(xp, wa, perm, h, rest)
    ua, va = xp.astype(u, f64), xp.astype(v, f64)

    def norm(x):
        if flax:
            return x / xp.sqrt(xp.sum(x * x) + eps)
        return _normalize(xp, x, eps)

    iterate = training or flax
    if exact:
        ua, va, sigma = _top_singular(xp, mat, ua)
    else:
        for _ in range(n_power_iterations if iterate else 0):
            if start_from_u or flax:
                va = norm(xp.matmul(mat.T, ua))
                ua = norm(xp.matmul(mat, va))
            else:
                ua = norm(xp.matmul(mat, va))
                va = norm(xp.matmul(mat.T, ua))
        sigma = xp.sum(ua * xp.matmul(mat, va))
    if flax:
        sigma = sigma + xp.astype(sigma == 0, f64)  # Flax divides by 1 where sigma is 0
    w = xp.astype(wa / sigma, weight.dtype)
    if not training:
        return w, u, v
    return w, xp.astype(ua, u.dtype), xp.astype(va, v.dtype)
