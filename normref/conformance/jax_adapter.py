"""The target `jax`: Flax (linen) normalizations and optax optimizers, through the adapter protocol
(conformance/adapter.py). Backward through `jax.vjp`, fed the golden dy.

Importing this module turns on `jax_enable_x64` for the process: without it JAX silently computes
float64 cases in float32.

Each entry maps normref's hyperparameters onto the peer's API as a user porting PyTorch-convention
code would, and nothing more, so that what differs is the peer's own convention:

- Flax modules get `epsilon=eps` and `use_fast_variance=False` (Flax's defaults are eps 1e-6 and
  the fast variance: a default Flax module is the variants flax_eps + fast_variance);
- Flax's GroupNorm takes channels last: the input is moved to channels-last and back;
- Flax's BatchNorm weights the old running statistic by its `momentum` and stores the biased batch
  variance: it gets momentum = 1 - normref's (1 - 1/(n + 1) for normref's cumulative momentum=None),
  and keeps its biased variance, which the diagnosis names. It counts no batches: the
  num_batches_tracked output is left out (reported as not provided);
- Flax's InstanceNorm keeps no running statistics: those outputs are left out, and
  use_input_stats=False is not provided;
- optax: torch.optim's L2 weight decay is `add_decayed_weights` before the optimizer, maximize a
  `scale(-1)` in front; AdamW's decoupled decay is optax.adamw's; SGD's dampening has no optax
  counterpart (not provided); amsgrad is `scale_by_amsgrad`. The other optax optimizers take the
  same front for L2 decay and maximize; decoupled decay (nadam, radam) is adamw's
  `add_decayed_weights` after the scaling (optax's nadamw; composed for radam); Adagrad's lr_decay
  is an lr schedule; LAMB's and LARS' masks other than True are not provided; optax's own
  conventions stay at their defaults for verify to name: nadam's missing momentum schedule
  (momentum_decay has no counterpart), eps inside the root (adagrad; rmsprop's default
  eps_in_sqrt=True), radam's eps on the bias-corrected root, lars' ratio of the decayed gradient;
- optax's clipping as it is (clip_by_global_norm without PyTorch's 1e-6, adaptive_grad_clip over
  JAX layouts: verify names both); optax's schedules where they are normref's (constant,
  exponential_decay with and without staircase, warmup_cosine_decay_schedule, linear schedules
  joined); its one-cycle has other phase ends and it has no momentum cycle: not provided.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from normref import registry  # noqa: E402

__all__ = ["NAME", "OPS", "OPTIMIZERS", "SCHEDULES", "TRANSFORMS"]

NAME = f"jax {jax.__version__} / flax {flax.__version__} / optax {optax.__version__}"


def _axes(x: Any, weight: Any, normalized_shape: Any) -> tuple[int, ...]:
    """The trailing axes normalized over, as negative axis numbers (normref's normalized_shape:
    None means weight.shape when given, else the last dimension)."""
    if normalized_shape is None:
        count = weight.ndim if weight is not None else 1
    else:
        count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-count, 0))


def _params(**named: Any) -> dict[str, Any]:
    return {"params": {k: v for k, v in named.items() if v is not None}}


def _layer_norm(x, weight, bias, *, normalized_shape, eps):
    axes = _axes(x, weight, normalized_shape)
    module = nn.LayerNorm(
        epsilon=eps,
        use_fast_variance=False,
        use_scale=weight is not None,
        use_bias=bias is not None,
        reduction_axes=axes,
        feature_axes=axes,
    )
    return module.apply(_params(scale=weight, bias=bias), x)


def _rms_norm(x, weight, *, normalized_shape, eps):
    axes = _axes(x, weight, normalized_shape)
    if eps is None:  # normref (PyTorch): the machine epsilon of the compute dtype
        eps = float(jnp.finfo(jnp.float64 if x.dtype == jnp.float64 else jnp.float32).eps)
    module = nn.RMSNorm(
        epsilon=eps, use_scale=weight is not None, reduction_axes=axes, feature_axes=axes
    )
    return module.apply(_params(scale=weight), x)


def _group_norm(x, weight, bias, *, num_groups, eps):
    last = jnp.moveaxis(x, 1, -1)  # Flax: channels last
    module = nn.GroupNorm(
        num_groups=num_groups,
        epsilon=eps,
        use_fast_variance=False,
        use_scale=weight is not None,
        use_bias=bias is not None,
        reduction_axes=tuple(range(1, x.ndim)),
    )
    return jnp.moveaxis(module.apply(_params(scale=weight, bias=bias), last), -1, 1)


def _batch_norm(
    x, weight, bias, running_mean, running_var, *, training, momentum, eps, num_batches_tracked
):
    if running_mean is None:
        raise NotImplementedError("Flax's BatchNorm always keeps running statistics")
    if momentum is None:  # PyTorch's cumulative average: the new statistic weighs 1 / (n + 1)
        momentum = 1.0 / ((num_batches_tracked or 0) + 1)
    module = nn.BatchNorm(
        use_running_average=not training,
        axis=1,
        momentum=1.0 - momentum,
        epsilon=eps,
        use_fast_variance=False,
        use_scale=weight is not None,
        use_bias=bias is not None,
    )
    variables = {
        **_params(scale=weight, bias=bias),
        "batch_stats": {"mean": running_mean, "var": running_var},
    }
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    return {"y": y, "running_mean": stats["mean"], "running_var": stats["var"]}


def _instance_norm(x, weight, bias, running_mean, running_var, *, use_input_stats, momentum, eps):
    if not use_input_stats:
        raise NotImplementedError("Flax's InstanceNorm has no running statistics to normalize by")
    last = jnp.moveaxis(x, 1, -1)
    module = nn.InstanceNorm(
        epsilon=eps,
        use_fast_variance=False,
        use_scale=weight is not None,
        use_bias=bias is not None,
    )
    return {"y": jnp.moveaxis(module.apply(_params(scale=weight, bias=bias), last), -1, 1)}


def _vjp(name: str, compute: Callable[..., Any]) -> Callable[..., Any]:
    """The protocol's `vjp`: jax.vjp over the op's present differentiable inputs; the first
    output is differentiated, the others (running statistics) come along as auxiliary data.

    Forward and pullback are each jitted as a whole: run eagerly, JAX compiles every primitive
    separately for each new shape, about twenty compilations per case instead of two."""
    info = registry.OPS[name]

    def vjp(*inputs: np.ndarray | None, **hyper: Any):
        arrays = [None if a is None else jnp.asarray(a) for a in inputs]
        wrt = [
            i
            for i, (n, a) in enumerate(zip(info.inputs, arrays))
            if a is not None and n in info.differentiable
        ]
        diff = [arrays[i] for i in wrt]
        as_dict = []  # whether compute returns a dict (outputs by name); set while tracing

        def first_output(*values: Any):
            full = list(arrays)
            for i, a in zip(wrt, values):
                full[i] = a
            out = compute(*full, **hyper)
            as_dict[:] = [isinstance(out, dict)]
            if isinstance(out, dict):
                return out["y"], {k: v for k, v in out.items() if k != "y"}
            return out, {}

        y, aux = jax.jit(first_output)(*diff)

        @jax.jit
        def cotangents(dy: Any, *values: Any) -> Any:
            return jax.vjp(first_output, *values, has_aux=True)[1](dy)

        def grads(dy: np.ndarray) -> dict[str, np.ndarray]:
            found = cotangents(jnp.asarray(dy), *diff)
            return {info.inputs[i]: np.asarray(g) for i, g in zip(wrt, found)}

        if as_dict[0]:
            return {"y": np.asarray(y), **{k: np.asarray(v) for k, v in aux.items()}}, grads
        return np.asarray(y), grads

    return vjp


OPS = {
    name: {"vjp": _vjp(name, compute)}
    for name, compute in {
        "layer_norm": _layer_norm,
        "rms_norm": _rms_norm,
        "batch_norm": _batch_norm,
        "group_norm": _group_norm,
        "instance_norm": _instance_norm,
    }.items()
    if name in registry.OPS
}


# ---------------------------------------------------------------------------------------------
# optax


def _front(weight_decay: float, maximize: bool) -> list[Any]:
    """torch.optim's gradient preprocessing as optax transforms: maximize, then L2 decay."""
    parts = []
    if maximize:
        parts.append(optax.scale(-1.0))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    return parts


def _sgd(*, lr, momentum, dampening, weight_decay, nesterov, maximize):
    if dampening:
        raise NotImplementedError("optax's sgd (trace) has no dampening")
    return optax.chain(
        *_front(weight_decay, maximize),
        optax.sgd(lr, momentum=momentum or None, nesterov=nesterov),
    )


def _adam(*, lr, betas, eps, weight_decay, amsgrad, maximize):
    make = optax.amsgrad if amsgrad else optax.adam
    return optax.chain(*_front(weight_decay, maximize), make(lr, betas[0], betas[1], eps))


def _adamw(*, lr, betas, eps, weight_decay, amsgrad, maximize):
    if not amsgrad:
        return optax.chain(
            *_front(0.0, maximize), optax.adamw(lr, *betas, eps, weight_decay=weight_decay)
        )
    return optax.chain(
        *_front(0.0, maximize),
        optax.scale_by_amsgrad(*betas, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(lr),
    )


def _adamax(*, lr, betas, eps, weight_decay, maximize):
    return optax.chain(*_front(weight_decay, maximize), optax.adamax(lr, *betas, eps))


def _nadam(*, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize):
    # optax's nadam is adam(nesterov=True): no momentum schedule, so momentum_decay has nothing to
    # go to; verify names the difference (variant optax_nesterov) rather than hiding it.
    if decoupled_weight_decay:
        return optax.chain(
            *_front(0.0, maximize), optax.nadamw(lr, *betas, eps, weight_decay=weight_decay)
        )
    return optax.chain(*_front(weight_decay, maximize), optax.nadam(lr, *betas, eps))


def _radam(*, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    if not decoupled_weight_decay:
        return optax.chain(*_front(weight_decay, maximize), optax.radam(lr, *betas, eps))
    return optax.chain(  # optax has no radamw: adamw's decoupled decay, composed
        *_front(0.0, maximize),
        optax.scale_by_radam(*betas, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(lr),
    )


def _adagrad(*, lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize):
    rate = lr
    if lr_decay:  # torch: lr / (1 + (t - 1) * lr_decay); optax's schedule count starts at 0
        rate = lambda count: lr / (1 + count * lr_decay)  # noqa: E731
    return optax.chain(
        *_front(weight_decay, maximize),
        optax.adagrad(rate, initial_accumulator_value=initial_accumulator_value, eps=eps),
    )


def _rmsprop(*, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    # eps_in_sqrt keeps optax's default (True): optax's convention, which verify names.
    return optax.chain(
        *_front(weight_decay, maximize),
        optax.rmsprop(lr, decay=alpha, eps=eps, centered=centered, momentum=momentum or None),
    )


def _adadelta(*, lr, rho, eps, weight_decay, maximize):
    return optax.chain(
        *_front(0.0, maximize), optax.adadelta(lr, rho, eps, weight_decay=weight_decay)
    )


def _masks(weight_decay_mask: Any, trust_ratio_mask: Any) -> None:
    if weight_decay_mask is not True or trust_ratio_mask is not True:
        raise NotImplementedError("masks other than True are not mapped onto optax's")


def _lamb(*, lr, betas, eps, weight_decay, weight_decay_mask, trust_ratio_mask):
    _masks(weight_decay_mask, trust_ratio_mask)  # optax's lamb: every tensor gets the ratio
    return optax.lamb(lr, *betas, eps, weight_decay=weight_decay)


def _lars(
    *,
    lr,
    momentum,
    weight_decay,
    trust_coefficient,
    eps,
    nesterov,
    weight_decay_mask,
    trust_ratio_mask,
):
    _masks(weight_decay_mask, trust_ratio_mask)
    return optax.lars(
        lr,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        eps=eps,
        momentum=momentum,
        nesterov=nesterov,
    )


def _lion(*, lr, betas, weight_decay):
    return optax.lion(lr, *betas, weight_decay=weight_decay)  # optax's default decay is 1e-3


def _optimizer(make: Callable[..., Any]) -> Callable[..., Any]:
    def factory(params: list[np.ndarray], **hyper: Any):
        transform = make(**hyper)
        current = [jnp.asarray(p) for p in params]
        state = transform.init(current)

        def step(grads: list[np.ndarray]) -> list[np.ndarray]:
            nonlocal current, state
            updates, state = transform.update([jnp.asarray(g) for g in grads], state, current)
            current = optax.apply_updates(current, updates)
            return [np.asarray(p) for p in current]

        return step

    return factory


OPTIMIZERS = {
    name: _optimizer(make)
    for name, make in {
        "sgd": _sgd,
        "adam": _adam,
        "adamw": _adamw,
        "adamax": _adamax,
        "nadam": _nadam,
        "radam": _radam,
        "adagrad": _adagrad,
        "rmsprop": _rmsprop,
        "adadelta": _adadelta,
        "lamb": _lamb,
        "lars": _lars,
        "lion": _lion,
    }.items()
    if name in getattr(registry, "OPTIMIZERS", {})
}


# ---------------------------------------------------------------------------------------------
# Gradient transforms: optax's, with optax's own conventions for verify to name (no 1e-6 in
# clip_by_global_norm, variant optax_no_eps; AGC's units over JAX layouts, variant optax_layout).


def _transform(make: Callable[..., Any]) -> Callable[..., Any]:
    def factory(params: list[np.ndarray], **hyper: Any):
        transform = make(**hyper)
        current = [jnp.asarray(p) for p in params]
        state = transform.init(current)

        def apply(grads: list[np.ndarray]) -> list[np.ndarray]:
            nonlocal state
            updates, state = transform.update([jnp.asarray(g) for g in grads], state, current)
            return [np.asarray(u) for u in updates]

        return apply

    return factory


TRANSFORMS = {
    name: _transform(make)
    for name, make in {
        "clip_by_global_norm": lambda *, max_norm: optax.clip_by_global_norm(max_norm),
        "clip_by_value": lambda *, clip_value: optax.clip(clip_value),
        "adaptive_grad_clip": lambda *, clipping, eps: optax.adaptive_grad_clip(clipping, eps),
    }.items()
    if name in getattr(registry, "OPTIMIZERS", {})
}


# ---------------------------------------------------------------------------------------------
# Schedules: optax's, which read the 0-based count as normref does. optax's one-cycle
# (cosine_onecycle_schedule) ends its phases at int(pct_start * T) and T, where PyTorch's and
# normref's end at pct_start * T - 1 and T - 1: another schedule, so one_cycle is not provided;
# optax has no momentum cycle (one_cycle_momentum).


def _linear_with_warmup(*, peak, warmup_steps, total_steps, initial, final):
    return optax.join_schedules(
        [
            optax.linear_schedule(initial, peak, warmup_steps),
            optax.linear_schedule(peak, final, total_steps - warmup_steps),
        ],
        [warmup_steps],
    )


SCHEDULES = {
    name: make
    for name, make in {
        "constant": lambda *, value: optax.constant_schedule(value),
        "step_decay": lambda *, value, step_size, gamma: optax.exponential_decay(
            value, step_size, gamma, staircase=True
        ),
        "exponential_decay": lambda *, value, gamma: optax.exponential_decay(value, 1, gamma),
        "cosine_with_warmup": lambda *, peak, warmup_steps, total_steps, initial, final: (
            optax.warmup_cosine_decay_schedule(initial, peak, warmup_steps, total_steps, final)
        ),
        "linear_with_warmup": _linear_with_warmup,
    }.items()
    if name in getattr(registry, "OPTIMIZERS", {})
}
