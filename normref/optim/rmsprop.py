"""RMSprop (Hinton, 2012, Lecture 6e; centered form: Graves, 2013), in PyTorch's exact arithmetic
order. Spec: specs/rmsprop.md.

For each parameter p with gradient g (scheduled hyperparameters are read at the 0-based step)::

    g = -g                                   if maximize
    g = g + weight_decay * p                 if weight_decay != 0   (L2)
    v = v * alpha + (1 - alpha) * g * g
    if centered:
        g_avg = g_avg + (1 - alpha) * (g - g_avg)          (PyTorch's lerp)
        avg = sqrt(v - g_avg * g_avg) + eps
    else:
        avg = sqrt(v) + eps
    if momentum != 0:
        b = b * momentum + g / avg                         b starts at 0
        p = p + (-lr) * b
    else:
        p = p + (-lr) * g / avg
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.adam import _lerp
from normref.optim.base import (
    Hyper,
    Optimizer,
    PeerVariant,
    Schedule,
    l2_gradient,
    peer_variant,
    register_state,
)

__all__ = ["RMSpropState", "rmsprop", "rmsprop_variant", "VARIANTS"]


@register_state
class RMSpropState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far
    square_avg: Any  # like params, accumulation dtype: v, moving average of g * g
    momentum_buffer: Any  # like params, accumulation dtype: b; None when momentum is 0
    grad_avg: Any  # like params, accumulation dtype: moving average of g; None unless centered


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    lr: float
    alpha: float
    one_minus_alpha: float
    eps: float
    weight_decay: float
    momentum: float
    maximize: bool


class RMSprop(Optimizer):
    name = "rmsprop"
    kernel = "rmsprop"
    state_type = RMSpropState

    def __init__(
        self,
        lr: float | Schedule,
        alpha: float,
        eps: float,
        weight_decay: float | Schedule,
        momentum: float | Schedule,
        centered: bool,
        maximize: bool,
    ) -> None:
        op = self.name
        self.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
        # [0, 1): PyTorch accepts any alpha >= 0, but alpha = 1 freezes v at 0 (steps of g/eps)
        # and alpha > 1 makes it an exploding, sign-alternating sum
        self.alpha = _checks.decay_rate(op, "alpha", alpha)
        self.eps = _checks.positive(op, "eps", eps)
        self.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
        self.momentum = Hyper.of(op, "momentum", momentum, _checks.nonnegative)
        self.centered = _checks.flag(op, "centered", centered)
        self.maximize = _checks.flag(op, "maximize", maximize)
        super().__init__(
            dict(
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                maximize=maximize,
            )
        )

    def _slots(self) -> tuple[bool, ...]:
        # a scheduled momentum may become non-zero later, so it keeps a buffer from the start
        return (True, self.momentum.scheduled or self.momentum.value != 0, self.centered)

    def _coefficients(self, step: int) -> _Coefficients:
        return _Coefficients(
            lr=self.lr.at(step),
            alpha=self.alpha,
            one_minus_alpha=1 - self.alpha,
            eps=self.eps,
            weight_decay=self.weight_decay.at(step),
            momentum=self.momentum.at(step),
            maximize=self.maximize,
        )

    def _moments(self, xp, p, g, slots, k):
        """g after sign and decay, the new v and g_avg, and v - g_avg**2 (or v)."""
        v, buf, g_avg = slots
        g = l2_gradient(p, g, k)
        v = v * k.alpha + k.one_minus_alpha * g * g
        if g_avg is None:
            return g, v, g_avg, v
        g_avg = _lerp(g_avg, g, k.one_minus_alpha)
        # the centered second moment: a variance, which rounding can push just below 0 (NaN)
        return g, v, g_avg, v - g_avg * g_avg

    def _math(self, xp, p, g, slots, k):
        buf = slots[1]
        g, v, g_avg, second = self._moments(xp, p, g, slots, k)
        avg = xp.sqrt(second) + k.eps  # eps outside the root
        if buf is not None and k.momentum != 0:
            buf = buf * k.momentum + g / avg
            return p + (-k.lr) * buf, (v, buf, g_avg)
        return p + (-k.lr) * g / avg, (v, buf, g_avg)


def rmsprop(
    lr: float | Schedule = 1e-2,
    *,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    momentum: float | Schedule = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> RMSprop:
    """RMSprop as torch.optim.RMSprop: g divided by the root of a moving average of g * g.

    Arguments -> spec symbols: lr -> eta, alpha -> alpha (the average's decay; Keras' rho,
    optax's decay), eps -> epsilon, weight_decay -> lambda, momentum -> mu. `lr`, `weight_decay`
    and `momentum` take a number or a schedule. `centered` divides by the root of the gradient's
    variance instead. The defaults are PyTorch's (alpha 0.99, eps 1e-8 outside the root); optax
    and Keras decay at 0.9 and put eps inside the root (variant `eps_in_sqrt`) and keep lr inside
    the momentum buffer (variant `lr_inside_momentum`), specs/rmsprop.md.

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.rmsprop(0.01)
    >>> params = [np.array([1.0])]
    >>> state = opt.init(params)
    >>> opt.update_(params, [np.array([3.0])], state)   # v = 0.01 g^2: a first step of 10 lr
    >>> np.round(params[0], 6)
    array([0.9])
    """
    return RMSprop(lr, alpha, eps, weight_decay, momentum, centered, maximize)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/rmsprop.md, Conventions of peers).

VARIANTS = {
    "eps_in_sqrt": "eps inside the square root (optax rmsprop's default eps_in_sqrt=True, "
    "Keras RMSprop): avg = sqrt(v + eps), centered sqrt(v - g_avg**2 + eps)",
    "lr_inside_momentum": "lr multiplied in before the momentum accumulates (Keras RMSprop, "
    "optax rmsprop with momentum): b = momentum * b + lr * g / avg; p = p - b",
}


class _RMSpropVariant(PeerVariant, RMSprop):
    def _math(self, xp, p, g, slots, k):
        buf = slots[1]
        g, v, g_avg, second = self._moments(xp, p, g, slots, k)
        if self.variant == "eps_in_sqrt":
            avg = xp.sqrt(second + k.eps)
        else:
            avg = xp.sqrt(second) + k.eps
        if buf is not None and k.momentum != 0:
            if self.variant == "lr_inside_momentum":
                buf = buf * k.momentum + (k.lr * g) / avg
                return p - buf, (v, buf, g_avg)
            buf = buf * k.momentum + g / avg
            return p - k.lr * buf, (v, buf, g_avg)
        return p - (k.lr * g) / avg, (v, buf, g_avg)


def rmsprop_variant(variant: str, **hyperparams: Any) -> RMSprop:
    """An optimizer computing RMSprop under a peer's convention `variant` (one of VARIANTS), with
    rmsprop's hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("rmsprop", variant, VARIANTS, rmsprop, hyperparams, _RMSpropVariant)
