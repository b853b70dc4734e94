"""Optimizer updates, gradient transforms, schedules and checkpoints (design.md §4).

    opt = normref.optim.chain(normref.optim.clip_by_global_norm(1.0), normref.optim.adamw(1e-3))
    state = opt.init(params)                          # params: dict or list/tuple of arrays
    params, state = opt.update(params, grads, state)  # pure
    opt.update_(params, grads, state)                 # in place, the fast path

Each optimizer PyTorch has follows PyTorch's arithmetic (specs/sgd.md, specs/adam.md,
specs/adamw.md, specs/adamax.md, specs/nadam.md, specs/radam.md, specs/adagrad.md,
specs/rmsprop.md, specs/adadelta.md); LAMB, LARS and Lion follow their papers (specs/lamb.md,
specs/lars.md, specs/lion.md). Peers' differing conventions are named variants there.
"""

from normref.optim import schedules
from normref.optim.adadelta import AdadeltaState, adadelta
from normref.optim.adagrad import AdagradState, adagrad
from normref.optim.adam import AdamState, adam, adamw
from normref.optim.adamax import AdamaxState, adamax
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
from normref.optim.lamb import LambState, lamb
from normref.optim.lars import LarsState, lars
from normref.optim.lion import LionState, lion
from normref.optim.nadam import NAdamState, nadam
from normref.optim.radam import RAdamState, radam
from normref.optim.rmsprop import RMSpropState, rmsprop
from normref.optim.sgd import SGDState, sgd

__all__ = [
    "AdadeltaState",
    "AdagradState",
    "AdamState",
    "AdamaxState",
    "ChainState",
    "EmptyState",
    "GradientTransform",
    "LambState",
    "LarsState",
    "LionState",
    "NAdamState",
    "Optimizer",
    "RAdamState",
    "RMSpropState",
    "SGDState",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "adaptive_grad_clip",
    "chain",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
    "lamb",
    "lars",
    "lion",
    "load",
    "nadam",
    "radam",
    "rmsprop",
    "save",
    "schedules",
    "sgd",
]
