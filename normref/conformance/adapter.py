"""The adapter protocol: how `normref verify` runs an implementation other than normref's own.

An adapter is a module (or any object) with up to four tables, each optional but not all absent::

    NAME = "myframework 1.2"            # optional: the label in the report (default: module name)

    OPS = {                              # registry op name -> implementation
        "layer_norm": {"forward": ln_forward, "backward": ln_backward},
        "rms_norm": rms_forward,         # a bare callable: forward only
        "batch_norm": {"vjp": bn_vjp},   # forward and backward in one
    }
    OPTIMIZERS = {"sgd": make_sgd}       # registry.OPTIMIZERS name (family "optimizer") -> factory
    TRANSFORMS = {"clip_by_value": make_clip}   # family "gradient_transform" -> factory
    SCHEDULES = {"exponential_decay": make_exp}  # family "schedule" -> factory

Everything crosses the boundary as NumPy arrays, with normref's names and meanings (specs/<op>.md):

- ``forward(*inputs, **hyper) -> outputs``. `inputs`: the op's array inputs in registry order
  (``normref.registry.OPS[op].inputs``), None where a case leaves one out; `hyper`: every
  hyperparameter of the op by name. Outputs: one array, a tuple in the order of
  ``OPS[op].outputs``, or a dict by output name, in which an output left out is reported as not
  provided and not compared (a peer that keeps no running statistics, say).
- ``backward(dy, *inputs, **hyper) -> grads`` (optional): the gradients of the op's
  differentiable inputs (``OPS[op].differentiable``) for the upstream gradient `dy` of the first
  output; a tuple in that order, or a dict by input name; None for an absent input.
- ``vjp(*inputs, **hyper) -> (outputs, pullback)``, ``pullback(dy) -> grads``: the same two in
  one call, natural for autograd frameworks (torch.autograd, jax.vjp).
- ``factory(params, **hyper) -> step``, ``step(grads) -> params``: an optimizer over a list of
  parameter arrays; `step` applies one update with a list of gradients and returns the parameters
  after it (it may update the arrays it was given in place).
- ``TRANSFORMS[name](params, **hyper) -> apply``, ``apply(grads) -> grads``: a gradient transform
  (clipping, specs/clipping.md) for a list of parameter arrays, which it may read (AGC) but must
  not change; `apply` takes one list of gradients and returns the transformed list, in the
  gradients' dtype (it may modify the arrays it was given). A case calls `apply` several times,
  each with gradients of another scale; carry any state of the transform from call to call.
- ``SCHEDULES[name](**hyper) -> schedule``, ``schedule(step) -> float``: a schedule
  (specs/schedules.md); `step` is 0-based, the number of updates already taken, and is asked for
  in order 0, 1, 2, ... (a scheduler that can only advance one step at a time can).

Inputs are fresh copies, and a forward that modifies them fails its case (normref's ops are pure:
return new running statistics rather than updating them in place). Raise NotImplementedError
(with the reason) for a case your implementation does not support, such as a dtype or a
hyperparameter value, or a schedule's step it has no value for (from the factory, `step`,
`apply` or `schedule` alike): the case is reported "not provided", never passed or failed. The
same from a backward means the case is checked forward only.

`load_target` turns the TARGET of `normref verify TARGET` into backends for the runner: `normref`
(this install's fast backends), `torch`, `jax`, `package.module`, `package.module:attribute` or a
path to a `.py` file. examples/adapter_template.py is a complete adapter to copy.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normref import registry
from normref.conformance.runner import (
    NOT_GIVEN,
    Backend,
    NotProvided,
    Outcome,
    normref_backends,
)
from normref.conformance.trajectories import optimizers

__all__ = ["AdapterBackend", "Implementation", "TABLES", "Target", "TargetError", "load_target"]

# Built-in peers: TARGET name -> the module holding its adapter.
BUILTIN = {
    "torch": "normref.conformance.torch_adapter",
    "jax": "normref.conformance.jax_adapter",
}


# The adapter's table for each family of the registry's OPTIMIZERS table.
TABLES = {"optimizer": "OPTIMIZERS", "gradient_transform": "TRANSFORMS", "schedule": "SCHEDULES"}


class TargetError(Exception):
    """The TARGET cannot be used: not importable, or not an adapter (a usage error, exit 2)."""


@dataclass(frozen=True)
class Implementation:
    """One op of an adapter, normalized from its table entry."""

    forward: Callable[..., Any] | None = None
    backward: Callable[..., Any] | None = None
    vjp: Callable[..., Any] | None = None

    @classmethod
    def parse(cls, op: str, entry: Any) -> Implementation:
        if callable(entry):
            return cls(forward=entry)
        if not isinstance(entry, Mapping):
            raise TargetError(
                f"OPS[{op!r}] must be a callable (the forward) or a dict with 'forward' "
                f"(and optionally 'backward') or 'vjp', got {type(entry).__name__}"
            )
        unknown = set(entry) - {"forward", "backward", "vjp"}
        if unknown:
            raise TargetError(f"OPS[{op!r}] has unknown keys {sorted(unknown)}")
        impl = cls(**dict(entry))
        if impl.forward is None and impl.vjp is None:
            raise TargetError(f"OPS[{op!r}] needs a 'forward' or a 'vjp'")
        for key, value in entry.items():
            if value is not None and not callable(value):  # None: not provided
                raise TargetError(f"OPS[{op!r}][{key!r}] must be callable, got {value!r}")
        return impl


@dataclass(frozen=True)
class Target:
    """What `normref verify TARGET` checks: the backends, the label, notes for the report, and
    whether the cases of the OPTIMIZERS table (optimizers, transforms, schedules) are part of it."""

    label: str
    backends: list[Backend]
    notes: list[str]
    optimizers: bool  # whether the OPTIMIZERS table's cases are run (adapters), or not (normref)
    # normref's own kernels compute in float32 and round once, as the golden values do: for them a
    # lower-precision miss is a bug, never PRECISION (runner.py)
    strict: bool = False


class AdapterBackend:
    """Runs golden cases and generated cases (trajectories, transforms, schedules) through an
    adapter (the protocol above)."""

    def __init__(
        self,
        name: str,
        ops: Mapping[str, Any],
        optimizers: Mapping[str, Any],
        transforms: Mapping[str, Any] | None = None,
        schedules: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.ops = {op: Implementation.parse(op, entry) for op, entry in ops.items()}
        self.optimizers = dict(optimizers)
        self.transforms = dict(transforms or {})
        self.schedules = dict(schedules or {})
        for table, entries in (
            ("OPTIMIZERS", self.optimizers),
            ("TRANSFORMS", self.transforms),
            ("SCHEDULES", self.schedules),
        ):
            for op, factory in entries.items():
                if not callable(factory):
                    raise TargetError(f"{table}[{op!r}] must be callable, got {factory!r}")

    @property
    def provided(self) -> set[str]:
        """Every registry name the adapter has an entry for."""
        return set(self.ops) | set(self.optimizers) | set(self.transforms) | set(self.schedules)

    def handles(self, case: Any) -> bool:
        return True  # an op the adapter lacks is reported "not provided" by `run`

    def unavailable(self, case: Any) -> str | None:
        return None

    def run(self, case: Any, arrays: Mapping[str, np.ndarray]) -> Outcome:
        runs = {
            "trajectory": self._trajectory,
            "transform": self._transform,
            "schedule": self._schedule,
        }
        try:
            return runs.get(getattr(case, "kind", "op"), self._op)(case, arrays)
        except NotImplementedError as e:  # the adapter's way of saying "not this case"
            raise NotProvided(str(e) or "the adapter raised NotImplementedError") from None

    def _op(self, case: Any, arrays: Mapping[str, np.ndarray]) -> Outcome:
        impl = self.ops.get(case.op)
        if impl is None:
            raise NotProvided("not in the adapter's OPS")
        info = case.info
        given = {name: arrays[f"input.{name}"].copy() for name in case.inputs}
        dy = arrays["input.dy"].copy()
        args = [given.get(name) for name in info.inputs]
        hyper = dict(case.hyper)
        grads: Any = None
        backward_note = ""
        if impl.vjp is not None:
            outputs, pullback = impl.vjp(*args, **hyper)
            try:
                grads = pullback(dy)
            except NotImplementedError as e:
                backward_note = f"backward not provided: {e}"
        else:
            outputs = impl.forward(*args, **hyper)
            if impl.backward is None:
                backward_note = "backward not provided"
            else:
                try:
                    grads = impl.backward(dy, *args, **hyper)
                except NotImplementedError as e:
                    backward_note = f"backward not provided: {e}"
        return Outcome(
            outputs=_outputs(info, outputs),
            grads=None if grads is None else _grads(info, grads),
            ran=self.name,
            inputs_after={
                **{f"input.{k}": v for k, v in given.items()},
                "input.dy": dy,
            },
            note=backward_note,
        )

    def _trajectory(self, case: Any, arrays: Mapping[str, np.ndarray]) -> Outcome:
        factory = self.optimizers.get(case.op)
        if factory is None:
            raise NotProvided("not in the adapter's OPTIMIZERS")
        params = [arrays[f"input.param.{i}"].copy() for i in range(case.count)]
        step = factory(params, **dict(case.hyper))
        history: list[list[np.ndarray]] = [[] for _ in params]
        for t in range(case.steps):
            after = step([arrays[f"input.grads.{i}"][t].copy() for i in range(case.count)])
            if len(after) != case.count:
                raise ValueError(f"step returned {len(after)} arrays, expected {case.count}")
            for column, p in zip(history, after):
                column.append(np.array(p, copy=True))  # the adapter may reuse its arrays
        return Outcome(outputs=[np.stack(c) for c in history], grads=None, ran=self.name)

    def _transform(self, case: Any, arrays: Mapping[str, np.ndarray]) -> Outcome:
        factory = self.transforms.get(case.op)
        if factory is None:
            raise NotProvided("not in the adapter's TRANSFORMS")
        params = [arrays[f"input.param.{i}"].copy() for i in range(case.count)]
        apply = factory(params, **dict(case.hyper))
        history: list[list[np.ndarray]] = [[] for _ in params]
        for t in range(case.steps):
            grads = apply([arrays[f"input.grads.{i}"][t].copy() for i in range(case.count)])
            if len(grads) != case.count:
                raise ValueError(f"apply returned {len(grads)} arrays, expected {case.count}")
            for column, g in zip(history, grads):
                column.append(np.array(g, copy=True))
        return Outcome(
            outputs=[np.stack(c) for c in history],
            grads=None,
            ran=self.name,
            # a transform reads the parameters; changing them is a bug
            inputs_after={f"input.param.{i}": p for i, p in enumerate(params)},
        )

    def _schedule(self, case: Any, arrays: Mapping[str, np.ndarray]) -> Outcome:
        factory = self.schedules.get(case.op)
        if factory is None:
            raise NotProvided("not in the adapter's SCHEDULES")
        schedule = factory(**dict(case.hyper))
        values = [float(schedule(step)) for step in range(case.steps)]
        return Outcome(outputs=[np.array(values, dtype=np.float64)], grads=None, ran=self.name)


def _as_numpy(value: Any) -> Any:
    return None if value is None else np.asarray(value)


def _outputs(info: Any, outputs: Any) -> list[Any]:
    """The forward's outputs in registry order; a name missing from a dict is NOT_GIVEN."""
    if isinstance(outputs, Mapping):
        unknown = set(outputs) - set(info.outputs)
        if unknown:
            raise ValueError(f"outputs {sorted(unknown)} are not outputs of {info.name}")
        return [_as_numpy(outputs[n]) if n in outputs else NOT_GIVEN for n in info.outputs]
    if isinstance(outputs, (tuple, list)):
        return [_as_numpy(y) for y in outputs]
    return [_as_numpy(outputs)]


def _grads(info: Any, grads: Any) -> dict[str, Any]:
    """The gradients by differentiable input name."""
    if isinstance(grads, Mapping):
        return {n: _as_numpy(grads.get(n)) for n in info.differentiable}
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(info.differentiable):
        raise ValueError(
            f"backward returned {len(grads)} gradients; {info.name} has "
            f"{len(info.differentiable)} differentiable inputs {list(info.differentiable)}"
        )
    return {n: _as_numpy(g) for n, g in zip(info.differentiable, grads)}


# ---------------------------------------------------------------------------------------------
# Resolving a TARGET


def load_target(spec: str) -> Target:
    """The backends for `normref verify TARGET`; raises TargetError for anything unusable."""
    if spec == "normref":
        backends, notes = normref_backends()
        return Target("normref", backends, notes, optimizers=False, strict=True)
    if spec in BUILTIN:
        try:
            adapter = importlib.import_module(BUILTIN[spec])
        except ImportError as e:
            raise TargetError(
                f"target {spec!r} needs {e.name or spec}, which is not installed"
            ) from e
        return _from_adapter(adapter, getattr(adapter, "NAME", spec))
    adapter, default_label = _import_user(spec)
    return _from_adapter(adapter, getattr(adapter, "NAME", default_label))


def _import_user(spec: str) -> tuple[Any, str]:
    """The adapter object named by `spec`: a file path, or `package.module[:attribute]`."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise TargetError(f"target {spec!r}: no such file")
        name = f"normref_adapter_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise TargetError(f"target {spec!r}: not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise TargetError(f"target {spec!r} failed to import: {type(e).__name__}: {e}") from e
        return module, path.stem
    module_name, _, attribute = spec.partition(":")
    # As `python -m` and pytest do: a module in the current directory is importable, so that
    # `normref verify my_pkg.adapter` works from a checkout without installing it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise TargetError(f"target {spec!r}: cannot import {module_name!r} ({e})") from e
    except Exception as e:
        raise TargetError(f"target {spec!r} failed to import: {type(e).__name__}: {e}") from e
    for part in filter(None, attribute.split(".")):
        if not hasattr(obj, part):
            raise TargetError(f"target {spec!r}: {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj, spec


def _from_adapter(adapter: Any, label: str) -> Target:
    tables = {name: getattr(adapter, name, None) or {} for name in ("OPS", *TABLES.values())}
    wrong = [name for name, table in tables.items() if not isinstance(table, Mapping)]
    if wrong:
        raise TargetError(f"{label}: {', '.join(wrong)} must be dicts")
    if not any(tables.values()):
        raise TargetError(
            f"{label} is not a normref adapter: it has none of the tables "
            f"{', '.join(tables)} (see examples/adapter_template.py)"
        )
    # each table takes the registry names of its own kind: a schedule in OPTIMIZERS is refused
    known = {"OPS": set(registry.OPS)}
    for family, name in TABLES.items():
        known[name] = {n for n, info in optimizers().items() if info.family == family}
    unknown = [
        f"{name} names {sorted(set(table) - known[name])}, which normref does not know there "
        f"(it knows {', '.join(sorted(known[name])) or 'none'})"
        for name, table in tables.items()
        if set(table) - known[name]
    ]
    if unknown:
        raise TargetError(f"{label}: {'; '.join(unknown)}")
    backend = AdapterBackend(
        str(label),
        tables["OPS"],
        tables["OPTIMIZERS"],
        tables["TRANSFORMS"],
        tables["SCHEDULES"],
    )
    notes = list(getattr(adapter, "NOTES", ()))
    return Target(str(label), [backend], notes, optimizers=True)
