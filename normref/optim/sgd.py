"""Stochastic gradient descent with momentum, PyTorch's exact update. Spec: specs/sgd.md.

For each parameter p with gradient g, at the update that follows `step` updates (0-based)::

    g = -g                              if maximize
    g = g + weight_decay * p            if weight_decay != 0       (L2, coupled)
    b = g                               if momentum != 0 and step == 0
    b = momentum * b + (1 - dampening) * g    if momentum != 0 and step > 0
    g = g + momentum * b                if nesterov, else g = b    (when momentum != 0)
    p = p - lr * g

The momentum buffer starts as the first gradient itself, without dampening (PyTorch; optax's
`trace` starts from zeros, which gives the same first buffer only when dampening is 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.base import Hyper, Optimizer, Schedule, l2_gradient, register_state

__all__ = ["SGDState", "sgd", "sgd_variant"]

_NAME = "sgd"


@register_state
class SGDState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far
    momentum_buffer: Any  # like params, accumulation dtype: b; None when momentum is 0


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    first: bool  # the first update: the buffer starts as the gradient
    lr: float
    momentum: float
    one_minus_dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool


class SGD(Optimizer):
    name = _NAME
    kernel = "sgd"
    state_type = SGDState

    def __init__(
        self,
        lr: float | Schedule,
        momentum: float | Schedule,
        dampening: float,
        weight_decay: float | Schedule,
        nesterov: bool,
        maximize: bool,
    ) -> None:
        op = self.name
        self.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
        self.momentum = Hyper.of(op, "momentum", momentum, _checks.nonnegative)
        self.dampening = _checks.unit_interval(op, "dampening", dampening)
        self.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
        self.nesterov = _checks.flag(op, "nesterov", nesterov)
        self.maximize = _checks.flag(op, "maximize", maximize)
        if self.nesterov and (self.dampening != 0 or self.momentum.value == 0):
            raise ValueError(
                f"{op}: nesterov=True needs momentum > 0 and dampening == 0 (as PyTorch), got "
                f"momentum={momentum!r}, dampening={dampening!r}"
            )
        super().__init__(
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            )
        )

    def _slots(self) -> tuple[bool, ...]:
        # a scheduled momentum may become non-zero later, so it keeps a buffer from the start
        return (self.momentum.scheduled or self.momentum.value != 0,)

    def _coefficients(self, step: int) -> _Coefficients:
        return _Coefficients(
            first=step == 0,
            lr=self.lr.at(step),
            momentum=self.momentum.at(step),
            one_minus_dampening=1 - self.dampening,
            weight_decay=self.weight_decay.at(step),
            nesterov=self.nesterov,
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        (buf,) = slots
        g = l2_gradient(p, g, k)
        if buf is not None and k.momentum != 0:
            # the first buffer is a copy of g, never g itself: the new state must own its arrays
            buf = (
                xp.asarray(g, copy=True)
                if k.first
                else buf * k.momentum + k.one_minus_dampening * g
            )
            g = g + k.momentum * buf if k.nesterov else buf
        return p - k.lr * g, (buf,)


def sgd(
    lr: float | Schedule,
    *,
    momentum: float | Schedule = 0.0,
    dampening: float = 0.0,
    weight_decay: float | Schedule = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> SGD:
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (torch.optim.SGD).

    Arguments -> spec symbols: lr -> eta, momentum -> mu, dampening -> tau, weight_decay -> lambda.
    `lr`, `momentum` and `weight_decay` take a number or a schedule `step -> value`, read at the
    0-based index of the update being taken (the first update reads schedule(0), as with PyTorch's
    LambdaLR and optax). `lr` has no default: PyTorch's is 1e-3, Keras' 0.01.

    Warning: Keras (and optax's `sgd` with a schedule) keep lr inside the momentum buffer,
    `v = mu*v - lr*g`; that differs from this update when lr changes between steps
    (variant `keras_lr_inside_momentum`, specs/sgd.md).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.sgd(0.1, momentum=0.9)
    >>> params = {"w": np.array([1.0, -2.0])}
    >>> state = opt.init(params)
    >>> params, state = opt.update(params, {"w": np.array([0.5, 0.5])}, state)
    >>> params["w"]
    array([ 0.95, -2.05])
    """
    return SGD(lr, momentum, dampening, weight_decay, nesterov, maximize)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/sgd.md, Conventions of peers).


class _KerasSGD(SGD):
    """Keras' placement of lr: inside the velocity, v = mu*v - lr*g, p = p + v (Nesterov:
    p = p + mu*v - lr*g). Velocity starts at 0, so its first value is -lr*g, as PyTorch's."""

    kernel = None  # never a fused kernel: those compute the reference formula only

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.dampening != 0:
            raise ValueError(f"{self.name}: the Keras convention has no dampening")

    def _math(self, xp, p, g, slots, k):
        (v,) = slots
        g = l2_gradient(p, g, k)
        if v is None or k.momentum == 0:
            return p - k.lr * g, (v,)
        v = v * k.momentum - g * k.lr
        if k.nesterov:
            return p + (v * k.momentum - g * k.lr), (v,)
        return p + v, (v,)


_VARIANTS = {"keras_lr_inside_momentum": _KerasSGD}


def sgd_variant(variant: str, lr: float | Schedule, **hyperparams: Any) -> SGD:
    """An optimizer computing SGD under a peer's convention `variant` (specs/sgd.md), with sgd's
    hyperparameters and contract; for diagnosing which convention a target follows."""
    if variant not in _VARIANTS:
        raise ValueError(f"sgd: unknown variant {variant!r}; known: {', '.join(_VARIANTS)}")
    reference = sgd(lr, **hyperparams)  # checks the hyperparameters, supplies the defaults
    h = reference.hyperparams
    return _VARIANTS[variant](
        h["lr"], h["momentum"], h["dampening"], h["weight_decay"], h["nesterov"], h["maximize"]
    )
