"""Gradient clipping transforms and `chain`, which puts them in front of an optimizer.
Spec: specs/clipping.md.

    opt = chain(clip_by_global_norm(1.0), adamw(1e-3))
    state = opt.init(params)
    params, state = opt.update(params, grads, state)      # or opt.update_(params, grads, state)

- clip_by_global_norm (Pascanu et al., 2013), PyTorch's clip_grad_norm_:
  norm = sqrt(sum over every array of sum(g * g)); g = g * min(max_norm / (norm + 1e-6), 1).
- clip_by_value, PyTorch's clip_grad_value_: g = clip(g, -clip_value, clip_value).
- adaptive_grad_clip (Brock et al., 2021), timm's adaptive_clip_grad: per unit (a row of output
  channels), g = g * max(||w||, eps) * clipping / ||g|| where ||g|| > max(||w||, eps) * clipping.

Gradients are never modified in place, not even by `update_`: the transforms return new arrays
and the optimizer's update_ writes only params and state.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp
from normref.optim.base import (
    Checked,
    GradientTransform,
    Optimizer,
    Params,
    params_only,
    register_state,
)

__all__ = [
    "ChainState",
    "chain",
    "clip_by_global_norm",
    "clip_by_value",
    "adaptive_grad_clip",
    "global_norm",
    "clip_by_global_norm_variant",
    "adaptive_grad_clip_variant",
]

# PyTorch's clip_grad_norm_ adds this to the norm before dividing (torch/nn/utils/clip_grad.py).
_TORCH_NORM_EPS = 1e-6
# timm and optax bound the gradient's unit norm below by this before dividing by it.
_AGC_DIV_EPS = 1e-6


def _in_acc(xp: Any, g: Any) -> Any:
    return xp.astype(g, _xp.accumulation_dtype(xp, g.dtype), copy=False)


def global_norm(grads: Params) -> float:
    """sqrt of the sum of squares of every element of every array, computed per array (in the
    accumulation dtype) and combined in double precision, as PyTorch's norm of the per-array
    norms."""
    checked = params_only("global_norm", grads)
    return _global_norm(checked.xp, checked.params)


def _global_norm(xp: Any, grads: list[Any]) -> float:
    norms = []
    for g in grads:
        ga = _in_acc(xp, g)
        norms.append(float(xp.sqrt(xp.sum(ga * ga))))
    # a plain sum of squares, not math.hypot: one NaN array must make the norm NaN, as PyTorch's
    return math.sqrt(sum(n * n for n in norms))


class _GlobalNormClip(GradientTransform):
    name = "clip_by_global_norm"

    def __init__(self, max_norm: float, convention: str) -> None:
        self.max_norm = _checks.positive(self.name, "max_norm", max_norm)
        self.convention = convention
        hyper = {"max_norm": max_norm}
        if convention != "torch":
            hyper["variant"] = convention
        super().__init__(hyper)

    def _transform(self, checked: Checked) -> list[Any]:
        xp = checked.xp
        norm = _global_norm(xp, checked.grads)
        out = []
        if self.convention == "torch":
            scale = self.max_norm / (norm + _TORCH_NORM_EPS)
            if scale > 1.0:  # written so that a NaN scale stays NaN (min() would depend on order)
                scale = 1.0
            for g in checked.grads:
                out.append(xp.astype(_in_acc(xp, g) * scale, g.dtype, copy=False))
            return out
        # optax: untouched below max_norm, else (g / norm) * max_norm, no eps
        for g in checked.grads:
            if norm < self.max_norm:
                out.append(xp.asarray(g, copy=True))
            else:
                clipped = (_in_acc(xp, g) / norm) * self.max_norm
                out.append(xp.astype(clipped, g.dtype, copy=False))
        return out


def clip_by_global_norm(max_norm: float) -> GradientTransform:
    """Scale every gradient by min(max_norm / (norm + 1e-6), 1), norm the global L2 norm of all of
    them together (PyTorch's torch.nn.utils.clip_grad_norm_ with norm_type 2). optax's
    clip_by_global_norm has no 1e-6 and leaves gradients untouched when norm < max_norm (variant
    `optax_no_eps`, specs/clipping.md).

    >>> import numpy as np
    >>> from normref.optim import clip_by_global_norm
    >>> clip = clip_by_global_norm(1.0)
    >>> grads, _ = clip.transform([np.array([3.0, 4.0])], clip.init([np.zeros(2)]))
    >>> np.round(grads[0], 6)
    array([0.6, 0.8])
    """
    return _GlobalNormClip(max_norm, "torch")


class _ValueClip(GradientTransform):
    name = "clip_by_value"

    def __init__(self, clip_value: float) -> None:
        self.clip_value = _checks.positive(self.name, "clip_value", clip_value)
        super().__init__({"clip_value": clip_value})

    def _transform(self, checked: Checked) -> list[Any]:
        xp, c = checked.xp, self.clip_value
        return [
            xp.astype(xp.clip(_in_acc(xp, g), min=-c, max=c), g.dtype, copy=False)
            for g in checked.grads
        ]


def clip_by_value(clip_value: float) -> GradientTransform:
    """Clip every gradient element to [-clip_value, clip_value] (PyTorch's clip_grad_value_,
    optax's clip, Keras' clipvalue). NaN stays NaN."""
    return _ValueClip(clip_value)


def _unit_axes(x: Any, layout: str) -> tuple[int, ...] | None:
    """The axes one unit's norm reduces over (None: the whole array is one unit)."""
    if layout == "torch":
        # timm: output channels first (Linear (out, in), Conv (out, in, kh, kw)); 0-d and 1-d
        # arrays (biases, gains) are one unit
        return None if x.ndim <= 1 else tuple(range(1, x.ndim))
    # optax (JAX's layouts): output channels last, (in, out) or HWIO
    if sum(d != 1 for d in x.shape) <= 1:
        return None
    axes = {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}.get(x.ndim)
    if axes is None:
        raise ValueError(f"adaptive_grad_clip: the optax layout has no units for shape {x.shape}")
    return axes


class _AdaptiveClip(GradientTransform):
    name = "adaptive_grad_clip"
    needs_params = True

    def __init__(self, clipping: float, eps: float, layout: str) -> None:
        self.clipping = _checks.positive(self.name, "clipping", clipping)
        self.eps = _checks.positive(self.name, "eps", eps)
        self.layout = layout
        hyper = {"clipping": clipping, "eps": eps}
        if layout != "torch":
            hyper["variant"] = "optax_layout"
        super().__init__(hyper)

    def _transform(self, checked: Checked) -> list[Any]:
        xp = checked.xp
        out = []
        for p, g in zip(checked.params, checked.grads):
            axes = _unit_axes(p, self.layout)
            pa, ga = _in_acc(xp, p), _in_acc(xp, g)
            p_norm = xp.sqrt(xp.sum(pa * pa, axis=axes, keepdims=True))
            g_norm = xp.sqrt(xp.sum(ga * ga, axis=axes, keepdims=True))
            max_norm = xp.clip(p_norm, min=self.eps) * self.clipping
            clipped = ga * (max_norm / xp.clip(g_norm, min=_AGC_DIV_EPS))
            out.append(xp.astype(xp.where(g_norm < max_norm, ga, clipped), g.dtype, copy=False))
        return out


def adaptive_grad_clip(clipping: float = 0.01, *, eps: float = 1e-3) -> GradientTransform:
    """Adaptive gradient clipping (Brock et al., 2021), as timm's adaptive_clip_grad: for each unit
    i (a row of output channels: dim 0 of a torch weight; a 0-d or 1-d array is one unit),
    max_i = max(||w_i||, eps) * clipping and g_i = g_i * max_i / max(||g_i||, 1e-6) where
    ||g_i|| >= max_i. optax's adaptive_grad_clip takes JAX layouts, output channels last
    (variant `optax_layout`, specs/clipping.md)."""
    return _AdaptiveClip(clipping, eps, "torch")


def clip_by_global_norm_variant(variant: str, max_norm: float) -> GradientTransform:
    """clip_by_global_norm under a peer's convention (specs/clipping.md): `optax_no_eps`."""
    if variant != "optax_no_eps":
        raise ValueError(f"clip_by_global_norm: unknown variant {variant!r}; known: optax_no_eps")
    return _GlobalNormClip(max_norm, "optax_no_eps")


def adaptive_grad_clip_variant(
    variant: str, clipping: float = 0.01, *, eps: float = 1e-3
) -> GradientTransform:
    """adaptive_grad_clip under a peer's convention (specs/clipping.md): `optax_layout`."""
    if variant != "optax_layout":
        raise ValueError(f"adaptive_grad_clip: unknown variant {variant!r}; known: optax_layout")
    return _AdaptiveClip(clipping, eps, "optax")


# ---------------------------------------------------------------------------------------------


@register_state
class ChainState(NamedTuple):
    inner: tuple  # one state per link of the chain, in order


def _copy_into(old: Any, new: Any) -> None:
    """Write the arrays of state `new` into the matching arrays of state `old` (same structure)."""
    if old is None or isinstance(old, (int, float)):
        return
    if isinstance(old, dict):
        for key in old:
            _copy_into(old[key], new[key])
    elif isinstance(old, (list, tuple)):
        for o, n in zip(old, new):
            _copy_into(o, n)
    elif old is not new:
        old[...] = new


class _Links:
    """What the two kinds of chain share: the links, init, and running the transforms."""

    def __init__(self, links: tuple[Any, ...]) -> None:
        self.links = links
        self.name = "chain"
        self.hyperparams = {"links": links}

    def __repr__(self) -> str:
        return f"chain({', '.join(repr(link) for link in self.links)})"

    def init(self, params: Params) -> ChainState:
        return ChainState(tuple(link.init(params) for link in self.links))

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, ChainState) or len(state.inner) != len(self.links):
            got = (
                f"a ChainState of {len(state.inner)} states"
                if isinstance(state, ChainState)
                else type(state).__name__
            )
            raise TypeError(
                f"chain: state must be the ChainState of {len(self.links)} states from init, "
                f"got {got}"
            )

    def _run(self, transforms: tuple[Any, ...], grads: Any, states: tuple, params: Any):
        new_states = []
        for link, s in zip(transforms, states):
            grads, s = link.transform(grads, s, params)
            new_states.append(s)
        return grads, new_states


class Chain(_Links):
    """Gradient transforms followed by one optimizer: the optimizer contract."""

    def update(self, params: Params, grads: Params, state: ChainState):
        self._check_state(state)
        *transforms, optimizer = self.links
        grads, states = self._run(tuple(transforms), grads, state.inner, params)
        params, last = optimizer.update(params, grads, state.inner[-1])
        return params, ChainState(tuple(states) + (last,))

    def update_(self, params: Params, grads: Params, state: ChainState, *, backend=None) -> None:
        self._check_state(state)
        *transforms, optimizer = self.links
        # the transforms are pure; their states are written only once the optimizer has
        # succeeded, so a refused update leaves every array as it was
        grads, states = self._run(tuple(transforms), grads, state.inner, params)
        optimizer.update_(params, grads, state.inner[-1], backend=backend)
        for old, new in zip(state.inner, states):
            _copy_into(old, new)


class TransformChain(_Links, GradientTransform):
    """Gradient transforms only: itself a gradient transform."""

    def transform(self, grads: Params, state: ChainState, params: Params | None = None):
        self._check_state(state)
        grads, states = self._run(self.links, grads, state.inner, params)
        return grads, ChainState(tuple(states))


def chain(*links: Any) -> Chain | TransformChain:
    """Compose gradient transforms, optionally ending with one optimizer.

    chain(t1, ..., tn, opt) is an optimizer (init, update, update_): each update passes the
    gradients through t1..tn in order, then opt updates the params with the result.
    chain(t1, ..., tn) is itself a gradient transform.
    """
    if not links:
        raise ValueError("chain: needs at least one link")
    for i, link in enumerate(links):
        last = i == len(links) - 1
        if isinstance(link, Optimizer) or isinstance(link, Chain):
            if not last:
                raise TypeError(
                    f"chain: only the last link may be an optimizer; link {i} is {link!r}"
                )
        elif not isinstance(link, GradientTransform):
            raise TypeError(
                f"chain: link {i} must be a gradient transform or (last) an optimizer, "
                f"got {type(link).__name__}"
            )
    if isinstance(links[-1], (Optimizer, Chain)):
        return Chain(links)
    return TransformChain(links)
