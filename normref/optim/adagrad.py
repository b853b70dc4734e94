"""Adagrad (Duchi, Hazan & Singer, 2011), the diagonal form, in PyTorch's exact arithmetic order.
Spec: specs/adagrad.md.

For each parameter p with gradient g, at update t = step + 1 (scheduled hyperparameters are read
at the 0-based `step`)::

    g = -g                                   if maximize
    g = g + weight_decay * p                 if weight_decay != 0   (L2)
    clr = lr / (1 + (t - 1) * lr_decay)
    s = s + g * g                            s starts at initial_accumulator_value
    p = p + (-clr) * g / (sqrt(s) + eps)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.base import (
    Hyper,
    Optimizer,
    Params,
    PeerVariant,
    Schedule,
    flatten,
    l2_gradient,
    peer_variant,
    rebuild,
    register_state,
)

__all__ = ["AdagradState", "adagrad", "adagrad_variant", "VARIANTS"]


@register_state
class AdagradState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far
    sum_of_squares: Any  # like params, accumulation dtype: s, the running sum of g * g


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    clr: float  # lr / (1 + (t - 1) * lr_decay)
    eps: float
    weight_decay: float
    maximize: bool


class Adagrad(Optimizer):
    name = "adagrad"
    kernel = "adagrad"
    state_type = AdagradState

    def __init__(
        self,
        lr: float | Schedule,
        lr_decay: float,
        weight_decay: float | Schedule,
        initial_accumulator_value: float,
        eps: float,
        maximize: bool,
    ) -> None:
        op = self.name
        self.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
        self.lr_decay = _checks.nonnegative(op, "lr_decay", lr_decay)
        self.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
        self.initial_accumulator_value = _checks.nonnegative(
            op, "initial_accumulator_value", initial_accumulator_value
        )
        self.eps = _checks.positive(op, "eps", eps)
        self.maximize = _checks.flag(op, "maximize", maximize)
        super().__init__(
            dict(
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                maximize=maximize,
            )
        )

    def init(self, params: Params) -> AdagradState:
        """Step 0 and s = initial_accumulator_value everywhere (zeros + value: exact)."""
        state = super().init(params)
        if self.initial_accumulator_value == 0:
            return state
        _, sums = flatten(self.name, "params", state.sum_of_squares)
        filled = [s + self.initial_accumulator_value for s in sums]
        return state._replace(sum_of_squares=rebuild(params, filled))

    def _slots(self) -> tuple[bool, ...]:
        return (True,)

    def _coefficients(self, step: int) -> _Coefficients:
        # PyTorch: clr = lr / (1 + (step - 1) * lr_decay) with its 1-based step, i.e. our 0-based
        # step; the decay is a hyperbolic schedule built into the optimizer
        return _Coefficients(
            clr=self.lr.at(step) / (1 + step * self.lr_decay),
            eps=self.eps,
            weight_decay=self.weight_decay.at(step),
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        (s,) = slots
        g = l2_gradient(p, g, k)
        s = s + g * g
        std = xp.sqrt(s) + k.eps  # eps outside the root
        return p + (-k.clr) * g / std, (s,)


def adagrad(
    lr: float | Schedule = 1e-2,
    *,
    lr_decay: float = 0.0,
    weight_decay: float | Schedule = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
) -> Adagrad:
    """Adagrad as torch.optim.Adagrad: each element's step is lr / (sqrt(sum of its squared
    gradients) + eps), so often-updated coordinates slow down.

    Arguments -> spec symbols: lr -> eta, lr_decay -> delta, weight_decay -> lambda,
    initial_accumulator_value -> s_0, eps -> epsilon. `lr` and `weight_decay` take a number or a
    schedule. The defaults are PyTorch's (accumulator from 0, eps 1e-10 outside the root); optax
    and Keras start the accumulator at 0.1 and put eps (1e-7) inside the root (variant
    `eps_in_sqrt`, specs/adagrad.md).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.adagrad(0.5)
    >>> params = [np.array([1.0, 1.0])]
    >>> state = opt.init(params)
    >>> opt.update_(params, [np.array([4.0, -0.25])], state)   # g / |g|: a step of lr each
    >>> params[0]
    array([0.5, 1.5])
    """
    return Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/adagrad.md, Conventions of peers).

VARIANTS = {
    "eps_in_sqrt": "eps inside the square root (optax adagrad, Keras Adagrad): "
    "p = p - clr * g / sqrt(s + eps)",
}


class _AdagradVariant(PeerVariant, Adagrad):
    def _math(self, xp, p, g, slots, k):
        (s,) = slots
        g = l2_gradient(p, g, k)
        s = s + g * g
        # eps_in_sqrt: Keras' lr * g / sqrt(s + eps); optax's g * rsqrt(s + eps) (0 where s = 0)
        return p - (k.clr * g) / xp.sqrt(s + k.eps), (s,)


def adagrad_variant(variant: str, **hyperparams: Any) -> Adagrad:
    """An optimizer computing Adagrad under a peer's convention `variant` (one of VARIANTS), with
    adagrad's hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("adagrad", variant, VARIANTS, adagrad, hyperparams, _AdagradVariant)
