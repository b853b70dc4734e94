"""The target `torch`: PyTorch's own ops, through the adapter protocol (conformance/adapter.py).

Forward through `torch.nn.functional` (BatchNorm through the `nn.BatchNorm*d` module itself, via
`torch.func.functional_call`, so that its Python-side bookkeeping runs too: momentum=None's
cumulative average and num_batches_tracked); backward through torch's own autograd, fed the
golden dy; optimizers through `torch.optim`, one `step()` per gradient of the trajectory.

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

__all__ = ["NAME", "OPS", "OPTIMIZERS"]

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
