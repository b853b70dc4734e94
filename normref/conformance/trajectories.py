"""Optimizer trajectory cases: the golden cases of optimizers (design.md §7, "optimizer
trajectories over many steps").

An optimizer is checked over a whole trajectory, not one step: differences such as bias correction
or where eps sits show up at some steps and not others, and a wrong state (a momentum buffer that
starts from zeros instead of the first gradient) only shows from the second step on.

Each case is: initial parameters, a fixed sequence of gradients (drawn once, not computed from a
loss, so every implementation sees identical gradients whatever its parameters do), and the
expected parameters after every step, computed by normref's reference `update` in float64 from the
exact (already rounded) initial parameters and gradients, as the op golden cases are.

The cases are generated on demand from a seed that depends only on the case id; nothing here names
an optimizer. Which configurations run comes from the registry entry: its defaults (with a value
for each required hyperparameter), then each configuration of `PROBES` whose hyperparameters the
optimizer has and whose values its factory accepts.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from normref import registry
from normref.golden.tolerances import TOLERANCES, Tolerance

__all__ = [
    "DTYPES",
    "STEPS",
    "TrajectoryCase",
    "load_trajectories",
    "optimizers",
    "reference_trajectory",
]

STEPS = 24
SHAPES: tuple[tuple[int, ...], ...] = ((7,), (3, 5))
DTYPES = ("float64", "float32")
# Steps (0-based) with special gradients: every gradient exactly zero (a step that only decays and
# moves by momentum), every gradient ~1e3 (a spike), and a stretch of gradients ~1e-4, where
# Adam's sqrt(nu) is as small as a few eps, so the eps conventions differ visibly.
ZERO_STEP = 3
LARGE_STEP = 7
SMALL_STEPS = range(12, 17)

# Values for hyperparameters without a default, by name (never by optimizer).
REQUIRED = {"lr": 0.01}
# Configurations beyond the defaults, each changing the hyperparameters it names. One applies to an
# optimizer that has every hyperparameter it names and accepts the values; duplicates are dropped.
PROBES: tuple[Mapping[str, Any], ...] = (
    {"weight_decay": 0.1},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.9, "dampening": 0.5},
    {"amsgrad": True},
    {"maximize": True},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"centered": True},
    {"momentum": 0.9, "centered": True},
    {"lr_decay": 0.01},
    {"initial_accumulator_value": 0.1},
)


def optimizers() -> dict[str, Any]:
    """The registry's optimizers (family "optimizer"), by name; empty where normref has none yet.
    Gradient transforms and schedules are not trajectories of parameters and are not checked."""
    table = getattr(registry, "OPTIMIZERS", {})
    return {name: info for name, info in table.items() if info.family == "optimizer"}


@dataclass(frozen=True)
class TrajectoryCase:
    """One trajectory case, with the attributes the runner reads from a golden case."""

    id: str
    op: str  # the optimizer's registry name
    index: int
    dtype: str
    hyper: Mapping[str, Any]  # every hyperparameter, ready for the factory
    inputs: Mapping[str, tuple[int, ...]]  # param.<i>: (shape), grads.<i>: (STEPS, *shape)
    outputs: Mapping[str, tuple[int, ...]]  # param.<i>: (STEPS, *shape), the params after each step
    forward_tol: Tolerance
    backward_tol: Tolerance
    kind: str = "trajectory"
    steps: int = STEPS

    @property
    def grads(self) -> Mapping[str, tuple[int, ...]]:
        return {}  # a trajectory has no gradients to check: its outputs are the parameters

    @property
    def info(self) -> Any:
        return registry.OPTIMIZERS[self.op]

    @property
    def count(self) -> int:
        """How many parameter arrays the trajectory updates."""
        return len(SHAPES)

    def arrays(self) -> dict[str, np.ndarray]:
        """`input.param.<i>` (dtype), `input.grads.<i>` (STEPS, *shape; dtype) and
        `output.param.<i>` (STEPS, *shape; float64), the same on every call."""
        params, grads = _draw(self.id, self.dtype)
        expected = reference_trajectory(self.info.factory(**self.hyper), params, grads)
        arrays: dict[str, np.ndarray] = {}
        for i, p in enumerate(params):
            arrays[f"input.param.{i}"] = p
            arrays[f"input.grads.{i}"] = np.stack([g[i] for g in grads])
            arrays[f"output.param.{i}"] = expected[i]
        return arrays


def _draw(cid: str, dtype: str) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """(initial params, gradients per step), rounded to `dtype`, from a seed of the case id."""
    rng = np.random.Generator(np.random.PCG64(zlib.crc32(cid.encode("ascii"))))
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    sequence = []
    for t in range(STEPS):
        scale = 0.0 if t == ZERO_STEP else 1e3 if t == LARGE_STEP else 1.0
        if t in SMALL_STEPS:
            scale = 1e-4
        sequence.append([(scale * rng.standard_normal(s)).astype(dtype) for s in SHAPES])
    return params, sequence


def reference_trajectory(
    optimizer: Any, params: list[np.ndarray], grads: list[list[np.ndarray]]
) -> list[np.ndarray]:
    """The params after every step, one (steps, *shape) float64 array per parameter, running
    `optimizer` (normref's contract: init/update) in float64 from the exact given values."""
    current = [np.asarray(p, dtype=np.float64) for p in params]
    state = optimizer.init(current)
    history: list[list[np.ndarray]] = [[] for _ in current]
    for step_grads in grads:
        current, state = optimizer.update(
            current, [np.asarray(g, dtype=np.float64) for g in step_grads], state
        )
        for column, p in zip(history, current):
            column.append(np.array(p, dtype=np.float64, copy=True))
    return [np.stack(column) for column in history]


def _configurations(info: Any) -> list[dict[str, Any]]:
    """The hyperparameter sets of an optimizer's cases: defaults first, then each probe that
    applies, without duplicates."""
    base = {name: REQUIRED[name] for name in info.required if name in REQUIRED}
    if len(base) != len(info.required):
        return []  # a required hyperparameter with no generic value: no case can be made
    base.update(info.hyperparams)
    configs: list[dict[str, Any]] = []
    for probe in ({}, *PROBES):
        if not set(probe) <= set(base):
            continue
        hyper = {**base, **probe}
        try:
            info.factory(**hyper)  # the reference refuses combinations that make no sense
        except (TypeError, ValueError):
            continue
        if hyper not in configs:
            configs.append(hyper)
    return configs


def load_trajectories() -> list[TrajectoryCase]:
    """Every trajectory case of every registered optimizer, in registry order."""
    cases = []
    for name, info in optimizers().items():
        for index, hyper in enumerate(_configurations(info)):
            for dtype in DTYPES:
                cases.append(
                    TrajectoryCase(
                        id=f"{name}-t{index:02d}-{dtype}",
                        op=name,
                        index=index,
                        dtype=dtype,
                        hyper=hyper,
                        inputs={
                            **{f"param.{i}": s for i, s in enumerate(SHAPES)},
                            **{f"grads.{i}": (STEPS, *s) for i, s in enumerate(SHAPES)},
                        },
                        outputs={f"param.{i}": (STEPS, *s) for i, s in enumerate(SHAPES)},
                        forward_tol=TOLERANCES[dtype]["forward"],
                        backward_tol=TOLERANCES[dtype]["backward"],
                    )
                )
    return cases
