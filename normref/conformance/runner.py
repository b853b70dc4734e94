"""Running golden cases on an implementation and judging the results (design.md §7).

- a *backend* runs one case (forward, then backward from the stored dy; or a generated case of
  the OPTIMIZERS table: an optimizer's whole trajectory, a gradient transform's calls, a
  schedule's values) on some implementation and hands back NumPy arrays, plus the name of what
  ran;
- `verify` loops over cases x backends, compares every output and gradient with the float64
  expected values using the tolerance table, gathers a `Report` with one row per (op, backend),
  and diagnoses every failing row (normref.conformance.diagnosis): which convention variant of
  the op, if any, the target computes instead.

`normref_backends()` is the target `normref`: this install's fast paths. On NumPy arrays, the
Numba kernels for the dtypes the registry lists for them, and backend="auto" for the other dtypes
(float16: the report shows that the reference ran); on CuPy arrays, the same with the CUDA kernels,
when CuPy imports and sees a GPU. Other targets (PyTorch, JAX, a user's module) are adapters:
normref.conformance.adapter.

Verdicts: PASS; FAIL; UNAVAILABLE (normref's own kernels cannot load: a broken install, which
fails the run); NOT PROVIDED (an adapter lacks the op, or says it does not support a case: listed,
never counted as passing, and not a failure); PRECISION, for a row only (below).

PRECISION: a row whose float64 cases all pass and whose only failures are finite value errors in
lower precisions that no convention variant explains. float64's tolerance is a few ulps, so a
float64 pass proves the target computes the op's formula with normref's conventions; what remains
is how it rounds: the golden float32/float16 values are the exact result rounded once, and a
target that rounds its intermediates to the input dtype (PyTorch's CPU float16 kernels) or loses a
cancellation cannot meet them. The row shows its worst error, and the run passes unless `strict`
(`normref verify --strict`) makes such rows failures. A crash, a wrong shape or dtype, a NaN, a
modified input, a matched variant, or any float64 failure stays FAIL.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from normref._dispatch import kernels_for
from normref.golden.store import GoldenCase, GoldenError, load_index
from normref.golden.tolerances import scaled_error

__all__ = [
    "Backend",
    "CaseResult",
    "NOT_GIVEN",
    "NormrefBackend",
    "NotProvided",
    "Outcome",
    "PRECISION",
    "Report",
    "Row",
    "normref_backends",
    "select",
    "verify",
]

PASS, FAIL, UNAVAILABLE, NOT_PROVIDED = "PASS", "FAIL", "UNAVAILABLE", "NOT PROVIDED"
PRECISION = "PRECISION"


class NotProvided(Exception):
    """Raised by a backend's `run` for a case its target does not provide (an op it lacks, a dtype
    or hyperparameter value it does not support). The message says why."""


class _NotGiven:
    """An output a target did not return (an adapter's dict left it out): reported, not compared."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()


@dataclass
class Outcome:
    """What a backend computed for one case, as NumPy arrays."""

    outputs: list[Any]  # the forward's outputs, in order (NOT_GIVEN: not returned by the target)
    grads: dict[str, Any] | None  # differentiable input -> gradient; None: backward not provided
    ran: str  # what actually computed it, e.g. "numba" or "reference"
    inputs_after: dict[str, np.ndarray] = field(default_factory=dict)  # to check purity
    note: str = ""  # said in the report whatever the verdict, e.g. "backward not provided"


class Backend(Protocol):
    name: str

    def handles(self, case: GoldenCase) -> bool:
        """Whether this backend is the one that should run `case`."""
        ...

    def unavailable(self, case: GoldenCase) -> str | None:
        """Why the backend cannot run `case` on this install, or None when it can."""
        ...

    def run(self, case: GoldenCase, arrays: Mapping[str, np.ndarray]) -> Outcome: ...


class NormrefBackend:
    """normref's own ops on one array library, through one `backend=` choice.

    `kernel` is the library's kernel backend ("numba" for NumPy, "cuda" for CuPy). With
    `auto=False` this runs the dtypes that kernel takes, naming it explicitly (so a missing kernel
    is an error, never a silent fallback); with `auto=True` it runs the remaining dtypes through
    backend="auto" and reports what dispatch chose.
    """

    def __init__(
        self,
        kernel: str,
        library: str,
        to_array: Callable[[np.ndarray], Any],
        to_numpy: Callable[[Any], np.ndarray],
        *,
        auto: bool = False,
    ) -> None:
        self.kernel = kernel
        self.library = library
        self.to_array = to_array
        self.to_numpy = to_numpy
        self.auto = auto
        self.name = f"{library} auto" if auto else kernel
        self._why_not: dict[str, str | None] = {}

    def _has_kernel(self, case: GoldenCase) -> bool:
        kernels = case.info.kernels.get(self.kernel)
        return kernels is not None and case.dtype in kernels.dtypes

    def handles(self, case: GoldenCase) -> bool:
        if getattr(case, "kind", "op") != "op":
            return False  # the OPTIMIZERS table's cases on the target normref: not yet
        return self._has_kernel(case) != self.auto

    def unavailable(self, case: GoldenCase) -> str | None:
        if self.auto:
            return None
        if case.op not in self._why_not:
            # Load the kernel module the way a call would (through the dispatcher), once per op.
            probe = self.to_array(np.zeros((1, 1), dtype=case.dtype))
            try:
                kernels_for(case.info, probe, self.kernel)
                self._why_not[case.op] = None
            except Exception as e:  # ImportError above all, but any failure to load counts
                self._why_not[case.op] = f"{type(e).__name__}: {e}"
        return self._why_not[case.op]

    def run(self, case: GoldenCase, arrays: Mapping[str, np.ndarray]) -> Outcome:
        op = case.info
        backend = "auto" if self.auto else self.kernel
        # Fresh copies: a kernel that wrote into its inputs must not spoil the next backend's run.
        given = {name: self.to_array(arrays[f"input.{name}"].copy()) for name in case.inputs}
        dy = self.to_array(arrays["input.dy"].copy())
        args = [given.get(name) for name in op.inputs]
        *outputs, saved = op.forward(*args, **case.hyper, backend=backend)
        grads = op.backward(dy, saved, backend=backend)
        if not isinstance(grads, tuple):
            grads = (grads,)
        ran = self.kernel
        if self.auto:
            ran = "reference" if kernels_for(op, args[0], "auto") is None else self.kernel
        return Outcome(
            outputs=[self.to_numpy(y) for y in outputs],
            grads={
                name: None if g is None else self.to_numpy(g)
                for name, g in zip(op.differentiable, grads)
            },
            ran=ran,
            inputs_after={
                **{f"input.{k}": self.to_numpy(v) for k, v in given.items()},
                "input.dy": self.to_numpy(dy),
            },
        )


def _cupy() -> tuple[Any, str | None]:
    """(cupy, None) when CuPy imports and sees a GPU, else (None, why not)."""
    try:
        import cupy
    except Exception as e:
        return None, f"CuPy is not importable ({type(e).__name__}: {e})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return None, f"CuPy finds no CUDA device ({type(e).__name__}: {e})"
    if count < 1:
        return None, "CuPy finds no CUDA device"
    return cupy, None


def normref_backends() -> tuple[list[Backend], list[str]]:
    """The backends of the target `normref`, and notes on what was skipped and why."""
    backends: list[Backend] = [
        NormrefBackend("numba", "numpy", np.asarray, np.asarray),
        NormrefBackend("numba", "numpy", np.asarray, np.asarray, auto=True),
    ]
    notes = []
    cupy, why = _cupy()
    if cupy is None:
        notes.append(f"CUDA skipped: {why}")
    else:
        backends += [
            NormrefBackend("cuda", "cupy", cupy.asarray, cupy.asnumpy),
            NormrefBackend("cuda", "cupy", cupy.asarray, cupy.asnumpy, auto=True),
        ]
    return backends, notes


@dataclass
class CaseResult:
    id: str
    op: str
    dtype: str
    backend: str  # the row label: backend name, plus what ran when dispatch chose
    verdict: str
    worst: float | None = None  # in units of the tolerance; None when the case did not run
    worst_in: str | None = None  # the array with the worst error
    errors: dict[str, float] = field(default_factory=dict)
    message: str = ""
    kind: str = "op"  # "op" (a golden case), "trajectory", "transform" or "schedule" (generated)
    checked: str = ""  # what was compared: "forward+backward", "forward", or the generated kind
    # problems other than values out of tolerance (a wrong shape or dtype, a modified input)
    structural: list[str] = field(default_factory=list)
    # For the diagnosis, kept out of reports: the case, its arrays, and what the target computed.
    case: Any = field(default=None, repr=False, compare=False)
    arrays: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    outcome: Outcome | None = field(default=None, repr=False, compare=False)


@dataclass
class Row:
    op: str
    backend: str
    cases: int  # cases that ran
    worst: float | None
    verdict: str
    messages: list[str] = field(default_factory=list)
    checked: str = ""  # what the cases compared, e.g. "forward+backward"
    not_provided: int = 0  # cases the target said it does not support
    diagnosis: str = ""  # for a failure: which convention the target follows, or the first diff
    diagnosis_detail: dict[str, Any] = field(default_factory=dict)  # for the JSON report


@dataclass
class Report:
    target: str
    rows: list[Row]
    cases: list[CaseResult]
    notes: list[str]
    strict: bool = False  # PRECISION rows fail the run

    @property
    def passing(self) -> tuple[str, ...]:
        """The row verdicts that do not fail the run."""
        return (PASS,) if self.strict else (PASS, PRECISION)

    @property
    def ok(self) -> bool:
        """Everything the target provides passed, and it provides something."""
        return any(row.verdict in self.passing for row in self.rows) and all(
            row.verdict in self.passing + (NOT_PROVIDED,) for row in self.rows
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "strict": self.strict,
            "notes": self.notes,
            "rows": [
                {
                    "op": r.op,
                    "backend": r.backend,
                    "cases": r.cases,
                    "not_provided": r.not_provided,
                    "checked": r.checked,
                    "worst": _num(r.worst),
                    "verdict": r.verdict,
                    "diagnosis": r.diagnosis,
                    "diagnosis_detail": r.diagnosis_detail,
                    "messages": r.messages,
                }
                for r in self.rows
            ],
            "cases": [
                {
                    "id": c.id,
                    "op": c.op,
                    "kind": c.kind,
                    "dtype": c.dtype,
                    "backend": c.backend,
                    "verdict": c.verdict,
                    "checked": c.checked,
                    "worst": _num(c.worst),
                    "worst_in": c.worst_in,
                    "errors": {k: _num(v) for k, v in c.errors.items()},
                    "message": c.message,
                }
                for c in self.cases
            ],
        }


def _num(x: float | None) -> float | str | None:
    # JSON has no infinity; say it in words rather than write a non-standard token
    return x if x is None or math.isfinite(x) else "inf"


def select(name: str, ops: str | Sequence[str] = "*", skip: Sequence[str] = ()) -> bool:
    """Whether an op or optimizer `name` matches one of the fnmatch patterns `ops` and none of
    `skip`."""
    patterns = [ops] if isinstance(ops, str) else list(ops)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns) and not any(
        fnmatch.fnmatchcase(name, s) for s in skip
    )


Progress = Callable[[int, int, str], None]  # (done, total, what runs next or just ran)


def verify(
    backends: Sequence[Backend],
    *,
    ops: str | Sequence[str] = "*",
    skip: Sequence[str] = (),
    dtypes: Sequence[str] | None = None,
    directory: str | Path | None = None,
    notes: Iterable[str] = (),
    target: str = "normref",
    trajectories: bool = False,
    diagnose: bool = True,
    strict: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Run every golden case whose op matches `ops` (fnmatch patterns) and no `skip` pattern, in
    `dtypes` (None: all), on each backend that handles it, and judge it against the golden values;
    with `trajectories`, the generated cases of the OPTIMIZERS table too (optimizer trajectories,
    gradient transforms, schedules: normref.conformance.trajectories). Each failing row is
    diagnosed, and marked PRECISION when it qualifies (above); `strict` makes those rows fail the
    report.

    A GoldenError from the index propagates (nothing can be checked); one from a single case's
    file fails that case."""
    cases: list[Any] = list(load_index(directory))
    if trajectories:
        from normref.conformance.trajectories import load_cases

        cases += load_cases()
    cases = [c for c in cases if select(c.op, ops, skip) and (dtypes is None or c.dtype in dtypes)]
    work = [(case, [b for b in backends if b.handles(case)]) for case in cases]
    total = sum(len(bs) for _, bs in work)
    done = 0
    results: list[CaseResult] = []
    for case, handling in work:
        if not handling:
            continue
        kind = getattr(case, "kind", "op")
        try:
            arrays = case.arrays()
        except Exception as e:  # GoldenError; for a trajectory, a reference that raised
            results.append(
                CaseResult(
                    case.id,
                    case.op,
                    case.dtype,
                    "golden data",
                    FAIL,
                    None,
                    kind=kind,
                    message=f"{type(e).__name__}: {e}"
                    if not isinstance(e, GoldenError)
                    else str(e),
                )
            )
            done += len(handling)
            continue
        for backend in handling:
            if progress is not None:
                progress(done, total, f"{case.id} [{backend.name}]")
            results.append(_run_one(backend, case, arrays))
            done += 1
    if progress is not None:
        progress(total, total, "")
    rows = _rows(results)
    if diagnose:
        _diagnose_rows(rows, results)
    return Report(target, rows, results, list(notes), strict=strict)


def _diagnose_rows(rows: list[Row], results: Sequence[CaseResult]) -> None:
    from normref.conformance.diagnosis import diagnose

    for row in rows:
        if row.verdict != FAIL:
            continue
        group = [r for r in results if (r.op, r.backend) == (row.op, row.backend)]
        found = diagnose(group)
        row.diagnosis = found.summary
        row.diagnosis_detail = found.to_json()
        if found.precision:
            row.verdict = PRECISION


def _run_one(backend: Backend, case: Any, arrays: Mapping[str, np.ndarray]) -> CaseResult:
    kind = getattr(case, "kind", "op")

    def result(label: str, verdict: str, **kw: Any) -> CaseResult:
        return CaseResult(
            case.id, case.op, case.dtype, label, verdict, kind=kind, case=case, arrays=arrays, **kw
        )

    why = backend.unavailable(case)
    if why is not None:
        return result(backend.name, UNAVAILABLE, message=why)
    try:
        outcome = backend.run(case, arrays)
    except NotProvided as e:
        return result(backend.name, NOT_PROVIDED, message=str(e))
    except Exception as e:  # a crash is a failure of this case, not of the whole run
        return result(backend.name, FAIL, worst=math.inf, message=f"{type(e).__name__}: {e}")
    label = backend.name if outcome.ran == backend.name else f"{backend.name} → {outcome.ran}"
    errors, problems = judge(case, arrays, outcome)
    structural = list(problems)

    worst_in = max(errors, key=errors.__getitem__) if errors else None
    worst = errors[worst_in] if worst_in else 0.0
    if worst > 1:
        problems.insert(0, f"{worst_in} off by {worst:.3g}x the tolerance")
    if kind != "op":
        checked = kind  # "trajectory", "transform", "schedule": outputs only
    else:
        checked = "forward" if outcome.grads is None and case.grads else "forward+backward"
    notes = [outcome.note] if outcome.note else []
    not_given = [n for n, y in zip(case.outputs, outcome.outputs) if y is NOT_GIVEN]
    if not_given:
        notes.append(f"outputs not provided: {', '.join(not_given)}")
    return result(
        label,
        FAIL if problems else PASS,
        worst=worst,
        worst_in=worst_in,
        errors=errors,
        message="; ".join(problems + notes),
        checked=checked,
        structural=structural,
        outcome=outcome,
    )


def judge(
    case: Any, arrays: Mapping[str, np.ndarray], outcome: Outcome
) -> tuple[dict[str, float], list[str]]:
    """(error of every compared array in units of the tolerance, problems found), comparing what
    a target computed with a case's expected values."""
    problems: list[str] = []
    errors: dict[str, float] = {}

    def one(key: str, got: Any, tol: Any) -> None:
        expected = arrays[key]
        if got is None:
            problems.append(f"{key} missing")
            errors[key] = math.inf
            return
        got = np.asarray(got)
        if got.shape != expected.shape:
            problems.append(f"{key} has shape {got.shape}, expected {expected.shape}")
        if expected.dtype.kind != "f":  # an exact output (a count): equal, or infinitely wrong
            if got.dtype.kind not in "iub":
                problems.append(f"{key} has dtype {got.dtype}, expected an integer")
            errors[key] = 0.0 if np.array_equal(got, expected) else math.inf
            return
        if got.shape == expected.shape and got.dtype != np.dtype(case.dtype):
            problems.append(f"{key} has dtype {got.dtype}, expected {case.dtype}")
        errors[key] = scaled_error(got, expected, tol)

    if len(outcome.outputs) != len(case.outputs):
        problems.append(f"{len(outcome.outputs)} outputs, expected {len(case.outputs)}")
    for name, got in zip(case.outputs, outcome.outputs):
        if got is not NOT_GIVEN:
            one(f"output.{name}", got, case.forward_tol)
    if outcome.outputs and outcome.outputs[0] is NOT_GIVEN:
        problems.append(f"output.{next(iter(case.outputs))} (the first output) not provided")
    if outcome.grads is not None:
        for name in case.grads:
            one(f"grad.{name}", outcome.grads.get(name), case.backward_tol)
    for key, after in outcome.inputs_after.items():
        if not np.array_equal(after, arrays[key], equal_nan=True):
            problems.append(f"{key} was modified in place")
    return errors, problems


def _rows(results: Sequence[CaseResult]) -> list[Row]:
    """One row per (op, backend label), in order of first appearance."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        groups.setdefault((r.op, r.backend), []).append(r)
    rows = []
    for (op, backend), group in groups.items():
        ran = [r for r in group if r.verdict in (PASS, FAIL)]
        absent = [r for r in group if r.verdict == NOT_PROVIDED]
        worsts = [r.worst for r in ran if r.worst is not None]
        if any(r.verdict == FAIL for r in group):
            verdict = FAIL
        elif any(r.verdict == UNAVAILABLE for r in group):
            verdict = UNAVAILABLE
        elif not ran:
            verdict = NOT_PROVIDED
        else:
            verdict = PASS
        # a failure is told per case; an unavailable or absent case once per reason
        messages = list(
            dict.fromkeys(
                r.message
                if r.verdict == UNAVAILABLE
                else f"not provided: {r.message}"
                if r.verdict == NOT_PROVIDED
                else f"{r.id}: {r.message}"
                for r in group
                if r.verdict != PASS and r.message
            )
        )
        # notes said by passing cases (backward not provided, ...), once each
        messages += list(dict.fromkeys(r.message for r in group if r.verdict == PASS and r.message))
        checked = "/".join(dict.fromkeys(r.checked for r in ran if r.checked))
        rows.append(
            Row(
                op,
                backend,
                len(ran),
                max(worsts) if worsts else None,
                verdict,
                messages,
                checked=checked,
                not_provided=len(absent),
            )
        )
    return rows
