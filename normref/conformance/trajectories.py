"""The generated cases of the registry's OPTIMIZERS table (design.md §7): optimizer trajectories,
gradient-transform calls and schedule values. Nothing is stored: every case is generated on demand
from a seed that depends only on its id, and its expected values come from normref's reference.

An optimizer is checked over a whole trajectory, not one step: differences such as bias correction
or where eps sits show up at some steps and not others, and a wrong state (a momentum buffer that
starts from zeros instead of the first gradient) only shows from the second step on. Each case is:
initial parameters, a fixed sequence of gradients (drawn once, not computed from a loss, so every
implementation sees identical gradients whatever its parameters do), and the expected parameters
after every step, computed by normref's reference `update` in float64 from the exact (already
rounded) initial parameters and gradients, as the op golden cases are.

A gradient transform (clipping) is checked over a few calls on fixed parameters, each call with
gradients of its own scale, so that every threshold is crossed both ways: a global norm far above
max_norm and far below it, all gradients zero, a spike. The parameters include an all-zero array
(a bias at init) and a zero output channel, where AGC's eps sets the limit. Expected: the gradients
after every call, from the reference `transform` in float64 (its state carried from call to call).

A schedule is checked on its values at steps 0..K-1 (0-based: the first update reads schedule(0),
specs/schedules.md), K its total_steps when it has one, else SCHEDULE_STEPS; a schedule with an
end is also run BEYOND steps past it, where normref holds the final value and some peers do not.
Values are Python floats, so schedule cases are float64 only.

Nothing here names an optimizer, transform or schedule. Which configurations run comes from the
registry entry: its defaults (with a value for each required hyperparameter, by name), then each
probe of its family whose hyperparameters the entry has and whose values its factory accepts.
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
    "ScheduleCase",
    "TrajectoryCase",
    "TransformCase",
    "load_cases",
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

# Gradient transforms: a vector, a matrix, a conv kernel (2-D and 4-D arrays are where the torch
# and optax layouts of AGC's units differ), and a bias that is all zeros.
TRANSFORM_SHAPES: tuple[tuple[int, ...], ...] = ((7,), (3, 5), (4, 2, 3, 3), (5,))
# The scale of every gradient at each call. With these 99 elements the global norm is about
# 10 * scale: above a max_norm of 1 (and 0.1), below it, exactly 0, a spike, far below.
CALL_SCALES = (1.0, 1e-2, 0.0, 1e3, 1e-4)

SCHEDULE_STEPS = 30  # the steps of a schedule without an end
BEYOND = 5  # the steps run past the end of a schedule that has one

# Values for hyperparameters without a default, by name (never by entry).
REQUIRED = {
    "lr": 0.01,
    "max_norm": 1.0,
    "clip_value": 0.5,
    "value": 0.1,
    "step_size": 3,
    "gamma": 0.8,
    "peak": 0.1,
    "warmup_steps": 5,
    "total_steps": 20,
    "max_value": 0.1,
}
# Configurations beyond the defaults, per family, each changing the hyperparameters it names. One
# applies to an entry that has every hyperparameter it names and accepts the values; duplicates are
# dropped.
PROBES: dict[str, tuple[Mapping[str, Any], ...]] = {
    "optimizer": (
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
    ),
    "gradient_transform": (
        {"max_norm": 0.1},
        {"clip_value": 2.0},
        {"clipping": 0.1, "eps": 0.1},
    ),
    "schedule": (
        {"value": 2.5},
        {"gamma": 0.5},
        {"step_size": 1},
        {"warmup_steps": 0},
        # a warmup that starts above 0 and a decay to a nonzero end
        {"initial": 0.01, "final": 0.001},
        {"warmup_steps": 7, "total_steps": 8, "initial": 0.05, "final": 0.02},  # one decay step
        {"total_steps": 7},
        {"anneal": "linear"},
        {"three_phase": True},
        {"total_steps": 37, "pct_start": 0.25, "anneal": "linear", "three_phase": True},
        {"pct_start": 0.5, "div_factor": 10.0, "final_div_factor": 100.0},
        {"pct_start": 0.5, "base": 0.8, "max_value": 0.99},
    ),
}


def optimizers() -> dict[str, Any]:
    """Every entry of the registry's OPTIMIZERS table that verify checks, by name: the optimizers,
    gradient transforms and schedules (the families in KINDS); empty where normref has none."""
    table = getattr(registry, "OPTIMIZERS", {})
    return {name: info for name, info in table.items() if info.family in KINDS}


@dataclass(frozen=True)
class _Case:
    """What the runner reads from a golden case, for a generated one. `expected(built, arrays)`
    gives the output arrays that `built` (the entry's factory, or a variant's, called with the
    case's hyperparameters) computes from the case's inputs in float64: the golden values, and the
    diagnosis' candidates."""

    id: str
    op: str  # the entry's registry name
    index: int  # its configuration
    dtype: str
    hyper: Mapping[str, Any]  # every hyperparameter, ready for the factory
    inputs: Mapping[str, tuple[int, ...]]
    outputs: Mapping[str, tuple[int, ...]]
    forward_tol: Tolerance
    backward_tol: Tolerance

    @property
    def grads(self) -> Mapping[str, tuple[int, ...]]:
        return {}  # nothing is differentiated: the outputs are all there is to compare

    @property
    def info(self) -> Any:
        return registry.OPTIMIZERS[self.op]

    def arrays(self) -> dict[str, np.ndarray]:
        """The inputs (in the case dtype) and the expected outputs (float64), the same on every
        call."""
        given = self._inputs()
        return {**given, **self.expected(self.info.factory(**self.hyper), given)}

    def _inputs(self) -> dict[str, np.ndarray]:
        return {}

    def expected(self, built: Any, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _rng(self) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(zlib.crc32(self.id.encode("ascii"))))


@dataclass(frozen=True)
class TrajectoryCase(_Case):
    """An optimizer over STEPS updates: `input.param.<i>` (shape), `input.grads.<i>` (STEPS,
    *shape) and `output.param.<i>` (STEPS, *shape), the params after each update."""

    kind: str = "trajectory"
    steps: int = STEPS

    @property
    def count(self) -> int:
        """How many parameter arrays the trajectory updates."""
        return len(SHAPES)

    def _inputs(self) -> dict[str, np.ndarray]:
        rng = self._rng()
        arrays = {
            f"input.param.{i}": rng.standard_normal(s).astype(self.dtype)
            for i, s in enumerate(SHAPES)
        }
        sequence = []
        for t in range(self.steps):
            scale = 0.0 if t == ZERO_STEP else 1e3 if t == LARGE_STEP else 1.0
            if t in SMALL_STEPS:
                scale = 1e-4
            sequence.append([(scale * rng.standard_normal(s)).astype(self.dtype) for s in SHAPES])
        for i in range(self.count):
            arrays[f"input.grads.{i}"] = np.stack([g[i] for g in sequence])
        return arrays

    def expected(self, built: Any, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        params = [arrays[f"input.param.{i}"] for i in range(self.count)]
        grads = [
            [arrays[f"input.grads.{i}"][t] for i in range(self.count)] for t in range(self.steps)
        ]
        trajectory = reference_trajectory(built, params, grads)
        return {f"output.param.{i}": p for i, p in enumerate(trajectory)}

    def position(self, index: tuple[int, ...]) -> str:
        return f"at step {index[0]} (0-based), index {index[1:]}"


@dataclass(frozen=True)
class TransformCase(_Case):
    """A gradient transform over `steps` calls (one per CALL_SCALES) on the same parameters:
    `input.param.<i>` (shape), `input.grads.<i>` (calls, *shape) and `output.grads.<i>` (calls,
    *shape), the gradients each call returns."""

    kind: str = "transform"
    steps: int = len(CALL_SCALES)  # the calls

    @property
    def count(self) -> int:
        return len(TRANSFORM_SHAPES)

    def _inputs(self) -> dict[str, np.ndarray]:
        rng = self._rng()
        arrays = {}
        for i, shape in enumerate(TRANSFORM_SHAPES):
            p = rng.standard_normal(shape)
            if i == self.count - 1:
                p[...] = 0.0  # a bias at init: AGC's limit is eps * clipping, not 0
            elif p.ndim >= 2:
                p[0] = 0.0  # a dead output channel: the same, for one unit of a weight
            arrays[f"input.param.{i}"] = p.astype(self.dtype)
            grads = [scale * rng.standard_normal(shape) for scale in CALL_SCALES]
            arrays[f"input.grads.{i}"] = np.stack(grads).astype(self.dtype)
        return arrays

    def expected(self, built: Any, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        params = [arrays[f"input.param.{i}"].astype(np.float64) for i in range(self.count)]
        state = built.init(params)
        history: list[list[np.ndarray]] = [[] for _ in params]
        for t in range(self.steps):
            grads = [arrays[f"input.grads.{i}"][t].astype(np.float64) for i in range(self.count)]
            grads, state = built.transform(grads, state, params)
            for column, g in zip(history, grads):
                column.append(np.asarray(g, dtype=np.float64))
        return {f"output.grads.{i}": np.stack(column) for i, column in enumerate(history)}

    def position(self, index: tuple[int, ...]) -> str:
        return f"at call {index[0]} (0-based), index {index[1:]}"


@dataclass(frozen=True)
class ScheduleCase(_Case):
    """A schedule's values at steps 0..steps-1: `output.value` (steps,), float64."""

    kind: str = "schedule"
    steps: int = SCHEDULE_STEPS

    def expected(self, built: Any, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output.value": np.array([built(s) for s in range(self.steps)], dtype=np.float64)}

    def position(self, index: tuple[int, ...]) -> str:
        return f"at step {index[0]} (0-based)"


# family -> (case class, the letter of its ids, its dtypes)
KINDS: dict[str, tuple[type[_Case], str, tuple[str, ...]]] = {
    "optimizer": (TrajectoryCase, "t", DTYPES),
    "gradient_transform": (TransformCase, "g", DTYPES),
    "schedule": (ScheduleCase, "s", ("float64",)),
}


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
    """The hyperparameter sets of an entry's cases: defaults first, then each probe of its family
    that applies, without duplicates."""
    base = {name: REQUIRED[name] for name in info.required if name in REQUIRED}
    if len(base) != len(info.required):
        return []  # a required hyperparameter with no generic value: no case can be made
    base.update(info.hyperparams)
    configs: list[dict[str, Any]] = []
    for probe in ({}, *PROBES.get(info.family, ())):
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


def _shapes(kind: str, steps: int) -> dict[str, Any]:
    """The case's inputs and outputs, name -> shape."""
    if kind == "schedule":
        return {"inputs": {}, "outputs": {"value": (steps,)}}
    shapes = SHAPES if kind == "trajectory" else TRANSFORM_SHAPES
    name = "param" if kind == "trajectory" else "grads"
    return {
        "inputs": {
            **{f"param.{i}": s for i, s in enumerate(shapes)},
            **{f"grads.{i}": (steps, *s) for i, s in enumerate(shapes)},
        },
        "outputs": {f"{name}.{i}": (steps, *s) for i, s in enumerate(shapes)},
    }


def _runs(cls: type[_Case], info: Any) -> list[tuple[dict[str, Any], int]]:
    """(hyperparameters, steps) of each case of an entry, its index the position here."""
    configs = _configurations(info)
    if cls is not ScheduleCase:
        return [(hyper, cls.steps) for hyper in configs]
    # a schedule over its span; then each one with an end again, BEYOND steps past it
    runs = [(hyper, hyper.get("total_steps", SCHEDULE_STEPS)) for hyper in configs]
    return runs + [(h, h["total_steps"] + BEYOND) for h in configs if "total_steps" in h]


def _cases_of(name: str, info: Any) -> list[_Case]:
    cls, letter, dtypes = KINDS[info.family]
    return [
        cls(
            id=f"{name}-{letter}{index:02d}-{dtype}",
            op=name,
            index=index,
            dtype=dtype,
            hyper=hyper,
            **_shapes(cls.kind, steps),
            forward_tol=TOLERANCES[dtype]["forward"],
            backward_tol=TOLERANCES[dtype]["backward"],
            steps=steps,
        )
        for index, (hyper, steps) in enumerate(_runs(cls, info))
        for dtype in dtypes
    ]


def load_trajectories() -> list[TrajectoryCase]:
    """Every trajectory case of every registered optimizer, in registry order."""
    return [c for c in load_cases() if isinstance(c, TrajectoryCase)]


def load_cases() -> list[_Case]:
    """Every generated case of the OPTIMIZERS table (optimizer trajectories, gradient-transform
    calls, schedule values), in registry order."""
    return [case for name, info in optimizers().items() for case in _cases_of(name, info)]
