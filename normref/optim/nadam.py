"""NAdam (Dozat, 2016): Adam with Nesterov momentum and a momentum schedule, in PyTorch's exact
arithmetic order. Spec: specs/nadam.md.

For each parameter p with gradient g, at update t = step + 1 (scheduled hyperparameters are read
at the 0-based `step`)::

    mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))        the momentum schedule
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    prod_t = mu_1 * mu_2 * ... * mu_t;  prod_next = prod_t * mu_next

    g = -g                                   if maximize
    p = p * (1 - lr * weight_decay)          if decoupled_weight_decay, if weight_decay != 0
    g = g + weight_decay * p                 otherwise (L2), if weight_decay != 0
    m = m + (1 - b1) * (g - m)               (PyTorch's lerp)
    v = v * b2 + (1 - b2) * g * g
    denom = sqrt(v / (1 - b2**t)) + eps
    p = p + (-lr * (1 - mu_t) / (1 - prod_t)) * g / denom
    p = p + (-lr * mu_next / (1 - prod_next)) * m / denom
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from normref import _checks
from normref.optim.adam import _adam_hyperparameters, _adam_moments
from normref.optim.base import Optimizer, PeerVariant, Schedule, peer_variant, register_state

__all__ = ["NAdamState", "nadam", "nadam_variant", "VARIANTS"]


@register_state
class NAdamState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far; the next update is t = step + 1
    mu: Any  # like params, accumulation dtype: first moment m, moving average of g
    nu: Any  # like params, accumulation dtype: second moment v, moving average of g * g


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    lr: float
    one_minus_b1: float
    b2: float
    one_minus_b2: float
    eps: float
    weight_decay: float
    decay: float  # 1 - lr * weight_decay: the decoupled shrink factor
    bc1: float  # 1 - b1**t (the variants' plain bias correction)
    bc1_next: float  # 1 - b1**(t+1)
    bc2: float  # 1 - b2**t
    b1: float
    grad_coef: float  # -lr * (1 - mu_t) / (1 - prod_t): the weight of the current gradient
    mu_coef: float  # -lr * mu_next / (1 - prod_next): the weight of the first moment
    decoupled: bool
    maximize: bool


# Dozat's schedule: mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)); PyTorch's
# momentum_decay = 0.004 is Dozat's t / 250.
_SCHEDULE_BASE = 0.96


class NAdam(Optimizer):
    name = "nadam"
    kernel = "nadam"
    state_type = NAdamState

    def __init__(
        self,
        lr: float | Schedule,
        betas: tuple[float | Schedule, float | Schedule],
        eps: float,
        weight_decay: float | Schedule,
        momentum_decay: float,
        decoupled_weight_decay: bool,
        maximize: bool,
    ) -> None:
        op = self.name
        given = _adam_hyperparameters(self, lr, betas, eps, weight_decay)
        self.momentum_decay = _checks.nonnegative(op, "momentum_decay", momentum_decay)
        self.decoupled = _checks.flag(op, "decoupled_weight_decay", decoupled_weight_decay)
        self.maximize = _checks.flag(op, "maximize", maximize)
        # (t, prod_t) of the last update: the product of the schedule is a function of the step
        # alone, extended by one multiplication per step as PyTorch accumulates it; a cache, so
        # the results never depend on it (a jump back recomputes from t = 0)
        self._product = (0, 1.0)
        super().__init__(
            given
            | dict(
                momentum_decay=momentum_decay,
                decoupled_weight_decay=decoupled_weight_decay,
                maximize=maximize,
            )
        )

    def _mu(self, t: int, b1: float) -> float:
        """mu_t of the momentum schedule (t 1-based)."""
        return b1 * (1.0 - 0.5 * _SCHEDULE_BASE ** (t * self.momentum_decay))

    def _prod(self, t: int) -> float:
        """mu_1 * ... * mu_t, multiplied left to right in double precision (PyTorch's running
        `mu_product` when its default dtype is float64), each mu_i with b1 read at step i - 1."""
        done, product = self._product
        if done > t:
            done, product = 0, 1.0
        for i in range(done + 1, t + 1):
            product *= self._mu(i, self.b1.at(i - 1))
        self._product = (t, product)
        return product

    def _slots(self) -> tuple[bool, ...]:
        return (True, True)

    def _coefficients(self, step: int) -> _Coefficients:
        t = step + 1
        lr, b1, b2 = self.lr.at(step), self.b1.at(step), self.b2.at(step)
        weight_decay = self.weight_decay.at(step)
        mu_t = self._mu(t, b1)
        mu_next = self._mu(t + 1, b1)  # PyTorch uses this step's b1 for mu_next too
        prod_t = self._prod(t)
        prod_next = prod_t * mu_next
        return _Coefficients(
            lr=lr,
            one_minus_b1=1 - b1,
            b2=b2,
            one_minus_b2=1 - b2,
            eps=self.eps,
            weight_decay=weight_decay,
            decay=1 - lr * weight_decay,
            bc1=1 - b1**t,
            bc1_next=1 - b1 ** (t + 1),
            bc2=1 - b2**t,
            b1=b1,
            grad_coef=-lr * (1.0 - mu_t) / (1.0 - prod_t),
            mu_coef=(-lr * mu_next) / (1.0 - prod_next),
            decoupled=self.decoupled,
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        p, g, mu, nu = _adam_moments(p, g, *slots, k)
        denom = xp.sqrt(nu / k.bc2) + k.eps
        # two addcdiv's, in PyTorch's order: the gradient's share first, then the moment's
        p = p + k.grad_coef * g / denom
        p = p + k.mu_coef * mu / denom
        return p, (mu, nu)


def nadam(
    lr: float | Schedule = 2e-3,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> NAdam:
    """NAdam as torch.optim.NAdam: Adam whose step mixes the current gradient and the first
    moment with Nesterov's look-ahead weights, under Dozat's momentum schedule
    mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)).

    Arguments -> spec symbols: lr -> eta, betas -> (beta1, beta2), eps -> epsilon,
    weight_decay -> lambda, momentum_decay -> psi. `lr`, `betas` and `weight_decay` take a number
    or a schedule `step -> value`. `decoupled_weight_decay=True` is PyTorch's NAdamW form,
    p = p * (1 - lr * weight_decay) before the step. Keras' schedule is 0.96 ** t
    (momentum_decay = 1, variant `keras_momentum_schedule`); optax's nadam has no schedule at all
    (variant `optax_nesterov`).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.nadam(0.1)
    >>> params = {"w": np.array([1.0])}
    >>> params, state = opt.update(params, {"w": np.array([2.0])}, opt.init(params))
    >>> np.round(params["w"], 4)   # lr for the gradient's share, plus the momentum's look-ahead
    array([0.8944])
    """
    return NAdam(lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/nadam.md, Conventions of peers).
# `keras_momentum_schedule` is nadam(momentum_decay=1.0) itself (an override in the registry).

VARIANTS = {
    "keras_momentum_schedule": "Keras 3's schedule mu_t = b1 * (1 - 0.5 * 0.96 ** t): the "
    "reference with momentum_decay = 1",
    "optax_nesterov": "no momentum schedule (optax nadam = adam(nesterov=True)): "
    "p = p - lr * (b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)) / "
    "(sqrt(v / (1 - b2**t)) + eps)",
    "float32_schedule_product": "PyTorch under its default float32 dtype: the schedule's "
    "running product is a float32 scalar, prod_t = float32(prod_{t-1} * float32(mu_t)), the rest "
    "in the params' precision",
}


class _NAdamVariant(PeerVariant, NAdam):
    def __init__(self, variant: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(variant, *args, **kwargs)
        self._product32 = (0, np.float32(1.0))

    def _prod(self, t: int) -> float:
        if self.variant != "float32_schedule_product":
            return super()._prod(t)
        # torch keeps mu_product in torch.get_default_dtype(); `mu_product *= mu` multiplies two
        # float32 values in float32 (the Python float is cast first), then `.item()` reads it back
        done, product = self._product32
        if done > t:
            done, product = 0, np.float32(1.0)
        for i in range(done + 1, t + 1):
            product = product * np.float32(self._mu(i, self.b1.at(i - 1)))
        self._product32 = (t, product)
        return float(product)

    def _math(self, xp, p, g, slots, k):
        if self.variant == "float32_schedule_product":
            return super()._math(xp, p, g, slots, k)
        # optax_nesterov (optax/_src/transform.py::scale_by_adam with nesterov=True)
        p, g, mu, nu = _adam_moments(p, g, *slots, k)
        mu_hat = k.b1 * (mu / k.bc1_next) + k.one_minus_b1 * (g / k.bc1)
        nu_hat = nu / k.bc2
        return p - k.lr * (mu_hat / (xp.sqrt(nu_hat) + k.eps)), (mu, nu)


def nadam_variant(variant: str, **hyperparams: Any) -> NAdam:
    """An optimizer computing NAdam under a peer's convention `variant` (one of VARIANTS), with
    nadam's hyperparameters and contract; for diagnosing which convention a target follows."""
    if variant == "keras_momentum_schedule":
        return nadam(**{**hyperparams, "momentum_decay": 1.0})
    return peer_variant("nadam", variant, VARIANTS, nadam, hyperparams, _NAdamVariant)
