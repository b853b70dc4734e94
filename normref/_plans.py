"""Call plans: what an op's checks and dispatch conclude about a call, kept per call signature, so
that the next call of the same kind goes straight to the work.

Why: at (64, 768) LayerNorm's namespace resolution, argument checks, dispatch and shape arithmetic
took 5.6 us of a 13.8 us call, as long as the kernel's arithmetic; a training loop makes the same
call, with arrays of the same kind, every step.

Why it is safe (design.md §9 holds): a plan is stored only once the checks of its call have passed,
and it holds only what follows from the call's signature, never an array's data. A call finds a
plan only when its signature equals a checked one, so a call with a bad argument never finds one
and is refused as before. The signature is everything the checks and the plan read:

- of each NumPy array: shape, dtype and strides (whether it is laid out as a kernel takes it), and
  for an output also whether it is writable;
- every other argument as a (type, value) pair, so that True never finds the plan made for 1;
- the backend the context selects (`normref.use_backend`).

Only NumPy arrays are signed: a call with any other array (CuPy, torch, array-api-strict), or with
an unhashable argument (a list for a shape), is planned afresh every time, as it was before plans.

A plan also holds the kernel its call runs (what the kernel module's `entry` gave), so plans
assume that the registry, the loaded kernel modules (normref/_dispatch.py) and their settings stay
as they are, as they do outside tests; code that changes them calls clear().
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normref import _dispatch

__all__ = ["Plans", "clear", "signature"]

_MAX_PLANS = 64  # per op: a training loop makes a handful of kinds of calls
_EVERY: list[Plans] = []  # every op's plans, for clear()


def clear() -> None:
    """Drop every plan of every op."""
    for plans in _EVERY:
        plans._plans.clear()


def signature(arrays: tuple, out: Any, *values: Any) -> tuple | None:
    """The key of a call with `arrays` (None entries allowed), output `out` (or None) and other
    arguments `values`; None when the call is not planned (see the module docstring). Written for
    speed: it runs on every call."""
    key = [_dispatch.current_backend()]
    for a in arrays:
        if a is None:
            key.append(None)
        elif type(a) is np.ndarray:
            key.append((a.shape, a.dtype, a.strides))
        else:
            return None
    if out is not None:
        if type(out) is not np.ndarray:
            return None
        key.append((out.shape, out.dtype, out.strides, out.flags.writeable))
    for v in values:
        key.append(type(v))
        key.append(v)
    return tuple(key)


class Plans:
    """The plans of one op, by signature; at most _MAX_PLANS (when full, all are dropped)."""

    def __init__(self) -> None:
        self._plans: dict[tuple, Any] = {}
        _EVERY.append(self)

    def get(self, key: tuple | None) -> Any:
        """The plan kept under `key`, or None (always None for a call that is not planned)."""
        try:
            return None if key is None else self._plans.get(key)
        except TypeError:  # an unhashable argument
            return None

    def add(self, key: tuple | None, plan: Any) -> Any:
        """Keep `plan`, made by checking its call (design.md §9: a bad call raises before this),
        under `key`, unless the call is not planned; returns `plan`."""
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        try:
            if key is not None:
                self._plans[key] = plan
        except TypeError:  # an unhashable argument
            pass
        return plan
