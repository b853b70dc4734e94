"""Lion (Chen et al., 2023, Algorithm 2): the sign of an interpolation between the momentum and
the gradient, with decoupled weight decay. Spec: specs/lion.md.

For each parameter p with gradient g (scheduled hyperparameters are read at the 0-based step)::

    c = b1 * m + (1 - b1) * g
    p = p - lr * (sign(c) + weight_decay * p)     (p - lr * sign(c) when weight_decay == 0)
    m = b2 * m + (1 - b2) * g

sign(0) = 0: an element whose interpolation is exactly 0 (every gradient so far 0) only decays.
Every element of p moves by exactly lr (plus the decay), whatever the gradient's scale.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.base import (
    Hyper,
    Optimizer,
    PeerVariant,
    Schedule,
    betas_of,
    peer_variant,
    register_state,
)

__all__ = ["LionState", "lion", "lion_variant", "VARIANTS"]


@register_state
class LionState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far
    mu: Any  # like params, accumulation dtype: the momentum m, moving average of g at rate b2


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    lr: float
    b1: float
    one_minus_b1: float
    b2: float
    one_minus_b2: float
    weight_decay: float


class Lion(Optimizer):
    name = "lion"
    kernel = "lion"
    state_type = LionState

    def __init__(
        self,
        lr: float | Schedule,
        betas: tuple[float | Schedule, float | Schedule],
        weight_decay: float | Schedule,
    ) -> None:
        op = self.name
        self.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
        self.b1, self.b2 = betas_of(op, betas)
        self.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
        super().__init__(dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def _slots(self) -> tuple[bool, ...]:
        return (True,)

    def _coefficients(self, step: int) -> _Coefficients:
        b1, b2 = self.b1.at(step), self.b2.at(step)
        return _Coefficients(
            lr=self.lr.at(step),
            b1=b1,
            one_minus_b1=1 - b1,
            b2=b2,
            one_minus_b2=1 - b2,
            weight_decay=self.weight_decay.at(step),
        )

    def _math(self, xp, p, g, slots, k):
        (m,) = slots
        c = k.b1 * m + k.one_minus_b1 * g
        u = xp.sign(c)
        if k.weight_decay != 0:
            u = u + k.weight_decay * p  # decoupled: the decay never enters the momentum
        p = p - k.lr * u
        m = k.b2 * m + k.one_minus_b2 * g
        return p, (m,)


def lion(
    lr: float | Schedule = 1e-4,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.99),
    weight_decay: float | Schedule = 0.0,
) -> Lion:
    """Lion as the paper's Algorithm 2 (and optax.lion): p = p - lr * (sign(c) + wd * p) with
    c = b1 * m + (1 - b1) * g, then m = b2 * m + (1 - b2) * g.

    Arguments -> spec symbols: lr -> eta, betas -> (beta1, beta2), weight_decay -> lambda. All
    take a number or a schedule. The paper suggests an lr 3-10x smaller than AdamW's and a
    weight decay 3-10x larger. optax's default weight_decay is 1e-3, Keras' lr 1e-3;
    pytorch_optimizer can add the decay to the gradient (variant `l2_weight_decay`) or not scale
    it by lr (variant `unscaled_decay`), specs/lion.md.

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.lion(0.01)
    >>> params = [np.array([1.0, 1.0, 1.0])]
    >>> params, _ = opt.update(params, [np.array([1e-9, -5.0, 0.0])], opt.init(params))
    >>> params[0]                                      # each element moves by exactly lr
    array([0.99, 1.01, 1.  ])
    """
    return Lion(lr, betas, weight_decay)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/lion.md, Conventions of peers).

VARIANTS = {
    "l2_weight_decay": "weight decay added to the gradient before the interpolation and the "
    "momentum (pytorch_optimizer Lion, weight_decouple=False): g = g + wd * p",
    "unscaled_decay": "decoupled decay not multiplied by lr (pytorch_optimizer Lion, "
    "fixed_decay=True): p = p * (1 - wd), then p = p - lr * sign(c)",
}


class _LionVariant(PeerVariant, Lion):
    def _math(self, xp, p, g, slots, k):
        (m,) = slots
        if k.weight_decay != 0:
            if self.variant == "l2_weight_decay":
                g = g + k.weight_decay * p
            else:  # unscaled_decay
                p = p * (1 - k.weight_decay)
        c = k.b1 * m + k.one_minus_b1 * g
        p = p - k.lr * xp.sign(c)
        m = k.b2 * m + k.one_minus_b2 * g
        return p, (m,)


def lion_variant(variant: str, **hyperparams: Any) -> Lion:
    """An optimizer computing Lion under a peer's convention `variant` (one of VARIANTS), with
    lion's hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("lion", variant, VARIANTS, lion, hyperparams, _LionVariant)
