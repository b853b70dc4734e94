"""LAMB (You et al., 2020, Algorithm 2): Adam's bias-corrected step plus weight decay, rescaled
per tensor by the trust ratio ||p|| / ||r||. Spec: specs/lamb.md.

For each parameter tensor p with gradient g, at update t = step + 1 (scheduled hyperparameters
are read at the 0-based `step`; wd is weight_decay where the tensor decays, else 0)::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g)
    r = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    r = r + wd * p
    ratio = ||p|| / ||r||                 where the ratio applies; 1 if either norm is 0
    p = p - lr * (r * ratio)

The paper's scaling function phi is the identity here (as in optax and Keras); ||.|| is the L2
norm of the whole tensor, so this update is not elementwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normref.optim.adam import _adam_hyperparameters
from normref.optim.base import PeerVariant, Schedule, peer_variant, register_state
from normref.optim.lars import Mask, Masked, check_mask, norm, safe_ratio

__all__ = ["LambState", "lamb", "lamb_variant", "VARIANTS"]

# pytorch_optimizer's Lamb clamps ||p|| to at most this (its class attribute `clamp`)
_PYTORCH_OPTIMIZER_CLAMP = 10.0


@register_state
class LambState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far; the next update is t = step + 1
    mu: Any  # like params, accumulation dtype: first moment m
    nu: Any  # like params, accumulation dtype: second moment v


class _Coefficients(NamedTuple):
    """The scalars of one update; `trust` and `decay` are set per tensor by the masks."""

    lr: float
    b1: float
    one_minus_b1: float
    b2: float
    one_minus_b2: float
    eps: float
    weight_decay: float
    bc1: float  # 1 - b1**t
    bc2: float  # 1 - b2**t
    trust: bool = True
    decay: bool = True


class Lamb(Masked):
    name = "lamb"
    kernel = "lamb"
    state_type = LambState

    def __init__(
        self,
        lr: float | Schedule,
        betas: tuple[float | Schedule, float | Schedule],
        eps: float,
        weight_decay: float | Schedule,
        weight_decay_mask: Mask,
        trust_ratio_mask: Mask,
    ) -> None:
        op = self.name
        given = _adam_hyperparameters(self, lr, betas, eps, weight_decay)
        self.weight_decay_mask = check_mask(op, "weight_decay_mask", weight_decay_mask)
        self.trust_ratio_mask = check_mask(op, "trust_ratio_mask", trust_ratio_mask)
        super().__init__(
            given | dict(weight_decay_mask=weight_decay_mask, trust_ratio_mask=trust_ratio_mask)
        )

    def _slots(self) -> tuple[bool, ...]:
        return (True, True)

    def _coefficients(self, step: int) -> _Coefficients:
        t = step + 1
        b1, b2 = self.b1.at(step), self.b2.at(step)
        return _Coefficients(
            lr=self.lr.at(step),
            b1=b1,
            one_minus_b1=1 - b1,
            b2=b2,
            one_minus_b2=1 - b2,
            eps=self.eps,
            weight_decay=self.weight_decay.at(step),
            bc1=1 - b1**t,
            bc2=1 - b2**t,
        )

    def _moments(self, g, slots, k):
        mu, nu = slots
        mu = k.b1 * mu + k.one_minus_b1 * g
        nu = k.b2 * nu + k.one_minus_b2 * (g * g)
        return mu, nu

    def _math(self, xp, p, g, slots, k):
        mu, nu = self._moments(g, slots, k)
        r = (mu / k.bc1) / (xp.sqrt(nu / k.bc2) + k.eps)
        wd = k.weight_decay if k.decay else 0.0
        if wd != 0:
            r = r + wd * p
        if not k.trust:
            return p - k.lr * r, (mu, nu)
        p_norm, r_norm = norm(xp, p), norm(xp, r)
        ratio = safe_ratio(xp, p_norm, r_norm, p_norm, r_norm)
        return p - k.lr * (r * ratio), (mu, nu)


def lamb(
    lr: float | Schedule = 1e-3,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float | Schedule = 0.0,
    weight_decay_mask: Mask = True,
    trust_ratio_mask: Mask = True,
) -> Lamb:
    """LAMB as the paper's Algorithm 2 with phi(z) = z, which is optax.lamb: the Adam direction
    plus weight_decay * p, scaled per tensor so that its norm is ||p|| before lr multiplies it.

    Arguments -> spec symbols: lr -> eta, betas -> (beta1, beta2), eps -> epsilon,
    weight_decay -> lambda. `lr`, `betas` and `weight_decay` take a number or a schedule. The
    masks choose the tensors that decay and the tensors whose step is scaled by the ratio (True,
    a container of booleans like params, or a predicate on one tensor; BERT's recipe leaves
    biases and LayerNorm gains out). Keras and pytorch_optimizer decay outside the ratio
    (variant `decay_outside_ratio`); pytorch_optimizer also skips the second bias correction and
    clamps ||p|| at 10 (variant `pytorch_optimizer`), specs/lamb.md.

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.lamb(0.1)
    >>> params = [np.array([3.0, 4.0])]                  # ||p|| = 5
    >>> params, _ = opt.update(params, [np.array([1.0, 1.0])], opt.init(params))
    >>> np.round(params[0], 4)                           # r ~ (1, 1): a step of lr * 5 along r
    array([2.6464, 3.6464])
    """
    return Lamb(lr, betas, eps, weight_decay, weight_decay_mask, trust_ratio_mask)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/lamb.md, Conventions of peers).

VARIANTS = {
    "decay_outside_ratio": "decoupled, lr-scaled decay applied first and kept out of the ratio "
    "(Keras 3 Lamb): p = p * (1 - lr * wd); r = m_hat / (sqrt(v_hat) + eps); "
    "p = p - lr * r * ||p|| / ||r||",
    "no_bias_correction": "neither moment bias-corrected: r = m / (sqrt(v) + eps) + wd * p",
    "clamped_weight_norm": "the paper's phi clamp with pytorch_optimizer's bound: "
    "ratio = min(||p||, 10) / ||r||",
    "pytorch_optimizer": "pytorch_optimizer Lamb's defaults: p = p * (1 - lr * wd) first; "
    "u = m / (sqrt(v) + eps) (v not corrected); ratio = min(||p||, 10) / (||u|| + eps); "
    "p = p - lr / (1 - b1**t) * ratio * u",
}


class _LambVariant(PeerVariant, Lamb):
    def _math(self, xp, p, g, slots, k):
        variant = self.variant
        mu, nu = self._moments(g, slots, k)
        wd = k.weight_decay if k.decay else 0.0
        if variant in ("decay_outside_ratio", "pytorch_optimizer") and wd != 0:
            p = p * (1 - k.lr * wd)
            wd = 0.0  # already applied, outside the ratio
        if variant == "no_bias_correction":
            r = mu / (xp.sqrt(nu) + k.eps)
        elif variant == "pytorch_optimizer":
            r = mu / (xp.sqrt(nu) + k.eps)  # the 1 / bc1 goes into the step size below
        else:
            r = (mu / k.bc1) / (xp.sqrt(nu / k.bc2) + k.eps)
        if wd != 0:
            r = r + wd * p
        step_size = k.lr / k.bc1 if variant == "pytorch_optimizer" else k.lr
        if not k.trust:
            return p - step_size * r, (mu, nu)
        p_norm, r_norm = norm(xp, p), norm(xp, r)
        if variant in ("clamped_weight_norm", "pytorch_optimizer"):
            phi = xp.minimum(p_norm, xp.full_like(p_norm, _PYTORCH_OPTIMIZER_CLAMP))
        else:
            phi = p_norm
        denominator = r_norm + k.eps if variant == "pytorch_optimizer" else r_norm
        ratio = safe_ratio(xp, phi, denominator, p_norm, r_norm)
        return p - step_size * (r * ratio), (mu, nu)


def lamb_variant(variant: str, **hyperparams: Any) -> Lamb:
    """An optimizer computing LAMB under a peer's convention `variant` (one of VARIANTS), with
    lamb's hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("lamb", variant, VARIANTS, lamb, hyperparams, _LambVariant)
