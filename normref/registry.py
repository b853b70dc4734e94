"""Every op normref defines, with the metadata the dispatcher, golden cases, verify and the spec
tests read (design.md §3). Adding an op means adding one entry to `OPS` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from normref.norms import layer_norm as _layer_norm
from normref.norms import rms_norm as _rms_norm

__all__ = ["Case", "Kernels", "OpInfo", "Variant", "OPS", "get", "vjp"]


@dataclass(frozen=True)
class Kernels:
    """The fast kernels one backend has for an op: the module holding `<op>_forward` and
    `<op>_backward` (docs/contracts.md) and the dtype names they take."""

    module: str
    dtypes: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    """A peer's differing convention: the same call with other hyperparameters (`overrides`, e.g. a
    peer's default eps) or another formula (`forward`, taking the op's arguments)."""

    name: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    forward: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Case:
    """One golden case: each array input's shape (None: input absent) and the hyperparameters."""

    shapes: Mapping[str, tuple[int, ...] | None]
    hyper: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpInfo:
    name: str
    family: str  # "normalization" | "reparameterization" | "optimizer"
    function: Callable[..., Any]  # the convenience call: inputs, hyperparameters -> outputs
    forward: Callable[..., Any]  # inputs, hyperparameters -> (*outputs, saved)
    backward: Callable[..., Any]  # (d_output, saved) -> one gradient per differentiable input
    inputs: tuple[str, ...]  # positional array inputs, in order
    differentiable: tuple[str, ...]  # the inputs backward returns gradients for, in order
    hyperparams: Mapping[str, Any]  # keyword hyperparameters and their defaults
    spec: str  # repo-relative path of the spec
    variants: tuple[Variant, ...] = ()
    kernels: Mapping[str, Kernels] = field(default_factory=dict)  # backend -> kernels
    dtypes: tuple[str, ...] = ("float64", "float32", "float16")  # dtypes with golden cases
    cases: tuple[Case, ...] = ()


_NORM_KERNELS = {
    "numba": Kernels("normref.kernels.numba.norms", ("float32", "float64")),
    "cuda": Kernels("normref.kernels.cuda.launch", ("float32", "float16", "float64")),
}


def _layer_norm_formula(**convention: Any) -> Callable[..., Any]:
    return lambda *args, **hyper: _layer_norm.layer_norm_variant(*args, **hyper, **convention)


def _rms_norm_formula(**convention: Any) -> Callable[..., Any]:
    return lambda *args, **hyper: _rms_norm.rms_norm_variant(*args, **hyper, **convention)


OPS: dict[str, OpInfo] = {
    "layer_norm": OpInfo(
        name="layer_norm",
        family="normalization",
        function=_layer_norm.layer_norm,
        forward=_layer_norm.layer_norm_forward,
        backward=_layer_norm.layer_norm_backward,
        inputs=("x", "weight", "bias"),
        differentiable=("x", "weight", "bias"),
        hyperparams={"normalized_shape": None, "eps": 1e-5},
        spec="specs/layer_norm.md",
        variants=(
            Variant(
                "eps_outside_sqrt",
                "eps added to the standard deviation: (x - mean) / (std + eps)",
                forward=_layer_norm_formula(eps_outside_sqrt=True),
            ),
            Variant(
                "unbiased_variance",
                "variance divided by n - 1 instead of n",
                forward=_layer_norm_formula(unbiased=True),
            ),
            Variant(
                "fast_variance",
                "variance as E[x^2] - E[x]^2 clamped at 0 (Flax use_fast_variance)",
                forward=_layer_norm_formula(fast_variance=True),
            ),
            Variant("keras_eps", "Keras' default eps = 1e-3", overrides={"eps": 1e-3}),
            Variant("flax_eps", "Flax's default eps = 1e-6", overrides={"eps": 1e-6}),
        ),
        kernels=_NORM_KERNELS,
        cases=(
            Case({"x": (3, 7), "weight": (7,), "bias": (7,)}),
            Case({"x": (2, 5, 33), "weight": (33,), "bias": (33,)}, {"eps": 1e-3}),
            Case({"x": (4, 3, 5), "weight": (3, 5), "bias": (3, 5)}, {"normalized_shape": (3, 5)}),
            Case({"x": (6, 129), "weight": None, "bias": None}),
            Case({"x": (5, 1), "weight": (1,), "bias": (1,)}),
        ),
    ),
    "rms_norm": OpInfo(
        name="rms_norm",
        family="normalization",
        function=_rms_norm.rms_norm,
        forward=_rms_norm.rms_norm_forward,
        backward=_rms_norm.rms_norm_backward,
        inputs=("x", "weight"),
        differentiable=("x", "weight"),
        hyperparams={"normalized_shape": None, "eps": None},
        spec="specs/rms_norm.md",
        variants=(
            Variant(
                "eps_outside_sqrt",
                "eps added to the root mean square: x / (rms + eps)",
                forward=_rms_norm_formula(eps_outside_sqrt=True),
            ),
            Variant(
                "cast_before_weight",
                "normalized value rounded to the input dtype before the weight multiplies (Llama)",
                forward=_rms_norm_formula(cast_before_weight=True),
            ),
            Variant("eps_1e-6", "Flax's and Keras' default eps = 1e-6", overrides={"eps": 1e-6}),
            Variant(
                "eps_1e-5", "ONNX RMSNormalization's default eps = 1e-5", overrides={"eps": 1e-5}
            ),
        ),
        kernels=_NORM_KERNELS,
        cases=(
            Case({"x": (3, 7), "weight": (7,)}),
            Case({"x": (2, 5, 33), "weight": (33,)}, {"eps": 1e-6}),
            Case({"x": (4, 3, 5), "weight": (3, 5)}, {"normalized_shape": (3, 5), "eps": 1e-5}),
            Case({"x": (6, 129), "weight": None}),
        ),
    ),
}


def get(name_or_fn: str | Callable[..., Any]) -> OpInfo:
    """The registry entry for an op name, or for any of its public functions."""
    if isinstance(name_or_fn, str):
        if name_or_fn not in OPS:
            raise KeyError(f"unknown op {name_or_fn!r}; known ops: {', '.join(sorted(OPS))}")
        return OPS[name_or_fn]
    for info in OPS.values():
        if name_or_fn in (info.function, info.forward, info.backward):
            return info
    raise KeyError(f"{name_or_fn!r} is not a registered normref op")


def vjp(name_or_fn: str | Callable[..., Any], *args: Any, **kwargs: Any):
    """(outputs, pullback) for an op, by name or function: pullback(d_output) returns the
    gradient of every differentiable input (None for an input that was not given).

    >>> import numpy as np, normref
    >>> y, pullback = normref.vjp("layer_norm", np.array([[1.0, 2.0, 4.0]]))
    >>> dx, dweight, dbias = pullback(np.ones_like(y))
    """
    info = get(name_or_fn)
    *outputs, saved = info.forward(*args, **kwargs)
    backend = kwargs.get("backend")
    return (outputs[0] if len(outputs) == 1 else tuple(outputs)), (
        lambda d_output: info.backward(d_output, saved, backend=backend)
    )
