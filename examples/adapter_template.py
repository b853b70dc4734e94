"""A complete normref adapter: copy this file and replace the NumPy code with your framework.

Check it with

    normref verify examples.adapter_template          # or: normref verify path/to/this_file.py
    normref verify examples.adapter_template -v --json report.json

or inside your own pytest run, one test per golden case:

    pytest --normref-adapter=examples.adapter_template

The protocol in full is in normref/conformance/adapter.py. In short, an adapter is a module with

- `OPS`: registry op name -> {"forward": f, "backward": b} (or a bare forward, or {"vjp": v});
- `OPTIMIZERS`: registry optimizer name -> factory;
- `TRANSFORMS`: registry gradient transform name (clipping) -> factory;
- `SCHEDULES`: registry schedule name -> factory;
- optionally `NAME`, the label the report shows.

Every table is optional; an entry left out is reported "not provided".

Everything crosses the boundary as NumPy arrays. Convert them to your framework's arrays on the
way in and back with np.asarray on the way out. Use normref's hyperparameter names and meanings
(specs/<op>.md): when your framework differs (Keras' momentum, Flax's eps default), translate here,
since the point is to check that your op computes the same function when asked the same thing.

The implementations below are small NumPy ones written for this example: they pass every golden
case of the ops, optimizer, transform and schedule they provide, so `normref verify` reports them
PASS and lists every other entry as "not provided".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NAME = "adapter template (NumPy)"


def _compute_dtype(x: np.ndarray) -> type:
    """float64 stays float64; float32 and the 16-bit floats are computed in float32 and the result
    rounded once at the end (normref's rule, and PyTorch's for 16-bit GPU kernels). Computing
    float16 in float16 would be off by several times the float16 tolerance."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _rows(x: np.ndarray, weight: np.ndarray | None, normalized_shape: Any) -> int:
    """How many trailing dims are normalized. normref's normalized_shape means what PyTorch's
    does; None means weight.shape when there is a weight, else the last dim."""
    if normalized_shape is None:
        return weight.ndim if weight is not None else 1
    return 1 if isinstance(normalized_shape, int) else len(normalized_shape)


# ---------------------------------------------------------------------------------------------
# LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing dims.


def layer_norm(x, weight, bias, *, normalized_shape, eps):
    """Forward: the op's inputs in registry order (x, weight, bias; None when a case has no
    weight or bias), then every hyperparameter as a keyword."""
    k = _rows(x, weight, normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    xc = x.astype(_compute_dtype(x))
    mean = xc.mean(axis=axes, keepdims=True)
    var = ((xc - mean) ** 2).mean(axis=axes, keepdims=True)  # biased, two-pass
    y = (xc - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight.astype(xc.dtype)
    if bias is not None:
        y = y + bias.astype(xc.dtype)
    return y.astype(x.dtype)


def layer_norm_backward(dy, x, weight, bias, *, normalized_shape, eps):
    """Backward: dy first, then the same inputs and hyperparameters as the forward. Returns the
    gradient of each differentiable input (x, weight, bias), None for an absent one; a dict
    {"x": ..., "weight": ..., "bias": ...} works as well."""
    k = _rows(x, weight, normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    batch = tuple(range(x.ndim - k))
    dt = _compute_dtype(x)
    xc, g = x.astype(dt), dy.astype(dt)
    mean = xc.mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(((xc - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    x_hat = (xc - mean) * rstd
    gw = g * weight.astype(dt) if weight is not None else g
    dx = rstd * (
        gw - gw.mean(axis=axes, keepdims=True) - x_hat * (gw * x_hat).mean(axis=axes, keepdims=True)
    )
    dweight = None if weight is None else (g * x_hat).sum(axis=batch).astype(x.dtype)
    dbias = None if bias is None else g.sum(axis=batch).astype(x.dtype)
    return dx.astype(x.dtype), dweight, dbias


# ---------------------------------------------------------------------------------------------
# RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight. eps=None means the machine epsilon of the
# compute dtype (PyTorch's default).


def rms_norm(x, weight, *, normalized_shape, eps):
    k = _rows(x, weight, normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    dt = _compute_dtype(x)
    eps = np.finfo(dt).eps if eps is None else eps
    xc = x.astype(dt)
    y = xc / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight.astype(dt)
    return y.astype(x.dtype)


def rms_norm_backward(dy, x, weight, *, normalized_shape, eps):
    k = _rows(x, weight, normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    batch = tuple(range(x.ndim - k))
    dt = _compute_dtype(x)
    eps = np.finfo(dt).eps if eps is None else eps
    xc, g = x.astype(dt), dy.astype(dt)
    rstd = 1 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    x_hat = xc * rstd
    gw = g * weight.astype(dt) if weight is not None else g
    dx = rstd * (gw - x_hat * (gw * x_hat).mean(axis=axes, keepdims=True))
    dweight = None if weight is None else (g * x_hat).sum(axis=batch).astype(x.dtype)
    return dx.astype(x.dtype), dweight


# ---------------------------------------------------------------------------------------------
# SGD with momentum, PyTorch's update (specs/sgd.md). A factory takes the initial parameters (a
# list of arrays) and every hyperparameter, and returns `step`: one update from a list of
# gradients, returning the parameters after it.


def sgd(params, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    params = [p.copy() for p in params]
    buffers: list[np.ndarray | None] = [None] * len(params)

    def step(grads):
        for i, (p, g) in enumerate(zip(params, grads)):
            g = -g if maximize else g
            if weight_decay:
                g = g + weight_decay * p
            if momentum:
                # the first buffer is the gradient itself (PyTorch), not (1 - dampening) * g
                b = g.copy() if buffers[i] is None else momentum * buffers[i] + (1 - dampening) * g
                buffers[i] = b
                g = g + momentum * b if nesterov else b
            params[i] = (p - lr * g).astype(p.dtype)
        return params

    return step


# ---------------------------------------------------------------------------------------------
# Gradient clipping by global norm, PyTorch's clip_grad_norm_ (specs/clipping.md). A transform
# factory takes the parameters (a list of arrays, which AGC reads and clipping by norm does not)
# and every hyperparameter, and returns `apply`: one call on a list of gradients, returning the
# transformed gradients in their dtype.


def clip_by_global_norm(params, *, max_norm):
    def apply(grads):
        # one norm over every gradient together, in double precision
        norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
        # PyTorch's arithmetic: 1e-6 next to the norm, and never a factor above 1 (optax has no
        # 1e-6 and leaves gradients below max_norm untouched: verify names that variant)
        scale = min(max_norm / (norm + 1e-6), 1.0)
        return [(g.astype(np.float64) * scale).astype(g.dtype) for g in grads]

    return apply


# ---------------------------------------------------------------------------------------------
# A cosine schedule with linear warmup (specs/schedules.md). A schedule factory takes every
# hyperparameter and returns `schedule(step) -> float`, with step 0-based: the number of updates
# already taken, so the first update reads schedule(0).


def cosine_with_warmup(*, peak, warmup_steps, total_steps, initial, final):
    def schedule(step):
        if step < warmup_steps:
            return initial + (peak - initial) * step / warmup_steps
        if step >= total_steps:
            return final  # holds its final value (PyTorch's CosineAnnealingLR would rise again)
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return final + (peak - final) * (1 + math.cos(math.pi * progress)) / 2

    return schedule


# ---------------------------------------------------------------------------------------------
# The tables normref reads. An entry left out is reported "not provided". To say that
# one case is not supported (a dtype, a hyperparameter value), raise NotImplementedError("why")
# from the function: that case is reported "not provided" too, never passed or failed.

OPS = {
    "layer_norm": {"forward": layer_norm, "backward": layer_norm_backward},
    "rms_norm": {"forward": rms_norm, "backward": rms_norm_backward},
}

OPTIMIZERS = {
    "sgd": sgd,
}

TRANSFORMS = {
    "clip_by_global_norm": clip_by_global_norm,
}

SCHEDULES = {
    "cosine_with_warmup": cosine_with_warmup,
}
