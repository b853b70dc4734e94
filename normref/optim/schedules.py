"""Learning-rate (and momentum) schedules: pure callables `step -> value`. Spec: specs/schedules.md.

`step` is the number of updates already taken (0-based): the first update reads schedule(0). That
is what a PyTorch user gets from a scheduler stepped after each optimizer.step() (LambdaLR applies
lambda(0) to the first step) and what optax passes (its count before the increment).

Each schedule is a small immutable object: its repr names it and its arguments, and calling it
twice with the same step gives the same float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from normref import _checks

__all__ = [
    "constant",
    "step_decay",
    "exponential_decay",
    "cosine_with_warmup",
    "linear_with_warmup",
    "one_cycle",
    "one_cycle_momentum",
]


@dataclass(frozen=True)
class _Schedule:
    name: str
    arguments: tuple[tuple[str, Any], ...]
    at: Callable[[int], float] = field(repr=False, compare=False)

    def __call__(self, step: int) -> float:
        return float(self.at(_checks.integer(self.name, "step", step, 0)))

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.arguments)})"


def _finite(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{op}: {name} must be finite, got {value!r}")
    return v


def constant(value: float) -> _Schedule:
    """value at every step."""
    value = _finite("constant", "value", value)
    return _Schedule("constant", (("value", value),), lambda step: value)


def step_decay(value: float, step_size: int, gamma: float = 0.1) -> _Schedule:
    """value * gamma ** (step // step_size): multiplied by gamma every step_size steps
    (torch.optim.lr_scheduler.StepLR)."""
    op = "step_decay"
    value = _finite(op, "value", value)
    step_size = _checks.integer(op, "step_size", step_size, 1)
    gamma = _checks.nonnegative(op, "gamma", gamma)
    return _Schedule(
        op,
        (("value", value), ("step_size", step_size), ("gamma", gamma)),
        lambda step: value * gamma ** (step // step_size),
    )


def exponential_decay(value: float, gamma: float) -> _Schedule:
    """value * gamma ** step (torch.optim.lr_scheduler.ExponentialLR)."""
    op = "exponential_decay"
    value = _finite(op, "value", value)
    gamma = _checks.nonnegative(op, "gamma", gamma)
    return _Schedule(op, (("value", value), ("gamma", gamma)), lambda step: value * gamma**step)


def _warmup_then(
    op: str, peak: Any, warmup_steps: Any, total_steps: Any, initial: Any, final: Any
) -> tuple[float, int, int, float, float]:
    peak = _finite(op, "peak", peak)
    warmup_steps = _checks.integer(op, "warmup_steps", warmup_steps, 0)
    total_steps = _checks.integer(op, "total_steps", total_steps, 1)
    if total_steps <= warmup_steps:
        raise ValueError(
            f"{op}: total_steps must be > warmup_steps (the decay needs a step), got "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    return (
        peak,
        warmup_steps,
        total_steps,
        _finite(op, "initial", initial),
        _finite(op, "final", final),
    )


def cosine_with_warmup(
    peak: float,
    warmup_steps: int,
    total_steps: int,
    *,
    initial: float = 0.0,
    final: float = 0.0,
) -> _Schedule:
    """Linear warmup from `initial` to `peak` over warmup_steps, then a half cosine from `peak` to
    `final` over the remaining total_steps - warmup_steps, then `final` (total_steps includes the
    warmup, as optax's warmup_cosine_decay_schedule and transformers' cosine schedule)."""
    op = "cosine_with_warmup"
    peak, warmup, total, initial, final = _warmup_then(
        op, peak, warmup_steps, total_steps, initial, final
    )

    def at(step: int) -> float:
        if step < warmup:
            return initial + (peak - initial) * step / warmup
        if step >= total:
            return final
        progress = (step - warmup) / (total - warmup)
        return final + (peak - final) * (1 + math.cos(math.pi * progress)) / 2

    arguments = (("peak", peak), ("warmup_steps", warmup), ("total_steps", total))
    return _Schedule(op, arguments + (("initial", initial), ("final", final)), at)


def linear_with_warmup(
    peak: float,
    warmup_steps: int,
    total_steps: int,
    *,
    initial: float = 0.0,
    final: float = 0.0,
) -> _Schedule:
    """Linear warmup from `initial` to `peak` over warmup_steps, then a straight line from `peak`
    to `final` at step total_steps, then `final` (transformers' linear schedule with warmup)."""
    op = "linear_with_warmup"
    peak, warmup, total, initial, final = _warmup_then(
        op, peak, warmup_steps, total_steps, initial, final
    )

    def at(step: int) -> float:
        if step < warmup:
            return initial + (peak - initial) * step / warmup
        if step >= total:
            return final
        return peak + (final - peak) * (step - warmup) / (total - warmup)

    arguments = (("peak", peak), ("warmup_steps", warmup), ("total_steps", total))
    return _Schedule(op, arguments + (("initial", initial), ("final", final)), at)


# -- one-cycle (Smith & Topin 2018; Smith 2018), PyTorch's OneCycleLR phase by phase ------------


def _anneal(kind: str) -> Callable[[float, float, float], float]:
    if kind == "cos":
        # PyTorch's arithmetic order, so its values are reproduced to the last bit
        return lambda start, end, pct: end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return lambda start, end, pct: (end - start) * pct + start


def _one_cycle(
    op: str,
    total_steps: Any,
    pct_start: Any,
    anneal: Any,
    three_phase: Any,
    endpoints: Callable[[bool], list[tuple[float, float]]],
) -> Callable[[int], float]:
    """The phase walk of OneCycleLR: phase i runs from the previous phase's end step to its own,
    annealing between endpoints(three_phase)[i]; after the last step the value stays put."""
    total = _checks.integer(op, "total_steps", total_steps, 1)
    pct_start = _checks.unit_interval(op, "pct_start", pct_start)
    if anneal not in ("cos", "linear"):
        raise ValueError(f"{op}: anneal must be 'cos' or 'linear', got {anneal!r}")
    three_phase = _checks.flag(op, "three_phase", three_phase)
    ends = [float(pct_start * total) - 1]
    if three_phase:
        ends.append(float(2 * pct_start * total) - 2)
    ends.append(total - 1)
    pairs = endpoints(three_phase)
    curve = _anneal(anneal)

    def at(step: int) -> float:
        step = min(step, total - 1)  # PyTorch raises past the end; a schedule holds its last value
        start_step = 0.0
        for i, (end_step, (start, end)) in enumerate(zip(ends, pairs)):
            if step <= end_step or i == len(ends) - 1:
                return curve(start, end, (step - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable: the last phase always answers")

    return at


def one_cycle(
    max_value: float,
    total_steps: int,
    *,
    pct_start: float = 0.3,
    anneal: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> _Schedule:
    """Smith's one-cycle learning rate, torch.optim.lr_scheduler.OneCycleLR's values: from
    max_value / div_factor up to max_value over the first pct_start of total_steps, then down to
    max_value / div_factor / final_div_factor (three_phase: back to the start value first)."""
    op = "one_cycle"
    max_value = _finite(op, "max_value", max_value)
    div_factor = _checks.positive(op, "div_factor", div_factor)
    final_div_factor = _checks.positive(op, "final_div_factor", final_div_factor)
    initial = max_value / div_factor
    minimum = initial / final_div_factor

    def endpoints(three: bool) -> list[tuple[float, float]]:
        if three:
            return [(initial, max_value), (max_value, initial), (initial, minimum)]
        return [(initial, max_value), (max_value, minimum)]

    at = _one_cycle(op, total_steps, pct_start, anneal, three_phase, endpoints)
    arguments = (
        ("max_value", max_value),
        ("total_steps", total_steps),
        ("pct_start", pct_start),
        ("anneal", anneal),
        ("div_factor", div_factor),
        ("final_div_factor", final_div_factor),
        ("three_phase", three_phase),
    )
    return _Schedule(op, arguments, at)


def one_cycle_momentum(
    total_steps: int,
    *,
    base: float = 0.85,
    max_value: float = 0.95,
    pct_start: float = 0.3,
    anneal: str = "cos",
    three_phase: bool = False,
) -> _Schedule:
    """The momentum (or Adam's b1) that OneCycleLR cycles against the learning rate by default
    (cycle_momentum=True): from max_value down to base while the lr rises, back up as it falls."""
    op = "one_cycle_momentum"
    base = _finite(op, "base", base)
    max_value = _finite(op, "max_value", max_value)

    def endpoints(three: bool) -> list[tuple[float, float]]:
        if three:
            return [(max_value, base), (base, max_value), (max_value, max_value)]
        return [(max_value, base), (base, max_value)]

    at = _one_cycle(op, total_steps, pct_start, anneal, three_phase, endpoints)
    arguments = (
        ("total_steps", total_steps),
        ("base", base),
        ("max_value", max_value),
        ("pct_start", pct_start),
        ("anneal", anneal),
        ("three_phase", three_phase),
    )
    return _Schedule(op, arguments, at)
