"""Every op normref defines, with the metadata the dispatcher, golden cases, verify and the spec
tests read (design.md §3). Adding an op means adding one entry to `OPS` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from normref.norms import batch_norm as _batch_norm
from normref.norms import group_norm as _group_norm
from normref.norms import instance_norm as _instance_norm
from normref.norms import layer_norm as _layer_norm
from normref.norms import rms_norm as _rms_norm

__all__ = [
    "Case",
    "Kernels",
    "OpInfo",
    "OptimizerInfo",
    "OptimizerVariant",
    "Variant",
    "OPS",
    "OPTIMIZERS",
    "get",
    "vjp",
]


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
    outputs: tuple[str, ...] = ("y",)  # what forward returns before `saved`, in order
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


def _batch_norm_formula(**convention: Any) -> Callable[..., Any]:
    return lambda *args, **hyper: _batch_norm.batch_norm_variant(*args, **hyper, **convention)


def _group_norm_formula(**convention: Any) -> Callable[..., Any]:
    return lambda *args, **hyper: _group_norm.group_norm_variant(*args, **hyper, **convention)


def _instance_norm_formula(**convention: Any) -> Callable[..., Any]:
    return lambda *args, **hyper: _instance_norm.instance_norm_variant(*args, **hyper, **convention)


def _with_running_stats(x: tuple[int, ...], affine: bool = True) -> dict[str, Any]:
    """Case shapes for an op with per-channel parameters and running statistics (x.shape[1])."""
    channels = (x[1],)
    param = channels if affine else None
    return {
        "x": x,
        "weight": param,
        "bias": param,
        "running_mean": channels,
        "running_var": channels,
    }


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
    "batch_norm": OpInfo(
        name="batch_norm",
        family="normalization",
        function=_batch_norm.batch_norm,
        forward=_batch_norm.batch_norm_forward,
        backward=_batch_norm.batch_norm_backward,
        inputs=("x", "weight", "bias", "running_mean", "running_var"),
        differentiable=("x", "weight", "bias"),
        hyperparams={"training": True, "momentum": 0.1, "eps": 1e-5, "num_batches_tracked": None},
        outputs=("y", "running_mean", "running_var", "num_batches_tracked"),
        spec="specs/batch_norm.md",
        variants=(
            Variant(
                "momentum_weights_old",
                "running update r = momentum * r + (1 - momentum) * stat with the momentum as "
                "given, storing the biased variance (Keras, ONNX; Flax with exact variance)",
                forward=_batch_norm_formula(momentum_weights_old=True, biased_running_var=True),
            ),
            Variant(
                "flax",
                "Flax BatchNorm's defaults: momentum_weights_old with the variance computed as "
                "E[x^2] - E[x]^2 clamped at 0 (use_fast_variance=True)",
                forward=_batch_norm_formula(
                    momentum_weights_old=True, biased_running_var=True, fast_variance=True
                ),
            ),
            Variant(
                "biased_running_var",
                "PyTorch's momentum, but the running variance averages the biased batch variance",
                forward=_batch_norm_formula(biased_running_var=True),
            ),
            Variant(
                "fast_variance",
                "batch variance as E[x^2] - E[x]^2 clamped at 0 (Flax use_fast_variance)",
                forward=_batch_norm_formula(fast_variance=True),
            ),
            Variant("keras_eps", "Keras' default eps = 1e-3", overrides={"eps": 1e-3}),
        ),
        # Training-mode cases only: eval mode needs running_var > 0, which the golden generator's
        # generic draw does not guarantee. num_batches_tracked is given so that every output is an
        # array or a number.
        cases=(
            Case(
                _with_running_stats((8, 3)),
                {"num_batches_tracked": 0},
            ),
            Case(
                _with_running_stats((4, 3, 5, 6)),
                {"momentum": None, "num_batches_tracked": 4},
            ),
            Case(
                _with_running_stats((2, 4, 7)),
                {"eps": 1e-3, "momentum": 0.3, "num_batches_tracked": 2},
            ),
            Case(
                _with_running_stats((2, 3, 2, 3, 4), affine=False),
                {"num_batches_tracked": 7},
            ),
        ),
    ),
    "group_norm": OpInfo(
        name="group_norm",
        family="normalization",
        function=_group_norm.group_norm,
        forward=_group_norm.group_norm_forward,
        backward=_group_norm.group_norm_backward,
        inputs=("x", "weight", "bias"),
        differentiable=("x", "weight", "bias"),
        hyperparams={"num_groups": None, "eps": 1e-5},
        spec="specs/group_norm.md",
        variants=(
            Variant(
                "fast_variance",
                "variance as E[x^2] - E[x]^2, clamped at 0 (Flax use_fast_variance; ONNX "
                "GroupNormalization-21 and Keras' torch backend without the clamp)",
                forward=_group_norm_formula(fast_variance=True),
            ),
            Variant(
                "cast_before_affine",
                "normalized value rounded to the input dtype before weight and bias apply "
                "(ONNX GroupNormalization-21)",
                forward=_group_norm_formula(cast_before_affine=True),
            ),
            Variant("flax_eps", "Flax's default eps = 1e-6", overrides={"eps": 1e-6}),
            Variant("keras_eps", "Keras' default eps = 1e-3", overrides={"eps": 1e-3}),
        ),
        cases=(
            Case({"x": (2, 6, 5), "weight": (6,), "bias": (6,)}, {"num_groups": 3}),
            Case({"x": (3, 8, 4, 4), "weight": (8,), "bias": (8,)}, {"num_groups": 2}),
            Case({"x": (2, 4, 3, 2, 2), "weight": None, "bias": None}, {"num_groups": 4}),
            Case({"x": (4, 6), "weight": (6,), "bias": (6,)}, {"num_groups": 1, "eps": 1e-3}),
        ),
    ),
    "instance_norm": OpInfo(
        name="instance_norm",
        family="normalization",
        function=_instance_norm.instance_norm,
        forward=_instance_norm.instance_norm_forward,
        backward=_instance_norm.instance_norm_backward,
        inputs=("x", "weight", "bias", "running_mean", "running_var"),
        differentiable=("x", "weight", "bias"),
        hyperparams={"use_input_stats": True, "momentum": 0.1, "eps": 1e-5},
        outputs=("y", "running_mean", "running_var"),
        spec="specs/instance_norm.md",
        variants=(
            Variant(
                "fast_variance",
                "variance as E[x^2] - E[x]^2 clamped at 0 (Flax InstanceNorm use_fast_variance)",
                forward=_instance_norm_formula(fast_variance=True),
            ),
            Variant("flax_eps", "Flax's default eps = 1e-6", overrides={"eps": 1e-6}),
        ),
        # use_input_stats=True cases with running statistics, so that every output is an array
        # (use_input_stats=False needs running_var > 0, which the generic draw does not ensure).
        cases=(
            Case(
                _with_running_stats((2, 3, 10)),
            ),
            Case(
                _with_running_stats((3, 2, 4, 5)),
                {"momentum": 0.25},
            ),
            Case(
                _with_running_stats((2, 4, 3, 2, 3), affine=False),
                {"eps": 1e-3},
            ),
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


# ---------------------------------------------------------------------------------------------
# Optimizers, gradient transforms and schedules (design.md §4). Imported here, after OPS, because
# the optimizer modules read OPTIMIZERS (for fused-kernel dispatch) when they run.

from functools import partial  # noqa: E402
from importlib import import_module  # noqa: E402

# by module path: the package normref.optim re-exports functions named like its modules (sgd, adam)
_adam = import_module("normref.optim.adam")
_clipping = import_module("normref.optim.clipping")
_schedules = import_module("normref.optim.schedules")
_sgd = import_module("normref.optim.sgd")


@dataclass(frozen=True)
class OptimizerVariant:
    """A peer's differing convention: `factory` takes the entry's hyperparameters and returns an
    object with the same contract computing the peer's formula (None: the entry's own factory
    with `overrides`, e.g. a peer's default)."""

    name: str
    description: str
    factory: Callable[..., Any] | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    family: str  # "optimizer" | "gradient_transform" | "schedule"
    factory: Callable[..., Any]  # hyperparameters -> optimizer, transform or schedule
    hyperparams: Mapping[str, Any]  # the hyperparameters that have defaults, and the defaults
    required: tuple[str, ...]  # hyperparameters without a default, in signature order
    spec: str  # repo-relative path of the spec
    variants: tuple[OptimizerVariant, ...] = ()
    kernels: Mapping[str, Kernels] = field(default_factory=dict)  # fused update_, per backend


def _adam_variants(decoupled: bool) -> tuple[OptimizerVariant, ...]:
    names = ["l2_vs_decoupled", "max_of_bias_corrected", "eps_root", "keras_eps_hat"]
    names += ["unscaled_decay"] if decoupled else ["no_bias_correction"]
    return tuple(
        OptimizerVariant(
            n, _adam.VARIANTS[n], factory=partial(_adam.adam_variant, n, decoupled=decoupled)
        )
        for n in names
    )


_ADAM_DEFAULTS = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
    "maximize": False,
}
_WARMUP_DEFAULTS = {"initial": 0.0, "final": 0.0}
_ONE_CYCLE_SHAPE = {"pct_start": 0.3, "anneal": "cos", "three_phase": False}


def _schedule(name: str, required: tuple[str, ...], hyperparams: dict[str, Any]) -> OptimizerInfo:
    return OptimizerInfo(
        name, "schedule", getattr(_schedules, name), hyperparams, required, "specs/schedules.md"
    )


OPTIMIZERS: dict[str, OptimizerInfo] = {
    "sgd": OptimizerInfo(
        name="sgd",
        family="optimizer",
        factory=_sgd.sgd,
        hyperparams={
            "momentum": 0.0,
            "dampening": 0.0,
            "weight_decay": 0.0,
            "nesterov": False,
            "maximize": False,
        },
        required=("lr",),
        spec="specs/sgd.md",
        variants=(
            OptimizerVariant(
                "keras_lr_inside_momentum",
                "lr inside the velocity: v = momentum * v - lr * g; p = p + v",
                factory=partial(_sgd.sgd_variant, "keras_lr_inside_momentum"),
            ),
        ),
    ),
    "adam": OptimizerInfo(
        name="adam",
        family="optimizer",
        factory=_adam.adam,
        hyperparams=_ADAM_DEFAULTS,
        required=(),
        spec="specs/adam.md",
        variants=_adam_variants(decoupled=False),
    ),
    "adamw": OptimizerInfo(
        name="adamw",
        family="optimizer",
        factory=_adam.adamw,
        hyperparams={**_ADAM_DEFAULTS, "weight_decay": 1e-2},
        required=(),
        spec="specs/adamw.md",
        variants=_adam_variants(decoupled=True),
    ),
    "clip_by_global_norm": OptimizerInfo(
        name="clip_by_global_norm",
        family="gradient_transform",
        factory=_clipping.clip_by_global_norm,
        hyperparams={},
        required=("max_norm",),
        spec="specs/clipping.md",
        variants=(
            OptimizerVariant(
                "optax_no_eps",
                "no 1e-6 and no multiply below the threshold: g untouched if norm < max_norm, "
                "else (g / norm) * max_norm",
                factory=partial(_clipping.clip_by_global_norm_variant, "optax_no_eps"),
            ),
        ),
    ),
    "clip_by_value": OptimizerInfo(
        name="clip_by_value",
        family="gradient_transform",
        factory=_clipping.clip_by_value,
        hyperparams={},
        required=("clip_value",),
        spec="specs/clipping.md",
    ),
    "adaptive_grad_clip": OptimizerInfo(
        name="adaptive_grad_clip",
        family="gradient_transform",
        factory=_clipping.adaptive_grad_clip,
        hyperparams={"clipping": 0.01, "eps": 1e-3},
        required=(),
        spec="specs/clipping.md",
        variants=(
            OptimizerVariant(
                "optax_layout",
                "units over JAX layouts, output channels last: axis 0 of a 2-D or 3-D array, "
                "axes (0, 1, 2) of a 4-D one",
                factory=partial(_clipping.adaptive_grad_clip_variant, "optax_layout"),
            ),
        ),
    ),
    "constant": _schedule("constant", ("value",), {}),
    "step_decay": _schedule("step_decay", ("value", "step_size"), {"gamma": 0.1}),
    "exponential_decay": _schedule("exponential_decay", ("value", "gamma"), {}),
    "cosine_with_warmup": _schedule(
        "cosine_with_warmup", ("peak", "warmup_steps", "total_steps"), _WARMUP_DEFAULTS
    ),
    "linear_with_warmup": _schedule(
        "linear_with_warmup", ("peak", "warmup_steps", "total_steps"), _WARMUP_DEFAULTS
    ),
    "one_cycle": _schedule(
        "one_cycle",
        ("max_value", "total_steps"),
        {"div_factor": 25.0, "final_div_factor": 1e4, **_ONE_CYCLE_SHAPE},
    ),
    "one_cycle_momentum": _schedule(
        "one_cycle_momentum",
        ("total_steps",),
        {"base": 0.85, "max_value": 0.95, **_ONE_CYCLE_SHAPE},
    ),
}
