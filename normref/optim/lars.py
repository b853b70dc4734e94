"""LARS (You, Gitman & Ginsburg, 2017): momentum SGD whose learning rate is scaled per tensor by
a trust ratio, the paper's Algorithm 1 with the trust coefficient of its equation (6).
Spec: specs/lars.md.

For each parameter tensor p with gradient g (scheduled hyperparameters are read at the 0-based
step; wd is weight_decay where the tensor decays, else 0)::

    ratio = trust_coefficient * ||p|| / (||g|| + wd * ||p|| + eps)     where the ratio applies;
          = 1 if ||p|| == 0 or ||g|| == 0, or where the ratio does not apply
    d = g + wd * p
    s = (lr * ratio) * d
    b = momentum * b + s                  b starts at 0: lr sits inside the buffer (the paper)
    p = p - b                             (nesterov: p = p - (s + momentum * b))

||.|| is the L2 norm of the whole tensor: that is what makes the rate layer-wise, and why this
update is not elementwise (a fused kernel needs the two norms first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from normref import _checks
from normref.optim.base import (
    Checked,
    Hyper,
    Optimizer,
    Params,
    PeerVariant,
    Schedule,
    _matched,
    params_only,
    peer_variant,
    register_state,
)

__all__ = ["LarsState", "lars", "lars_variant", "parameter_mask", "Mask", "Masked", "VARIANTS"]

# True (every tensor), a container of booleans shaped like params, or a predicate on one tensor
# (e.g. `lambda p: p.ndim > 1`, which leaves biases and normalization gains out)
Mask = bool | Params | Callable[[Any], bool]


def parameter_mask(op: str, name: str, mask: Any, checked: Checked) -> list[bool]:
    """One boolean per parameter, in the params' order, from `mask` (see `Mask`)."""
    n = len(checked.params)
    if isinstance(mask, bool):
        return [mask] * n
    keys = checked.keys if checked.keys is not None else range(n)
    if callable(mask):
        return [
            _checks.flag(op, f"{name}(params[{key!r}])", mask(p))
            for key, p in zip(keys, checked.params)
        ]
    values = _matched(op, name, mask, checked.keys, n)
    return [_checks.flag(op, f"{name}[{key!r}]", v) for key, v in zip(keys, values)]


def check_mask(op: str, name: str, mask: Any) -> Any:
    """A mask argument must be a bool, a callable, or a dict/list/tuple (matched at update)."""
    if isinstance(mask, (bool, dict, list, tuple)) or callable(mask):
        return mask
    raise TypeError(
        f"{op}: {name} must be True/False, a container of booleans like params or a predicate "
        f"on one parameter, got {type(mask).__name__}"
    )


def norm(xp: Any, x: Any) -> Any:
    """The L2 norm of a whole tensor, a 0-d array of x's dtype."""
    return xp.sqrt(xp.sum(x * x))


def safe_ratio(xp: Any, numerator: Any, denominator: Any, p_norm: Any, u_norm: Any) -> Any:
    """numerator / denominator, or 1 where either norm is 0 (a zero tensor, or a zero update, is
    left to the plain step instead of being frozen or divided by 0)."""
    one = xp.ones_like(numerator)
    zero = xp.logical_or(p_norm == 0, u_norm == 0)
    return xp.where(zero, one, numerator / xp.where(zero, one, denominator))


class Masked(Optimizer):
    """An optimizer with per-tensor masks, `weight_decay_mask` and `trust_ratio_mask` (LARS,
    LAMB): each parameter's coefficients carry its own `decay` and `trust` flags."""

    def init(self, params: Params) -> Any:
        # the masks are matched against params here too, so that a wrong one fails at once
        self._per_parameter(params_only(self.name, params), None)
        return super().init(params)

    def _per_parameter(self, checked: Checked, k: Any) -> list[Any]:
        decays = parameter_mask(self.name, "weight_decay_mask", self.weight_decay_mask, checked)
        trusts = parameter_mask(self.name, "trust_ratio_mask", self.trust_ratio_mask, checked)
        if k is None:
            return []
        return [k._replace(decay=d, trust=t) for d, t in zip(decays, trusts)]


@register_state
class LarsState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far
    momentum_buffer: Any  # like params, accumulation dtype: b; None when momentum is 0


class _Coefficients(NamedTuple):
    """The scalars of one update; `trust` and `decay` are set per tensor by the masks."""

    lr: float
    momentum: float
    weight_decay: float
    trust_coefficient: float
    eps: float
    nesterov: bool
    trust: bool = True  # this tensor's step is scaled by the trust ratio
    decay: bool = True  # this tensor decays


class Lars(Masked):
    name = "lars"
    kernel = "lars"
    state_type = LarsState

    def __init__(
        self,
        lr: float | Schedule,
        momentum: float | Schedule,
        weight_decay: float | Schedule,
        trust_coefficient: float,
        eps: float,
        nesterov: bool,
        weight_decay_mask: Mask,
        trust_ratio_mask: Mask,
    ) -> None:
        op = self.name
        self.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
        self.momentum = Hyper.of(op, "momentum", momentum, _checks.nonnegative)
        self.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
        self.trust_coefficient = _checks.positive(op, "trust_coefficient", trust_coefficient)
        # eps may be 0 (the paper, optax, flax): zero norms are handled without dividing
        self.eps = _checks.nonnegative(op, "eps", eps)
        self.nesterov = _checks.flag(op, "nesterov", nesterov)
        if self.nesterov and self.momentum.value == 0:
            raise ValueError(f"{op}: nesterov=True needs momentum > 0, got momentum={momentum!r}")
        self.weight_decay_mask = check_mask(op, "weight_decay_mask", weight_decay_mask)
        self.trust_ratio_mask = check_mask(op, "trust_ratio_mask", trust_ratio_mask)
        super().__init__(
            dict(
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                trust_coefficient=trust_coefficient,
                eps=eps,
                nesterov=nesterov,
                weight_decay_mask=weight_decay_mask,
                trust_ratio_mask=trust_ratio_mask,
            )
        )

    def _slots(self) -> tuple[bool, ...]:
        return (self.momentum.scheduled or self.momentum.value != 0,)

    def _coefficients(self, step: int) -> _Coefficients:
        return _Coefficients(
            lr=self.lr.at(step),
            momentum=self.momentum.at(step),
            weight_decay=self.weight_decay.at(step),
            trust_coefficient=self.trust_coefficient,
            eps=self.eps,
            nesterov=self.nesterov,
        )

    def _ratio(self, xp, p, g, d, wd, k):
        """The trust ratio of this tensor (the paper's local learning rate, over lr)."""
        p_norm, g_norm = norm(xp, p), norm(xp, g)
        numerator = k.trust_coefficient * p_norm
        return safe_ratio(xp, numerator, g_norm + wd * p_norm + k.eps, p_norm, g_norm)

    def _math(self, xp, p, g, slots, k):
        (buf,) = slots
        wd = k.weight_decay if k.decay else 0.0
        d = g + wd * p if wd != 0 else g
        scaled_lr = k.lr * self._ratio(xp, p, g, d, wd, k) if k.trust else k.lr
        s = scaled_lr * d
        if buf is None or k.momentum == 0:
            return p - s, (buf,)
        buf = k.momentum * buf + s
        if k.nesterov:
            return p - (s + k.momentum * buf), (buf,)
        return p - buf, (buf,)


def lars(
    lr: float | Schedule,
    *,
    momentum: float | Schedule = 0.9,
    weight_decay: float | Schedule = 0.0,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    nesterov: bool = False,
    weight_decay_mask: Mask = True,
    trust_ratio_mask: Mask = True,
) -> Lars:
    """LARS: momentum SGD with the layer-wise rate lr * trust_coefficient * ||p|| /
    (||g|| + weight_decay * ||p|| + eps) (1 where either norm is 0), lr inside the momentum
    buffer as in the paper's Algorithm 1 (and flax.optim.LARS, optax.lars).

    Arguments -> spec symbols: lr -> gamma, momentum -> m, weight_decay -> beta,
    trust_coefficient -> eta, eps -> epsilon. `lr`, `momentum` and `weight_decay` take a number or
    a schedule. The masks choose the tensors that decay and the tensors whose rate is scaled:
    True (all), a container of booleans like params, or a predicate on one tensor; practice
    leaves biases and normalization gains out of both, e.g.
    `trust_ratio_mask=lambda p: p.ndim > 1`. optax's ratio divides by ||g + weight_decay * p||
    (variant `optax_trust_ratio`), specs/lars.md.

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.lars(1.0, momentum=0.0, trust_coefficient=0.1)
    >>> params = [np.array([3.0, 4.0])]                  # ||p|| = 5
    >>> params, _ = opt.update(params, [np.array([0.0, 2.0])], opt.init(params))
    >>> params[0]                                        # ratio 0.1 * 5 / 2 = 0.25
    array([3. , 3.5])
    """
    return Lars(
        lr,
        momentum,
        weight_decay,
        trust_coefficient,
        eps,
        nesterov,
        weight_decay_mask,
        trust_ratio_mask,
    )


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/lars.md, Conventions of peers).

VARIANTS = {
    "optax_trust_ratio": "the ratio's denominator is the norm of the decayed gradient (optax "
    "lars): trust_coefficient * ||p|| / (||g + wd * p|| + eps)",
    "gradient_only_ratio": "the ratio ignores weight decay and eps (pytorch_optimizer LARS): "
    "trust_coefficient * ||p|| / ||g||",
    "lr_outside_momentum": "lr multiplied after the momentum (pytorch_optimizer LARS, torch "
    "SGD-style ports): b = momentum * b + ratio * d; p = p - lr * b",
}


class _LarsVariant(PeerVariant, Lars):
    def _ratio(self, xp, p, g, d, wd, k):
        p_norm = norm(xp, p)
        if self.variant == "optax_trust_ratio":
            d_norm = norm(xp, d)
            return safe_ratio(xp, k.trust_coefficient * p_norm, d_norm + k.eps, p_norm, d_norm)
        if self.variant == "gradient_only_ratio":
            g_norm = norm(xp, g)
            return safe_ratio(xp, k.trust_coefficient * p_norm, g_norm, p_norm, g_norm)
        return super()._ratio(xp, p, g, d, wd, k)

    def _math(self, xp, p, g, slots, k):
        if self.variant != "lr_outside_momentum":
            return super()._math(xp, p, g, slots, k)
        (buf,) = slots
        wd = k.weight_decay if k.decay else 0.0
        d = g + wd * p if wd != 0 else g
        u = self._ratio(xp, p, g, d, wd, k) * d if k.trust else d
        if buf is None or k.momentum == 0:
            return p - k.lr * u, (buf,)
        buf = k.momentum * buf + u
        return p - k.lr * (u + k.momentum * buf if k.nesterov else buf), (buf,)


def lars_variant(variant: str, lr: float | Schedule, **hyperparams: Any) -> Lars:
    """An optimizer computing LARS under a peer's convention `variant` (one of VARIANTS), with
    lars' hyperparameters and contract; for diagnosing which convention a target follows."""
    return peer_variant("lars", variant, VARIANTS, lars, {"lr": lr, **hyperparams}, _LarsVariant)
