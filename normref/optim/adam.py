"""Adam (Kingma & Ba, 2015), AdamW (Loshchilov & Hutter, 2019) and AMSGrad (Reddi et al., 2018),
in PyTorch's exact arithmetic order. Specs: specs/adam.md, specs/adamw.md.

For each parameter p with gradient g, at update t = step + 1 (1-based for the bias corrections;
scheduled hyperparameters are read at the 0-based `step`)::

    g = -g                                   if maximize
    p = p * (1 - lr * weight_decay)          adamw (decoupled), if weight_decay != 0
    g = g + weight_decay * p                 adam (L2), if weight_decay != 0
    mu = mu + (1 - b1) * (g - mu)            (PyTorch's lerp)
    nu = nu * b2 + (1 - b2) * g * g
    nu_max = maximum(nu_max, nu)             amsgrad: the max of the raw second moment
    denom = sqrt(nu or nu_max) / sqrt(1 - b2**t) + eps
    p = p + (-lr / (1 - b1**t)) * mu / denom
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

__all__ = ["AdamState", "adam", "adamw", "adam_variant", "VARIANTS"]


@register_state
class AdamState(NamedTuple):
    step: Any  # () int64 NumPy array: updates taken so far; the next update is t = step + 1
    mu: Any  # like params, accumulation dtype: first moment, moving average of g
    nu: Any  # like params, accumulation dtype: second moment, moving average of g * g
    nu_max: Any  # like params, accumulation dtype: running max of nu (amsgrad); None otherwise


class _Coefficients(NamedTuple):
    """The scalars of one update, shared by every parameter (and by a fused kernel)."""

    lr: float
    one_minus_b1: float  # the lerp weight of the new gradient
    b2: float
    one_minus_b2: float
    eps: float
    weight_decay: float
    decay: float  # 1 - lr * weight_decay: the decoupled shrink factor
    bc1: float  # 1 - b1**t
    bc2: float  # 1 - b2**t
    step_size: float  # lr / bc1
    bc2_sqrt: float  # bc2 ** 0.5
    decoupled: bool
    maximize: bool


def _lerp(start: Any, end: Any, weight: float) -> Any:
    """start + weight * (end - start), as PyTorch's lerp computes it: for weight >= 0.5 it uses
    end - (end - start) * (1 - weight), which is exact at weight 1 (b1 = 0 makes mu = g)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def _adam_hyperparameters(
    opt: Optimizer, lr: Any, betas: Any, eps: Any, weight_decay: Any
) -> dict[str, Any]:
    """Check the hyperparameters every Adam-like optimizer shares and keep them on `opt`: lr and
    weight_decay (numbers >= 0 or schedules), betas (decay rates in [0, 1) or schedules), eps > 0
    (it keeps a denominator off 0). Returns them as given, the start of `opt.hyperparams`."""
    op = opt.name
    opt.lr = Hyper.of(op, "lr", lr, _checks.nonnegative)
    opt.b1, opt.b2 = betas_of(op, betas)
    opt.eps = _checks.positive(op, "eps", eps)
    opt.weight_decay = Hyper.of(op, "weight_decay", weight_decay, _checks.nonnegative)
    return dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _adam_moments(p: Any, g: Any, mu: Any, nu: Any, k: Any) -> tuple[Any, Any, Any, Any]:
    """(p, g, mu, nu) after the steps Adam, NAdam and RAdam share, in PyTorch's order: the sign,
    the weight decay (decoupled: p shrinks; L2: g grows) and the two moments."""
    if k.maximize:
        g = -g
    if k.weight_decay != 0:
        if k.decoupled:
            p = p * k.decay
        else:
            g = g + k.weight_decay * p
    mu = _lerp(mu, g, k.one_minus_b1)
    nu = nu * k.b2 + k.one_minus_b2 * g * g
    return p, g, mu, nu


class Adam(Optimizer):
    kernel = "adam"
    state_type = AdamState

    def __init__(
        self,
        name: str,
        lr: float | Schedule,
        betas: tuple[float | Schedule, float | Schedule],
        eps: float,
        weight_decay: float | Schedule,
        amsgrad: bool,
        maximize: bool,
        decoupled: bool,
    ) -> None:
        self.name = name
        given = _adam_hyperparameters(self, lr, betas, eps, weight_decay)
        self.amsgrad = _checks.flag(name, "amsgrad", amsgrad)
        self.maximize = _checks.flag(name, "maximize", maximize)
        self.decoupled = decoupled
        super().__init__(given | dict(amsgrad=amsgrad, maximize=maximize))

    def _slots(self) -> tuple[bool, ...]:
        return (True, True, self.amsgrad)

    def _coefficients(self, step: int) -> _Coefficients:
        t = step + 1
        lr, b1, b2 = self.lr.at(step), self.b1.at(step), self.b2.at(step)
        weight_decay = self.weight_decay.at(step)
        # Python floats in double precision, in PyTorch's order: a float32 update sees each
        # coefficient rounded once to float32, as PyTorch's kernels do.
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
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
            step_size=lr / bc1,
            bc2_sqrt=bc2**0.5,
            decoupled=self.decoupled,
            maximize=self.maximize,
        )

    def _math(self, xp, p, g, slots, k):
        mu, nu, nu_max = slots
        p, g, mu, nu = _adam_moments(p, g, mu, nu, k)
        if nu_max is not None:
            nu_max = xp.maximum(nu_max, nu)
        denom = xp.sqrt(nu if nu_max is None else nu_max) / k.bc2_sqrt + k.eps
        # (-step_size * mu) / denom, then added: PyTorch's addcdiv order
        return p + (-k.step_size) * mu / denom, (mu, nu, nu_max)


def adam(
    lr: float | Schedule = 1e-3,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
) -> Adam:
    """Adam with L2 weight decay (added to the gradient), as torch.optim.Adam.

    Arguments -> spec symbols: lr -> eta, betas -> (beta1, beta2), eps -> epsilon,
    weight_decay -> lambda. `lr`, `betas` and `weight_decay` take a number or a schedule
    `step -> value` read at the 0-based index of the update being taken (PyTorch's LambdaLR,
    optax); the bias corrections use the 1-based t = step + 1. eps is added to the bias-corrected
    sqrt(nu) (PyTorch, optax); Keras adds its eps (default 1e-7) before the bias correction
    (variant `keras_eps_hat`, specs/adam.md).

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.adam(0.1)
    >>> params = [np.array([1.0, -1.0])]
    >>> state = opt.init(params)
    >>> opt.update_(params, [np.array([3.0, -0.5])], state)   # the first step moves each by ~lr
    >>> np.round(params[0], 6)
    array([ 0.9, -0.9])
    """
    return Adam("adam", lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=False)


def adamw(
    lr: float | Schedule = 1e-3,
    *,
    betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
) -> Adam:
    """AdamW: Adam with decoupled weight decay p = p * (1 - lr * weight_decay), applied before the
    Adam step, as torch.optim.AdamW (whose default weight_decay 1e-2 this keeps; optax's is 1e-4,
    Keras' 4e-3). The paper's form does not multiply the decay by lr (variant `unscaled_decay`,
    specs/adamw.md). Arguments as `adam`.

    >>> import numpy as np, normref.optim as optim
    >>> opt = optim.adamw(0.1, weight_decay=0.5)
    >>> params = {"w": np.array([2.0])}
    >>> params, state = opt.update(params, {"w": np.array([0.0])}, opt.init(params))
    >>> params["w"]   # a zero gradient: only the decay, 2 * (1 - 0.1 * 0.5)
    array([1.9])
    """
    return Adam("adamw", lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=True)


# ---------------------------------------------------------------------------------------------
# Conventions of peers, for the conformance diagnosis (specs/adam.md and specs/adamw.md,
# Conventions of peers): each recomputes a trajectory under one differing convention.

VARIANTS = {
    "unscaled_decay": "decoupled decay not multiplied by lr: p = p - weight_decay * p",
    "l2_vs_decoupled": "the other weight decay: decoupled for adam, L2 for adamw",
    "max_of_bias_corrected": "amsgrad keeps the max of the bias-corrected nu / (1 - b2**t)",
    "eps_root": "eps inside the square root: mu_hat / sqrt(nu_hat + eps)",
    "keras_eps_hat": "eps added before the bias correction: lr*sqrt(bc2)/bc1 * mu/(sqrt(nu)+eps)",
    "no_bias_correction": "no bias correction: p = p - lr * mu / (sqrt(nu) + eps)",
}


class _AdamVariant(PeerVariant, Adam):
    def _math(self, xp, p, g, slots, k):
        mu, nu, nu_max = slots
        variant = self.variant
        if k.maximize:
            g = -g
        decoupled = k.decoupled != (variant == "l2_vs_decoupled")
        if k.weight_decay != 0:
            if variant == "unscaled_decay":
                p = p - k.weight_decay * p
            elif decoupled:
                p = p * k.decay
            else:
                g = g + k.weight_decay * p
        mu = _lerp(mu, g, k.one_minus_b1)
        nu = nu * k.b2 + k.one_minus_b2 * g * g
        if variant == "max_of_bias_corrected":
            # the running max is taken over the bias-corrected nu, which is then used as is
            if nu_max is not None:
                nu_max = xp.maximum(nu_max, nu / k.bc2)
            nu_hat = nu / k.bc2 if nu_max is None else nu_max
            p = p - k.lr * (mu / k.bc1) / (xp.sqrt(nu_hat) + k.eps)
            return p, (mu, nu, nu_max)
        if nu_max is not None:
            nu_max = xp.maximum(nu_max, nu)
        v = nu if nu_max is None else nu_max
        if variant == "eps_root":
            p = p - k.lr * (mu / k.bc1) / xp.sqrt(v / k.bc2 + k.eps)
        elif variant == "keras_eps_hat":
            alpha = k.lr * k.bc2_sqrt / k.bc1
            p = p - (mu * alpha) / (xp.sqrt(v) + k.eps)
        elif variant == "no_bias_correction":
            p = p - k.lr * mu / (xp.sqrt(v) + k.eps)
        else:  # the weight-decay variants: the rest is the reference's arithmetic
            p = p + (-k.step_size) * mu / (xp.sqrt(v) / k.bc2_sqrt + k.eps)
        return p, (mu, nu, nu_max)


def adam_variant(variant: str, *, decoupled: bool = False, **hyperparams: Any) -> Adam:
    """An optimizer computing Adam (decoupled=False) or AdamW (decoupled=True) under a peer's
    convention `variant` (one of VARIANTS), with the same hyperparameters and contract."""
    factory = adamw if decoupled else adam
    return peer_variant(
        "adam",
        variant,
        VARIANTS,
        factory,
        hyperparams,
        _AdamVariant,
        factory.__name__,
        decoupled=decoupled,
    )
