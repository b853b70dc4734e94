"""Adamax (Kingma & Ba, 2015, Section 7.1): Adam with the infinity norm in place of the second
moment, in PyTorch's exact arithmetic order. Spec: specs/adamax.md.

For each parameter p with gradient g, at update t = step + 1 (1-based for the bias correction;
scheduled hyperparameters are read at the 0-based `step`)::

    g = -g                                   if maximize
    g = g + weight_decay * p                 if weight_decay != 0   (L2)
    mu = mu + (1 - b1) * (g - mu)            (PyTorch's lerp)
    u = maximum(u * b2, |g| + eps)
    p = p + (-lr / (1 - b1**t)) * mu / u

u needs no bias correction: a max is not pulled towards its zero start the way an average is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.adam import _adam_hyperparameters, _lerp
from normref.optim.base import (
    Optimizer,
    PeerVariant,
    Schedule,
    l2_gradient,
    peer_variant,
    register_state,
)

__all__ = ["AdamaxState", "adamax", "adamax_variant", "VARIANTS"]


@register_state
class AdamaxState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far; the next update is t = step + 1
    mu: Any  # like params, accumulation dtype: first moment, moving average of g
    u: Any  # like params, accumulation dtype: exponentially weighted infinity norm of g


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    lr: float
    one_minus_b1: float
    b2: float
    eps: float
    weight_decay: float
    bc1: float  # 1 - b1**t
    step_size: float  # lr / bc1
    maximize: bool


class Adamax(Optimizer):
    name = "adamax"
    kernel = "adamax"
    state_type = AdamaxState

    def __init__(
        self,
        lr: float | Schedule,
        betas: tuple[float | Schedule, float | Schedule],
        eps: float,
        weight_decay: float | Schedule,
        maximize: bool,
    ) -> None:
        op = self.name
        # eps > 0: with eps = 0 a parameter whose gradients were all zero divides 0 by u = 0
        given = _adam_hyperparameters(self, lr, betas, eps, weight_decay)
        self.maximize = _checks.flag(op, "maximize", maximize)
        super().__init__(given | dict(maximize=maximize))

    def _slots(self) -> tuple[bool, ...]:
        return (True, True)

    def _coefficients(self, step: int) -> _Coefficients:
        t = step + 1
        lr, b1 = self.lr.at(step), self.b1.at(step)
        bc1 = 1 - b1**t
        return _Coefficients(
            lr=lr,
            one_minus_b1=1 - b1,
            b2=self.b2.at(step),
            eps=self.eps,
            weight_decay=self.weight_decay.at(step),
            bc1=bc1,
            step_size=lr / bc1,
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        mu, u = slots
        g = l2_gradient(p, g, k)
        mu = _lerp(mu, g, k.one_minus_b1)
        # eps inside the max (PyTorch, optax): u >= eps, so the division below is always safe
        u = xp.maximum(u * k.b2, xp.abs(g) + k.eps)
        # (-step_size * mu) / u, then added: PyTorch's addcdiv order
        return p + (-k.step_size) * mu / u, (mu, u)


def adamax(
    lr: float | Schedule = 2e-3,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    maximize: bool = False,
) -> Adamax:
    """Adamax with L2 weight decay, as torch.optim.Adamax. The default lr 2e-3 is the paper's
    and PyTorch's (Keras: 1e-3, eps 1e-7; optax: lr required).

    Arguments -> spec symbols: lr -> eta, betas -> (beta1, beta2), eps -> epsilon,
    weight_decay -> lambda. `lr`, `betas` and `weight_decay` take a number or a schedule
    `step -> value` read at the 0-based index of the update. eps sits inside the max,
    `u = max(b2*u, |g| + eps)` (PyTorch, optax); Keras adds it to u after the max instead
    (variant `keras_eps_outside_max`).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.adamax(0.1)
    >>> params = [np.array([1.0, -1.0])]
    >>> state = opt.init(params)
    >>> opt.update_(params, [np.array([3.0, -0.5])], state)   # the first step moves each by ~lr
    >>> np.round(params[0], 6)
    array([ 0.9, -0.9])
    """
    return Adamax(lr, betas, eps, weight_decay, maximize)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/adamax.md, Conventions of peers).

VARIANTS = {
    "keras_eps_outside_max": "eps added to u after the max, not to |g| inside it: "
    "u = max(b2 * u, |g|); p = p - lr * mu / ((1 - b1**t) * (u + eps))",
}


class _AdamaxVariant(PeerVariant, Adamax):
    def _math(self, xp, p, g, slots, k):
        mu, u = slots
        g = l2_gradient(p, g, k)
        mu = _lerp(mu, g, k.one_minus_b1)
        # keras_eps_outside_max (keras/src/optimizers/adamax.py::update_step)
        u = xp.maximum(u * k.b2, xp.abs(g))
        return p - (k.lr * mu) / (k.bc1 * (u + k.eps)), (mu, u)


def adamax_variant(variant: str, **hyperparams: Any) -> Adamax:
    """An optimizer computing Adamax under a peer's convention `variant` (one of VARIANTS), with
    adamax's hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("adamax", variant, VARIANTS, adamax, hyperparams, _AdamaxVariant)
