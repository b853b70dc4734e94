"""Adadelta (Zeiler, 2012, Algorithm 1), in PyTorch's exact arithmetic order.
Spec: specs/adadelta.md.

For each parameter p with gradient g (scheduled hyperparameters are read at the 0-based step)::

    g = -g                                   if maximize
    g = g + weight_decay * p                 if weight_decay != 0   (L2)
    v = v * rho + (1 - rho) * g * g                          E[g^2]
    delta = sqrt(u + eps) / sqrt(v + eps) * g                RMS[dx]_{t-1} / RMS[g]_t * g
    u = u * rho + (1 - rho) * delta * delta                  E[dx^2]
    p = p + (-lr) * delta

The ratio of the two RMS values gives the step the units of p, so the paper needs no lr; lr = 1
is the paper's method, other values scale it (PyTorch, optax, Keras).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.base import Hyper, Optimizer, Schedule, l2_gradient, register_state

__all__ = ["AdadeltaState", "adadelta"]


@register_state
class AdadeltaState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far
    square_avg: Any  # like params, accumulation dtype: v = E[g^2], moving average of g * g
    acc_delta: Any  # like params, accumulation dtype: u = E[dx^2], moving average of delta**2


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    lr: float
    rho: float
    one_minus_rho: float
    eps: float
    weight_decay: float
    maximize: bool


class Adadelta(Optimizer):
    name = "adadelta"
    kernel = "adadelta"
    state_type = AdadeltaState

    def __init__(
        self,
        lr: float | Schedule,
        rho: float,
        eps: float,
        weight_decay: float | Schedule,
        maximize: bool,
    ) -> None:
        op = self.name
        self.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
        # [0, 1] as PyTorch: rho = 1 keeps both averages at 0, a plain SGD step of lr * g
        self.rho = _checks.unit_interval(op, "rho", rho)
        # eps > 0: it is the whole first step (u = 0), and sqrt(v + eps) must not be 0
        self.eps = _checks.positive(op, "eps", eps)
        self.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
        self.maximize = _checks.flag(op, "maximize", maximize)
        super().__init__(
            dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        )

    def _slots(self) -> tuple[bool, ...]:
        return (True, True)

    def _coefficients(self, step: int) -> _Coefficients:
        return _Coefficients(
            lr=self.lr.at(step),
            rho=self.rho,
            one_minus_rho=1 - self.rho,
            eps=self.eps,
            weight_decay=self.weight_decay.at(step),
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        v, u = slots
        g = l2_gradient(p, g, k)
        v = v * k.rho + k.one_minus_rho * g * g
        std = xp.sqrt(v + k.eps)
        # PyTorch: delta = sqrt(u + eps); delta /= std; delta *= g (the old u: RMS[dx]_{t-1})
        delta = xp.sqrt(u + k.eps) / std * g
        u = u * k.rho + k.one_minus_rho * delta * delta
        return p + (-k.lr) * delta, (v, u)


def adadelta(
    lr: float | Schedule = 1.0,
    *,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float | Schedule = 0.0,
    maximize: bool = False,
) -> Adadelta:
    """Adadelta as torch.optim.Adadelta (and optax.adadelta): steps of RMS[dx] / RMS[g] * g.

    Arguments -> spec symbols: lr -> eta, rho -> rho, eps -> epsilon, weight_decay -> lambda.
    `lr` and `weight_decay` take a number or a schedule. PyTorch, optax and Keras compute the same
    formula; Keras' defaults differ (lr 1e-3, rho 0.95, eps 1e-7: variant `keras_defaults`).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.adadelta()
    >>> params = [np.array([1.0])]
    >>> state = opt.init(params)
    >>> opt.update_(params, [np.array([1.0])], state)   # first step: sqrt(eps / (0.1 + eps))
    >>> np.round(1.0 - params[0], 8)
    array([0.00316226])
    """
    return Adadelta(lr, rho, eps, weight_decay, maximize)
