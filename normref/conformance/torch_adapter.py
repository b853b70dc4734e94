"""The target `torch`: PyTorch's own ops, through the adapter protocol (conformance/adapter.py).

Forward through `torch.nn.functional` (BatchNorm through the `nn.BatchNorm*d` module itself, via
`torch.func.functional_call`, so that its Python-side bookkeeping runs too: momentum=None's
cumulative average and num_batches_tracked); backward through torch's own autograd, fed the
golden dy; optimizers through `torch.optim`, one `step()` per gradient of the trajectory;
gradient transforms through `torch.nn.utils.clip_grad_norm_` and `clip_grad_value_` (torch has no
AGC); schedules through `torch.optim.lr_scheduler` (StepLR, ExponentialLR, OneCycleLR for the lr
and the momentum, LinearLR and CosineAnnealingLR behind a LinearLR warmup in SequentialLR), each
case torch cannot express (LinearLR cannot start from 0; past its end CosineAnnealingLR rises again
and OneCycleLR stops) reported not provided.

normref follows PyTorch's conventions, so each entry passes normref's hyperparameters through
under PyTorch's names; the only translations are PyTorch's required arguments that normref
defaults (`normalized_shape`). Inputs are copied into new tensors, so PyTorch's in-place updates of
running statistics land on copies, which are returned as the new statistics.

Reparameterizations go through `torch.nn.utils.parametrizations` registered on a module holding
the weight, evaluated with `torch.func.functional_call` on the case's tensors (for spectral_norm,
its u and v buffers too, which the power iteration updates in place).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normref import registry

__all__ = ["NAME", "OPS", "OPTIMIZERS", "SCHEDULES", "TRANSFORMS"]

NAME = f"torch {torch.__version__}"


def _normalized_shape(x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: Any):
    """PyTorch requires normalized_shape; normref's None means weight.shape, else the last dim."""
    if normalized_shape is None:
        return tuple(weight.shape) if weight is not None else tuple(x.shape[-1:])
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _layer_norm(x, weight, bias, *, normalized_shape, eps):
    return F.layer_norm(x, _normalized_shape(x, weight, normalized_shape), weight, bias, eps)


def _rms_norm(x, weight, *, normalized_shape, eps):
    return F.rms_norm(x, _normalized_shape(x, weight, normalized_shape), weight, eps)


def _group_norm(x, weight, bias, *, num_groups, eps):
    return F.group_norm(x, num_groups, weight, bias, eps)


_BATCH_NORM = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}
_BATCH_NORM[5] = torch.nn.BatchNorm3d


def _batch_norm(
    x, weight, bias, running_mean, running_var, *, training, momentum, eps, num_batches_tracked
):
    tracked = running_mean is not None
    module = _BATCH_NORM[x.ndim](
        x.shape[1],
        eps=eps,
        momentum=momentum,
        affine=weight is not None,
        track_running_stats=tracked,
        dtype=x.dtype,
    )
    module.train(training)
    state: dict[str, Any] = {}
    if weight is not None:
        state.update(weight=weight, bias=bias)
    if tracked:
        count = torch.tensor(0 if num_batches_tracked is None else num_batches_tracked)
        state.update(running_mean=running_mean, running_var=running_var, num_batches_tracked=count)
    y = torch.func.functional_call(module, state, (x,))
    if not tracked:
        return y, None, None, num_batches_tracked
    # The module updated the tensors passed in place (they are copies of the case's inputs).
    count = None if num_batches_tracked is None else state["num_batches_tracked"]
    return y, running_mean, running_var, count


def _instance_norm(x, weight, bias, running_mean, running_var, *, use_input_stats, momentum, eps):
    if momentum is None:
        raise NotImplementedError("F.instance_norm takes no momentum=None")
    y = F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    return y, running_mean, running_var  # updated in place by F.instance_norm


class _Holder(torch.nn.Module):
    """A module whose only job is to carry a parametrized `weight` and return it."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(like.shape, dtype=like.dtype))

    def forward(self) -> torch.Tensor:
        return self.weight


def _weight_norm(g, v, *, dim):
    holder = _Holder(v)
    # normref's dim=None (one norm over the whole tensor) is PyTorch's dim=-1
    torch.nn.utils.parametrizations.weight_norm(holder, "weight", dim=-1 if dim is None else dim)
    g_shape = holder.parametrizations.weight.original0.shape  # normref also takes g flat
    state = {
        "parametrizations.weight.original0": g.reshape(g_shape),
        "parametrizations.weight.original1": v,
    }
    return torch.func.functional_call(holder, state, ())


def _spectral_norm(weight, u, v, *, dim, n_power_iterations, eps, training, exact):
    if exact:
        raise NotImplementedError("PyTorch estimates sigma by power iteration only (exact=True)")
    holder = _Holder(weight)
    torch.nn.utils.parametrizations.spectral_norm(
        holder, "weight", n_power_iterations=n_power_iterations, eps=eps, dim=dim
    )
    holder.train(training)
    state = {"parametrizations.weight.original": weight}
    if u is not None:
        state.update({"parametrizations.weight.0._u": u, "parametrizations.weight.0._v": v})
    w = torch.func.functional_call(holder, state, ())
    return w, u, v  # u and v updated in place by the power iteration (copies of the inputs)


def _vjp(name: str, compute: Callable[..., Any]) -> Callable[..., Any]:
    """The protocol's `vjp` for a torch function of the op's inputs: tensors with requires_grad
    for the differentiable inputs, torch.autograd.grad for the pullback."""
    info = registry.OPS[name]

    def vjp(*inputs: np.ndarray | None, **hyper: Any):
        tensors = [
            None if a is None else torch.tensor(a, requires_grad=n in info.differentiable)
            for n, a in zip(info.inputs, inputs)
        ]
        outputs = compute(*tensors, **hyper)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)

        def pullback(dy: np.ndarray):
            wrt = [
                (n, t) for n, t in zip(info.inputs, tensors) if t is not None and t.requires_grad
            ]
            grads = torch.autograd.grad(outputs[0], [t for _, t in wrt], torch.tensor(dy))
            # reshape: an input PyTorch takes in another layout (weight_norm's flat g)
            return {n: g.reshape(t.shape).numpy() for (n, t), g in zip(wrt, grads)}

        return [_numpy(y) for y in outputs], pullback

    return vjp


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    return value


OPS = {
    name: {"vjp": _vjp(name, compute)}
    for name, compute in {
        "layer_norm": _layer_norm,
        "rms_norm": _rms_norm,
        "batch_norm": _batch_norm,
        "group_norm": _group_norm,
        "instance_norm": _instance_norm,
        "weight_norm": _weight_norm,
        "spectral_norm": _spectral_norm,
    }.items()
    if name in registry.OPS  # an op this table knows but the registry dropped is not offered
}


def _optimizer(cls: type) -> Callable[..., Any]:
    """A protocol factory around a torch.optim class: normref's hyperparameter names are
    PyTorch's for the optimizers normref has, so they pass through as they are."""

    def factory(params: list[np.ndarray], **hyper: Any):
        tensors = [torch.tensor(p, requires_grad=True) for p in params]
        optimizer = cls(tensors, **hyper)

        def step(grads: list[np.ndarray]) -> list[np.ndarray]:
            for t, g in zip(tensors, grads):
                t.grad = torch.tensor(g)
            # Some optimizer state lives in torch's default dtype (NAdam's mu_product); a float64
            # user runs with a float64 default, so the float64 cases do too.
            previous = torch.get_default_dtype()
            if tensors and tensors[0].dtype == torch.float64:
                torch.set_default_dtype(torch.float64)
            try:
                optimizer.step()
            finally:
                torch.set_default_dtype(previous)
            return [t.detach().numpy() for t in tensors]

        return step

    return factory


OPTIMIZERS = {
    name: _optimizer(cls)
    for name, cls in {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adamax": torch.optim.Adamax,
        "nadam": torch.optim.NAdam,
        "radam": torch.optim.RAdam,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
        "adadelta": torch.optim.Adadelta,
    }.items()
    if name in getattr(registry, "OPTIMIZERS", {})
}


# ---------------------------------------------------------------------------------------------
# Gradient transforms: torch.nn.utils' clipping functions, which modify the .grad of the
# parameters they are given. normref's hyperparameter names (max_norm, clip_value) are theirs.
# PyTorch has no adaptive gradient clipping (timm's adaptive_clip_grad is outside torch): not
# provided.


def _transform(clip: Callable[..., Any]) -> Callable[..., Any]:
    def factory(params: list[np.ndarray], **hyper: Any):
        tensors = [torch.tensor(p, requires_grad=True) for p in params]

        def apply(grads: list[np.ndarray]) -> list[np.ndarray]:
            for t, g in zip(tensors, grads):
                t.grad = torch.tensor(g)
            clip(tensors, **hyper)
            return [t.grad.numpy() for t in tensors]

        return apply

    return factory


TRANSFORMS = {
    name: _transform(clip)
    for name, clip in {
        "clip_by_global_norm": torch.nn.utils.clip_grad_norm_,
        "clip_by_value": torch.nn.utils.clip_grad_value_,
    }.items()
    if name in getattr(registry, "OPTIMIZERS", {})
}


# ---------------------------------------------------------------------------------------------
# Schedules: torch.optim.lr_scheduler on a one-parameter SGD, read from its param group after
# each optimizer.step(); scheduler.step() (0-based steps, specs/schedules.md). Each maker takes
# normref's hyperparameters and returns the scheduler; it raises NotImplementedError where torch
# cannot express the case, so that the case is reported not provided.

_lr = torch.optim.lr_scheduler


def _sgd(lr: float) -> torch.optim.SGD:
    # momentum, so that OneCycleLR has a momentum to cycle
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)


def _constant(*, value):
    # a constant lr is no scheduler in torch; ConstantLR with factor 1 is that as a scheduler
    return _lr.ConstantLR(_sgd(value), factor=1.0, total_iters=0)


def _step_decay(*, value, step_size, gamma):
    return _lr.StepLR(_sgd(value), step_size, gamma)


def _exponential_decay(*, value, gamma):
    return _lr.ExponentialLR(_sgd(value), gamma)


def _warmup(peak, warmup_steps, initial, decay):
    """normref's linear warmup as LinearLR, then `decay(optimizer)` (SequentialLR)."""
    optimizer = _sgd(peak)
    if warmup_steps == 0:
        return decay(optimizer)
    if not 0 < initial / peak <= 1:  # LinearLR's start_factor must be in (0, 1]
        raise NotImplementedError(f"LinearLR cannot warm up from initial/peak = {initial / peak}")
    warm = _lr.LinearLR(optimizer, initial / peak, 1.0, warmup_steps)
    return _lr.SequentialLR(optimizer, [warm, decay(optimizer)], [warmup_steps])


def _cosine_with_warmup(*, peak, warmup_steps, total_steps, initial, final):
    def decay(optimizer):
        return _lr.CosineAnnealingLR(optimizer, total_steps - warmup_steps, final)

    # CosineAnnealingLR is periodic: past T_max it rises again where normref holds `final`
    why = "CosineAnnealingLR rises again after T_max (normref holds final)"
    return _warmup(peak, warmup_steps, initial, decay), total_steps, why


def _linear_with_warmup(*, peak, warmup_steps, total_steps, initial, final):
    if not 0 <= final / peak <= 1:  # LinearLR's end_factor must be in [0, 1]
        raise NotImplementedError(f"LinearLR cannot decay to final/peak = {final / peak}")

    def decay(optimizer):
        return _lr.LinearLR(optimizer, 1.0, final / peak, total_steps - warmup_steps)

    return _warmup(peak, warmup_steps, initial, decay)


def _one_cycle(
    *,
    max_value,
    total_steps,
    pct_start,
    anneal,
    div_factor,
    final_div_factor,
    three_phase,
    momentum=None,
):
    cycle = {"cycle_momentum": False}
    if momentum is not None:
        cycle = {"cycle_momentum": True, "base_momentum": momentum[0], "max_momentum": momentum[1]}
    scheduler = _lr.OneCycleLR(
        _sgd(1.0),
        max_value,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy=anneal,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
        **cycle,
    )
    # OneCycleLR has no value past total_steps - 1 (it extrapolates at total_steps, then raises)
    return scheduler, total_steps, "OneCycleLR ends at total_steps - 1 (normref holds that value)"


def _one_cycle_momentum(*, total_steps, base, max_value, pct_start, anneal, three_phase):
    # the lr's own arguments do not change the momentum
    return _one_cycle(
        max_value=1.0,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal=anneal,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=three_phase,
        momentum=(base, max_value),
    )


def _schedule(make: Callable[..., Any], key: str = "lr") -> Callable[..., Any]:
    """A protocol factory around a scheduler maker, which returns the scheduler, or (scheduler,
    end, why) where torch's values stop being normref's at step `end`. `key`: the param group
    entry the schedule drives."""

    def factory(**hyper: Any):
        def start() -> tuple[Any, int | None, str]:
            made = make(**hyper)
            return made if isinstance(made, tuple) else (made, None, "")

        (scheduler, end, why), at = start(), 0

        def schedule(step: int) -> float:
            nonlocal scheduler, at
            if end is not None and step >= end:
                raise NotImplementedError(f"{why}: no value from step {end} on")
            if step < at:  # a scheduler only goes forward: start again
                (scheduler, _, _), at = start(), 0
            while at < step:
                scheduler.optimizer.step()  # nothing to update; torch expects it before .step()
                scheduler.step()
                at += 1
            return float(scheduler.optimizer.param_groups[0][key])

        return schedule

    return factory


SCHEDULES = {
    name: _schedule(make, key)
    for name, (make, key) in {
        "constant": (_constant, "lr"),
        "step_decay": (_step_decay, "lr"),
        "exponential_decay": (_exponential_decay, "lr"),
        "cosine_with_warmup": (_cosine_with_warmup, "lr"),
        "linear_with_warmup": (_linear_with_warmup, "lr"),
        "one_cycle": (_one_cycle, "lr"),
        "one_cycle_momentum": (_one_cycle_momentum, "momentum"),
    }.items()
    if name in getattr(registry, "OPTIMIZERS", {})
}
