"""Optimizer updates, gradient transforms, schedules and checkpoints (design.md §4).

    opt = normref.optim.chain(normref.optim.clip_by_global_norm(1.0), normref.optim.adamw(1e-3))
    state = opt.init(params)                          # params: dict or list/tuple of arrays
    params, state = opt.update(params, grads, state)  # pure
    opt.update_(params, grads, state)                 # in place, the fast path

Each optimizer follows PyTorch's arithmetic (specs/sgd.md, specs/adam.md, specs/adamw.md); peers'
differing conventions are named variants there.
"""

from normref.optim import schedules
from normref.optim.adam import AdamState, adam, adamw
from normref.optim.base import EmptyState, GradientTransform, Optimizer
from normref.optim.checkpoint import load, save
from normref.optim.clipping import (
    ChainState,
    adaptive_grad_clip,
    chain,
    clip_by_global_norm,
    clip_by_value,
    global_norm,
)
from normref.optim.sgd import SGDState, sgd

__all__ = [
    "AdamState",
    "ChainState",
    "EmptyState",
    "GradientTransform",
    "Optimizer",
    "SGDState",
    "adam",
    "adamw",
    "adaptive_grad_clip",
    "chain",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
    "load",
    "save",
    "schedules",
    "sgd",
]
