"""Every op normref defines, with the metadata the dispatcher, golden cases, verify and the spec
tests read (design.md §3). Adding an op means adding one entry to `OPS` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from normref.norms import batch_channel_norm as _batch_channel_norm
from normref.norms import batch_norm as _batch_norm
from normref.norms import group_norm as _group_norm
from normref.norms import instance_norm as _instance_norm
from normref.norms import layer_norm as _layer_norm
from normref.norms import rms_norm as _rms_norm
from normref.reparam import binary_connect as _binary_connect
from normref.reparam import scaled_weight_standardization as _scaled_ws
from normref.reparam import spectral_norm as _spectral_norm
from normref.reparam import weight_compander as _weight_compander
from normref.reparam import weight_norm as _weight_norm
from normref.reparam import weight_standardization as _weight_standardization

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
    """One golden case: each array input's shape (None: input absent) and the hyperparameters.

    `draw` gives an input a normal distribution (mean, std) of its own instead of the generator's
    default for its name: a probe that tells conventions apart (a variance near eps separates the
    eps placements; a large offset separates fast from two-pass variance).
    """

    shapes: Mapping[str, tuple[int, ...] | None]
    hyper: Mapping[str, Any] = field(default_factory=dict)
    draw: Mapping[str, tuple[float, float]] = field(default_factory=dict)


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


_NORM_KERNELS = {  # layer_norm, rms_norm (Numba reads 16-bit floats as bits: _half.py)
    "numba": Kernels("normref.kernels.numba.norms", ("float32", "float16", "bfloat16", "float64")),
    "cuda": Kernels("normref.kernels.cuda.launch", ("float32", "float16", "float64")),
}

_CHANNEL_NORM_KERNELS = {  # batch_norm, group_norm (Numba reads 16-bit floats as bits)
    "numba": Kernels(
        "normref.kernels.numba.channel_norms", ("float32", "float16", "bfloat16", "float64")
    ),
    "cuda": Kernels("normref.kernels.cuda.channel_launch", ("float32", "float16", "float64")),
}

_REPARAM_KERNELS = {
    "numba": Kernels("normref.kernels.numba.reparam", ("float32", "float64")),
    "cuda": Kernels("normref.kernels.cuda.reparam_launch", ("float32", "float16", "float64")),
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


def _batch_channel_norm_formula(**convention: Any) -> Callable[..., Any]:
    return lambda *args, **hyper: _batch_channel_norm.batch_channel_norm_variant(
        *args, **hyper, **convention
    )


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


def _bcn_shapes(x: tuple[int, ...], groups: int, affine: bool = True) -> dict[str, Any]:
    """Case shapes for batch_channel_norm: per-channel batch-step affine and running estimates,
    per-group channel-step affine."""
    channels, per_group = (x[1],), (groups,)
    return {
        "x": x,
        "bn_weight": channels if affine else None,
        "bn_bias": channels if affine else None,
        "weight": per_group if affine else None,
        "bias": per_group if affine else None,
        "running_mean": channels,
        "running_var": channels,
    }


def _reparam_formula(variant: Callable[..., Any], **convention: Any) -> Callable[..., Any]:
    """A reparameterization's forward under a peer's convention: the op's arguments, with the
    convention's keywords (a peer's own eps among them) taking precedence."""
    return lambda *args, **hyper: variant(*args, **{**hyper, **convention})


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
            # probes that tell the convention variants apart (verify's diagnosis relies on them)
            Case({"x": (6, 2), "weight": (2,), "bias": (2,)}),  # unbiased_variance
            Case(
                {"x": (4, 16), "weight": (16,), "bias": (16,)}, draw={"x": (0.0, 3e-3)}
            ),  # var ~ eps
            # an offset row: float32 one-pass variance fails here
            Case({"x": (4, 64), "weight": (64,), "bias": (64,)}, draw={"x": (100.0, 1.0)}),
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
            Case({"x": (4, 16), "weight": (16,)}, {"eps": 1e-7}, draw={"x": (0.0, 3e-4)}),  # ~ eps
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
        kernels=_CHANNEL_NORM_KERNELS,
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
        # num_batches_tracked is given so that every output is an array or a number. The eval
        # cases rely on the generator drawing running_var in [0.5, 1.5).
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
            Case(
                _with_running_stats((4, 3, 2, 5)),
                {"training": False, "num_batches_tracked": 5},
            ),
            Case(
                _with_running_stats((3, 4), affine=False),
                {"training": False, "eps": 1e-3, "num_batches_tracked": 0},
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
        kernels=_CHANNEL_NORM_KERNELS,
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
        # Every case gives running statistics, so that every output is an array; the
        # use_input_stats=False cases rely on the generator drawing running_var in [0.5, 1.5).
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
            Case(
                _with_running_stats((3, 2, 4, 5)),
                {"use_input_stats": False},
            ),
            Case(
                _with_running_stats((2, 3, 6), affine=False),
                {"use_input_stats": False, "eps": 1e-3},
            ),
        ),
    ),
    "batch_channel_norm": OpInfo(
        name="batch_channel_norm",
        family="normalization",
        function=_batch_channel_norm.batch_channel_norm,
        forward=_batch_channel_norm.batch_channel_norm_forward,
        backward=_batch_channel_norm.batch_channel_norm_backward,
        inputs=("x", "bn_weight", "bn_bias", "weight", "bias", "running_mean", "running_var"),
        differentiable=("x", "bn_weight", "bn_bias", "weight", "bias"),
        hyperparams={
            "num_groups": None,
            "training": True,
            "momentum": None,
            "eps": 1e-5,
            "batch_eps": 1e-5,
        },
        outputs=("y", "running_mean", "running_var"),
        spec="specs/batch_channel_norm.md",
        variants=(
            Variant(
                "batch_statistics",
                "the batch step is an ordinary batch norm (the authors' BCNorm(estimate=False), "
                "torch.nn.BatchNorm2d): training normalizes with the batch mean and biased "
                "variance and stores the unbiased variance",
                forward=_batch_channel_norm_formula(batch_statistics=True),
            ),
            Variant(
                "variance_about_batch_mean",
                "the estimate's second moment is the biased batch variance, about this batch's "
                "mean rather than the old running mean (labml_nn EstimatedBatchNorm)",
                forward=_batch_channel_norm_formula(variance_about_batch_mean=True),
            ),
        ),
        cases=(
            Case(
                _bcn_shapes((2, 6, 5), groups=3),
                {"num_groups": 3, "momentum": 0.1},
            ),
            Case(
                _bcn_shapes((1, 8, 3, 4), groups=4),  # a micro-batch of one
                {"num_groups": 4, "momentum": 0.01},
            ),
            Case(
                _bcn_shapes((3, 4, 2, 2, 3), groups=2, affine=False),
                {"num_groups": 2, "momentum": 0.3, "eps": 1e-3, "batch_eps": 1e-3},
            ),
            Case(
                _bcn_shapes((2, 6, 4), groups=2),
                {"num_groups": 2, "training": False},
            ),
            Case(
                _bcn_shapes((5, 8), groups=2),
                {"num_groups": 2, "momentum": 0.5},
            ),
        ),
    ),
    # --- weight reparameterizations (normref/reparam/) --------------------------------------
    "weight_norm": OpInfo(
        name="weight_norm",
        family="reparameterization",
        function=_weight_norm.weight_norm,
        forward=_weight_norm.weight_norm_forward,
        backward=_weight_norm.weight_norm_backward,
        inputs=("g", "v"),
        differentiable=("g", "v"),
        hyperparams={"dim": 0},
        outputs=("w",),
        spec="specs/weight_norm.md",
        kernels=_REPARAM_KERNELS,
        variants=(
            Variant(
                "flax_eps",
                "w = g * v * rsqrt(sum(v^2) + 1e-12): eps inside the square root (Flax "
                "WeightNorm), finite where v is zero",
                forward=_reparam_formula(_weight_norm.weight_norm_variant, flax_eps=True),
            ),
        ),
        cases=(
            Case({"g": (4, 1), "v": (4, 6)}),
            Case({"g": (3, 1, 1, 1), "v": (3, 2, 3, 3)}),
            Case({"g": (1, 5, 1), "v": (2, 5, 3)}, {"dim": 1}),
            Case({"g": (5,), "v": (5, 7)}),
            Case({"g": (), "v": (3, 4)}, {"dim": None}),
        ),
    ),
    "spectral_norm": OpInfo(
        name="spectral_norm",
        family="reparameterization",
        function=_spectral_norm.spectral_norm,
        forward=_spectral_norm.spectral_norm_forward,
        backward=_spectral_norm.spectral_norm_backward,
        inputs=("weight", "u", "v"),
        differentiable=("weight",),
        hyperparams={
            "dim": 0,
            "n_power_iterations": 1,
            "eps": 1e-12,
            "training": True,
            "exact": False,
        },
        outputs=("w", "u", "v"),
        spec="specs/spectral_norm.md",
        variants=(
            Variant(
                "start_from_u",
                "each power step computes v = normalize(W^T u) first, then u = normalize(W v) "
                "(Flax, Keras): the stored v is never read in training mode",
                forward=_reparam_formula(_spectral_norm.spectral_norm_variant, start_from_u=True),
            ),
            Variant(
                "flax",
                "Flax SpectralNorm: start_from_u, normalize(x) = x * rsqrt(sum(x^2) + eps), power "
                "steps in eval mode too, sigma = 0 replaced by 1, 1-D weights left unchanged",
                forward=_reparam_formula(_spectral_norm.spectral_norm_variant, flax=True),
            ),
            Variant(
                "exact_sigma",
                "sigma is the exact largest singular value (SVD), with its exact gradient",
                overrides={"exact": True},
            ),
        ),
        # The u, v state comes from the generic draw; in training mode only v is read (as the
        # start of the power method), and a random v is as good a start as any.
        cases=(
            Case({"weight": (4, 6), "u": (4,), "v": (6,)}),
            Case({"weight": (3, 2, 3, 3), "u": (3,), "v": (18,)}, {"n_power_iterations": 3}),
            Case({"weight": (2, 3, 2, 2), "u": (3,), "v": (8,)}, {"dim": 1}),
            Case({"weight": (5, 4), "u": (5,), "v": (4,)}, {"training": False}),
            Case({"weight": (4, 3), "u": (4,), "v": (3,)}, {"exact": True}),
        ),
    ),
    "weight_standardization": OpInfo(
        name="weight_standardization",
        family="reparameterization",
        function=_weight_standardization.weight_standardization,
        forward=_weight_standardization.weight_standardization_forward,
        backward=_weight_standardization.weight_standardization_backward,
        inputs=("weight",),
        differentiable=("weight",),
        hyperparams={"eps": 1e-5},
        outputs=("w",),
        spec="specs/weight_standardization.md",
        kernels=_REPARAM_KERNELS,
        variants=(
            Variant(
                "biased_std",
                "w = (weight - mean) / (biased std + eps): the authors' TensorFlow snippet "
                "(tf.keras.backend.std)",
                forward=_reparam_formula(
                    _weight_standardization.weight_standardization_variant, unbiased=False
                ),
            ),
            Variant(
                "timm",
                "w = (weight - mean) / sqrt(biased var + eps) with eps = 1e-6 (timm StdConv2d)",
                forward=_reparam_formula(
                    _weight_standardization.weight_standardization_variant,
                    unbiased=False,
                    eps_inside_sqrt=True,
                    eps=1e-6,
                ),
            ),
            Variant(
                "bit",
                "w = (weight - mean) / sqrt(biased var + 1e-10) (Big Transfer's StdConv2d)",
                forward=_reparam_formula(
                    _weight_standardization.weight_standardization_variant,
                    unbiased=False,
                    eps_inside_sqrt=True,
                    eps=1e-10,
                ),
            ),
        ),
        cases=(
            Case({"weight": (4, 3, 3, 3)}),
            Case({"weight": (5, 7)}),
            Case({"weight": (3, 4)}, {"eps": 1e-3}),
            Case({"weight": (2, 4, 5)}),
        ),
    ),
    "scaled_weight_standardization": OpInfo(
        name="scaled_weight_standardization",
        family="reparameterization",
        function=_scaled_ws.scaled_weight_standardization,
        forward=_scaled_ws.scaled_weight_standardization_forward,
        backward=_scaled_ws.scaled_weight_standardization_backward,
        inputs=("weight", "gain"),
        differentiable=("weight", "gain"),
        hyperparams={"gamma": 1.0, "eps": 1e-4},
        outputs=("w",),
        spec="specs/scaled_weight_standardization.md",
        variants=(
            Variant(
                "timm",
                "w = gain * gamma / sqrt(N) * (weight - mean) / sqrt(var + 1e-6): eps inside the "
                "square root, added to var rather than floored on N * var (timm ScaledStdConv2d)",
                forward=_reparam_formula(
                    _scaled_ws.scaled_weight_standardization_variant, timm=True, eps=1e-6
                ),
            ),
        ),
        cases=(
            Case({"weight": (4, 3, 3, 3), "gain": (4,)}),
            Case({"weight": (5, 7), "gain": (5, 1)}, {"gamma": 1.7139588594436646}),
            Case({"weight": (3, 2, 4), "gain": None}),
            # N * var is about 0.06 here, under the floor: the scale is a constant
            Case({"weight": (3, 6), "gain": (3,)}, {"eps": 1.0}),
        ),
    ),
    "weight_compander": OpInfo(
        name="weight_compander",
        family="reparameterization",
        function=_weight_compander.weight_compander,
        forward=_weight_compander.weight_compander_forward,
        backward=_weight_compander.weight_compander_backward,
        inputs=("v", "a", "b"),
        differentiable=("v", "a", "b"),
        hyperparams={},
        outputs=("w",),
        spec="specs/weight_compander.md",
        # The compander needs a, b > 0, which the generic draw does not keep: the cases either
        # leave them out (= 1) or draw them near 1 (std 0.1: ten deviations from 0). The last case
        # is the paper's learnable variant, one a and one b per layer, so da, db are golden too.
        cases=(
            Case({"v": (4, 5), "a": None, "b": None}),
            Case({"v": (3, 2, 3, 3), "a": None, "b": None}),
            Case({"v": (3, 4), "a": (), "b": ()}, draw={"a": (1.0, 0.1), "b": (1.0, 0.1)}),
        ),
    ),
    "binary_connect": OpInfo(
        name="binary_connect",
        family="reparameterization",
        function=_binary_connect.binary_connect,
        forward=_binary_connect.binary_connect_forward,
        backward=_binary_connect.binary_connect_backward,
        inputs=("w",),
        differentiable=("w",),
        hyperparams={"stochastic": False, "seed": None, "scale": 1.0, "mask_gradient": True},
        outputs=("w_b",),
        spec="specs/binary_connect.md",
        variants=(
            Variant(
                "sign_zero_is_zero",
                "w = 0 binarizes to 0 (torch.sign, numpy.sign) instead of +scale",
                forward=_reparam_formula(
                    _binary_connect.binary_connect_variant, sign_zero_is_zero=True
                ),
            ),
            Variant(
                "unmasked_straight_through",
                "the gradient passes to every w unchanged, |w| > scale included (the authors' "
                "BinaryConnect code, which clips w to [-H, H] after each update instead)",
                overrides={"mask_gradient": False},
            ),
        ),
        cases=(
            Case({"w": (4, 6)}),
            Case({"w": (3, 2, 5)}, {"scale": 0.5}),
            Case({"w": (5, 5)}, {"stochastic": True, "seed": 0}),
            Case({"w": (2, 8)}, {"mask_gradient": False}),
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
_adamax = import_module("normref.optim.adamax")
_nadam = import_module("normref.optim.nadam")
_radam = import_module("normref.optim.radam")
_adagrad = import_module("normref.optim.adagrad")
_rmsprop = import_module("normref.optim.rmsprop")
_adadelta = import_module("normref.optim.adadelta")
_lamb = import_module("normref.optim.lamb")
_lars = import_module("normref.optim.lars")
_lion = import_module("normref.optim.lion")


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


def _variants_of(module: Any, factory_variant: Callable[..., Any]) -> tuple[OptimizerVariant, ...]:
    """One OptimizerVariant per entry of a module's VARIANTS, built by its `<name>_variant`."""
    return tuple(
        OptimizerVariant(name, description, factory=partial(factory_variant, name))
        for name, description in module.VARIANTS.items()
    )


_WARMUP_DEFAULTS = {"initial": 0.0, "final": 0.0}
_ONE_CYCLE_SHAPE = {"pct_start": 0.3, "anneal": "cos", "three_phase": False}

# The fused in-place updates (Optimizer.update_): `<kernel>_update_` per optimizer stem. bfloat16
# is ml_dtypes' dtype (JAX's), with float32 state as for float16; float64 stays on the reference.
_OPTIM_KERNELS = {
    "numba": Kernels("normref.kernels.numba.optim", ("float32", "float16", "bfloat16")),
    "cuda": Kernels("normref.kernels.cuda.optim_launch", ("float32", "float16", "bfloat16")),
}


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
        kernels=_OPTIM_KERNELS,
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
        kernels=_OPTIM_KERNELS,
        variants=_adam_variants(decoupled=False),
    ),
    "adamw": OptimizerInfo(
        name="adamw",
        family="optimizer",
        factory=_adam.adamw,
        hyperparams={**_ADAM_DEFAULTS, "weight_decay": 1e-2},
        required=(),
        spec="specs/adamw.md",
        kernels=_OPTIM_KERNELS,
        variants=_adam_variants(decoupled=True),
    ),
    "adamax": OptimizerInfo(
        name="adamax",
        family="optimizer",
        factory=_adamax.adamax,
        hyperparams={
            "lr": 2e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "maximize": False,
        },
        required=(),
        spec="specs/adamax.md",
        variants=_variants_of(_adamax, _adamax.adamax_variant),
    ),
    "nadam": OptimizerInfo(
        name="nadam",
        family="optimizer",
        factory=_nadam.nadam,
        hyperparams={
            "lr": 2e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "momentum_decay": 4e-3,
            "decoupled_weight_decay": False,
            "maximize": False,
        },
        required=(),
        spec="specs/nadam.md",
        variants=_variants_of(_nadam, _nadam.nadam_variant),
    ),
    "radam": OptimizerInfo(
        name="radam",
        family="optimizer",
        factory=_radam.radam,
        hyperparams={
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "decoupled_weight_decay": False,
            "maximize": False,
        },
        required=(),
        spec="specs/radam.md",
        variants=_variants_of(_radam, _radam.radam_variant),
    ),
    "adagrad": OptimizerInfo(
        name="adagrad",
        family="optimizer",
        factory=_adagrad.adagrad,
        hyperparams={
            "lr": 1e-2,
            "lr_decay": 0.0,
            "weight_decay": 0.0,
            "initial_accumulator_value": 0.0,
            "eps": 1e-10,
            "maximize": False,
        },
        required=(),
        spec="specs/adagrad.md",
        variants=_variants_of(_adagrad, _adagrad.adagrad_variant),
    ),
    "rmsprop": OptimizerInfo(
        name="rmsprop",
        family="optimizer",
        factory=_rmsprop.rmsprop,
        hyperparams={
            "lr": 1e-2,
            "alpha": 0.99,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "momentum": 0.0,
            "centered": False,
            "maximize": False,
        },
        required=(),
        spec="specs/rmsprop.md",
        variants=_variants_of(_rmsprop, _rmsprop.rmsprop_variant),
    ),
    "adadelta": OptimizerInfo(
        name="adadelta",
        family="optimizer",
        factory=_adadelta.adadelta,
        hyperparams={
            "lr": 1.0,
            "rho": 0.9,
            "eps": 1e-6,
            "weight_decay": 0.0,
            "maximize": False,
        },
        required=(),
        spec="specs/adadelta.md",
        variants=(
            OptimizerVariant(
                "keras_defaults",
                "Keras 3 Adadelta's defaults, the same formula: lr 1e-3, rho 0.95, eps 1e-7",
                overrides={"lr": 1e-3, "rho": 0.95, "eps": 1e-7},
            ),
        ),
    ),
    "lamb": OptimizerInfo(
        name="lamb",
        family="optimizer",
        factory=_lamb.lamb,
        hyperparams={
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-6,
            "weight_decay": 0.0,
            "weight_decay_mask": True,
            "trust_ratio_mask": True,
        },
        required=(),
        spec="specs/lamb.md",
        variants=_variants_of(_lamb, _lamb.lamb_variant),
    ),
    "lars": OptimizerInfo(
        name="lars",
        family="optimizer",
        factory=_lars.lars,
        hyperparams={
            "momentum": 0.9,
            "weight_decay": 0.0,
            "trust_coefficient": 1e-3,
            "eps": 0.0,
            "nesterov": False,
            "weight_decay_mask": True,
            "trust_ratio_mask": True,
        },
        required=("lr",),
        spec="specs/lars.md",
        variants=_variants_of(_lars, _lars.lars_variant),
    ),
    "lion": OptimizerInfo(
        name="lion",
        family="optimizer",
        factory=_lion.lion,
        hyperparams={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
        required=(),
        spec="specs/lion.md",
        kernels=_OPTIM_KERNELS,
        variants=_variants_of(_lion, _lion.lion_variant),
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
