"""RAdam (Liu et al., 2020): Adam whose adaptive step is switched on, and rectified, only once
the variance of the adaptive learning rate is tractable; in PyTorch's exact arithmetic order.
Spec: specs/radam.md.

For each parameter p with gradient g, at update t = step + 1 (scheduled hyperparameters are read
at the 0-based `step`)::

    rho_inf = 2 / (1 - b2) - 1                       length of the approximated SMA, t -> inf
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)    its length at step t
    rect = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))

    g = -g                                   if maximize
    p = p * (1 - lr * weight_decay)          if decoupled_weight_decay, if weight_decay != 0
    g = g + weight_decay * p                 otherwise (L2), if weight_decay != 0
    m = m + (1 - b1) * (g - m)               (PyTorch's lerp)
    v = v * b2 + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    if rho_t > 5:   p = p - m_hat * lr * (sqrt(1 - b2**t) / (sqrt(v) + eps)) * rect
    else:           p = p - m_hat * lr                  (un-adapted momentum SGD)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref import _checks
from normref.optim.adam import _adam_hyperparameters, _adam_moments
from normref.optim.base import Optimizer, PeerVariant, Schedule, peer_variant, register_state

__all__ = ["RAdamState", "radam", "radam_variant", "VARIANTS"]

# PyTorch rectifies when rho_t > 5 (strict); optax and pytorch_optimizer when rho_t >= 5.
_THRESHOLD = 5.0


@register_state
class RAdamState(NamedTuple):
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
    bc1: float  # 1 - b1**t
    bc2: float  # 1 - b2**t
    bc2_sqrt: float  # bc2 ** 0.5
    rho_t: float
    rect: float | None  # the rectification term when rho_t > 5, else None (no adaptive step)
    rect_at_threshold: float | None  # the same with optax's rho_t >= 5
    decoupled: bool
    maximize: bool


def _rectification(rho_t: float, rho_inf: float) -> float:
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


class RAdam(Optimizer):
    name = "radam"
    kernel = "radam"
    state_type = RAdamState

    def __init__(
        self,
        lr: float | Schedule,
        betas: tuple[float | Schedule, float | Schedule],
        eps: float,
        weight_decay: float | Schedule,
        decoupled_weight_decay: bool,
        maximize: bool,
    ) -> None:
        op = self.name
        given = _adam_hyperparameters(self, lr, betas, eps, weight_decay)
        self.decoupled = _checks.flag(op, "decoupled_weight_decay", decoupled_weight_decay)
        self.maximize = _checks.flag(op, "maximize", maximize)
        super().__init__(
            given | dict(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        )

    def _slots(self) -> tuple[bool, ...]:
        return (True, True)

    def _coefficients(self, step: int) -> _Coefficients:
        t = step + 1
        lr, b1, b2 = self.lr.at(step), self.b1.at(step), self.b2.at(step)
        weight_decay = self.weight_decay.at(step)
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        # Python floats in PyTorch's order (torch/optim/radam.py, _single_tensor_radam)
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * (b2**t) / bc2
        # rho_t <= 4 would make the rectification complex; it is only read above the threshold
        rect = _rectification(rho_t, rho_inf) if rho_t > _THRESHOLD else None
        at = _rectification(rho_t, rho_inf) if rho_t >= _THRESHOLD else None
        return _Coefficients(
            lr=lr,
            one_minus_b1=1 - b1,
            b2=b2,
            one_minus_b2=1 - b2,
            eps=self.eps,
            weight_decay=weight_decay,
            decay=1 - lr * weight_decay,
            bc1=bc1,
            bc2=bc2,
            bc2_sqrt=bc2**0.5,
            rho_t=rho_t,
            rect=rect,
            rect_at_threshold=at,
            decoupled=self.decoupled,
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        p, _, mu, nu = _adam_moments(p, g, *slots, k)
        mu_hat = mu / k.bc1
        if k.rect is None:
            return p - mu_hat * k.lr, (mu, nu)
        # eps is added to the uncorrected sqrt(v), then sqrt(bc2) multiplies ("eps hat")
        adaptive = k.bc2_sqrt / (xp.sqrt(nu) + k.eps)
        return p - mu_hat * k.lr * adaptive * k.rect, (mu, nu)


def radam(
    lr: float | Schedule = 1e-3,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> RAdam:
    """RAdam as torch.optim.RAdam: while rho_t <= 5 (the first 5 steps at b2 = 0.999) the step is
    lr * m_hat, momentum SGD; afterwards Adam's adaptive step times the rectification term.

    Arguments -> spec symbols: lr -> eta, betas -> (beta1, beta2), eps -> epsilon,
    weight_decay -> lambda. `lr`, `betas` and `weight_decay` take a number or a schedule.
    `decoupled_weight_decay=True` decays p = p * (1 - lr * weight_decay) first (RAdamW). eps is
    added to sqrt(v) before its bias correction, as PyTorch; optax adds it to sqrt(v_hat) and
    rectifies from rho_t >= 5 (variant `optax_eps_on_v_hat`); pytorch_optimizer skips the
    un-rectified steps altogether (variant `skip_unrectified`).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.radam(0.1)
    >>> params = [np.array([1.0])]
    >>> state = opt.init(params)
    >>> opt.update_(params, [np.array([2.0])], state)   # t = 1: m_hat = g, plain SGD
    >>> params[0]
    array([0.8])
    """
    return RAdam(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/radam.md, Conventions of peers).

VARIANTS = {
    "optax_eps_on_v_hat": "eps added to the bias-corrected root and rectification from "
    "rho_t >= 5 (optax radam): p = p - lr * rect * m_hat / (sqrt(v_hat) + eps)",
    "skip_unrectified": "no step at all while rho_t < 5 (pytorch_optimizer RAdam, "
    "degenerated_to_sgd=False): the moments accumulate, p stays",
}


class _RAdamVariant(PeerVariant, RAdam):
    def _math(self, xp, p, g, slots, k):
        rect = k.rect_at_threshold  # both peers rectify from rho_t >= 5
        if self.variant == "skip_unrectified" and rect is None:
            # the moments move, the parameter does not (nor does its decoupled decay)
            _, _, mu, nu = _adam_moments(p, g, *slots, k)
            return xp.asarray(p, copy=True), (mu, nu)
        p, _, mu, nu = _adam_moments(p, g, *slots, k)
        mu_hat = mu / k.bc1
        if rect is None:  # optax below the threshold: the bias-corrected momentum
            return p - k.lr * mu_hat, (mu, nu)
        if self.variant == "optax_eps_on_v_hat":
            return p - k.lr * (rect * mu_hat / (xp.sqrt(nu / k.bc2) + k.eps)), (mu, nu)
        adaptive = k.bc2_sqrt / (xp.sqrt(nu) + k.eps)  # skip_unrectified: PyTorch's step
        return p - mu_hat * k.lr * adaptive * rect, (mu, nu)


def radam_variant(variant: str, **hyperparams: Any) -> RAdam:
    """An optimizer computing RAdam under a peer's convention `variant` (one of VARIANTS), with
    radam's hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("radam", variant, VARIANTS, radam, hyperparams, _RAdamVariant)
