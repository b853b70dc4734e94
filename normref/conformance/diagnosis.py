"""Diagnosis of a failing row (design.md §7): which convention does the target compute instead?

For an op, the candidates are its registered convention variants (`registry.Variant`): an
`overrides` variant is normref's reference run with other hyperparameters (a peer's default eps),
compared on outputs and gradients; a `forward` variant is another formula, compared on outputs
only (variants define no backward). For an entry of the OPTIMIZERS table (an optimizer, a gradient
transform, a schedule), the candidates are its `OptimizerVariant`s, whose expected values are
recomputed from the case's inputs: a trajectory from its initial parameters and gradients, a
transform's calls from its parameters and gradients, a schedule's values at its steps. When no
single variant explains the failure, pairs are tried where they compose: a formula with an
override of other hyperparameters (Flax's LayerNorm default is flax_eps with fast_variance), or two
overrides of different hyperparameters. Two formulas do not compose: each is a whole alternative
computation.

A candidate is accepted when, on every case that ran (passing ones too),

- the target matches the candidate within the case's tolerance on every array the candidate
  gives, and the candidate gives at least one of the arrays that failed;
- and the candidate itself differs from the golden values on a failing case, so a variant equal
  to the reference on these cases is never named.

Accepted candidates are ranked by how many failing arrays they leave unexplained (a formula
variant gives no gradients: a target that also differs there, say by float16 rounding, leaves
those), fewest first, and the report says what is left. Arrays that fail for another reason than
their values (a dtype, an input modified in place) are reported alongside, not diagnosed.

float32 and float16. Variants are evaluated in float64 from the case's own (rounded) inputs, like
the golden values, and compared with the case's tolerance, which covers the target's own rounding:
a float32 target that computes a variant's formula with stable arithmetic matches it. A convention
that differs from the reference only through rounding (fast_variance: E[x^2] - E[x]^2 cancelling
in float32 on rows with a large offset) is the reference itself in float64, so no elementwise
comparison can name it; such variants are reported as "not separated by these cases" when nothing
matches, as a hint rather than a verdict. Evaluating them in the case dtype would not help: in the
cancelling regime two float32 evaluations that sum in different orders disagree with each other as
much as with the reference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normref.conformance.runner import FAIL, NOT_GIVEN, PASS, CaseResult
from normref.golden.tolerances import Tolerance, scaled_error

__all__ = ["Candidate", "Diagnosis", "candidates", "diagnose"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Candidate:
    """One convention to test: a variant, or two applied together."""

    name: str
    parts: tuple[Any, ...]  # the registry variants it combines
    evaluate: Callable[[Any, Mapping[str, np.ndarray]], Arrays]  # (case, arrays) -> expected


@dataclass
class Diagnosis:
    summary: str
    matches: list[str] = field(default_factory=list)
    first_difference: str | None = None
    not_separated: list[str] = field(default_factory=list)
    # float64 passes and the failures are finite value errors in lower precisions that no variant
    # explains: rounding alone (the runner's PRECISION verdict)
    precision: bool = False
    # candidate -> case id -> worst error of the target against it (None: could not evaluate)
    candidates: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | str | None:
            return x if x is None or math.isfinite(x) else "inf"

        return {
            "summary": self.summary,
            "matches": self.matches,
            "first_difference": self.first_difference,
            "not_separated": self.not_separated,
            "precision": self.precision,
            "candidates": {
                name: {cid: num(e) for cid, e in per_case.items()}
                for name, per_case in self.candidates.items()
            },
        }


# ---------------------------------------------------------------------------------------------
# Candidates


def _formula(variant: Any) -> Callable[..., Any] | None:
    """The variant's own computation: an op variant's `forward`, an optimizer variant's
    `factory`; None for a variant that only overrides hyperparameters."""
    return getattr(variant, "forward", None) or getattr(variant, "factory", None)


def _composable(a: Any, b: Any) -> bool:
    if _formula(a) is not None and _formula(b) is not None:
        return False
    return not set(a.overrides) & set(b.overrides)


def candidates(info: Any, kind: str) -> tuple[list[Candidate], list[Candidate]]:
    """(single variants, composable pairs) of an op (`kind` "op") or an entry of the OPTIMIZERS
    table (a generated kind: "trajectory", "transform", "schedule")."""
    evaluate = _evaluate_op if kind == "op" else _evaluate_generated
    variants = tuple(getattr(info, "variants", ()))

    def make(parts: tuple[Any, ...]) -> Candidate:
        formula = next((f for f in map(_formula, parts) if f is not None), None)
        overrides: dict[str, Any] = {}
        for part in parts:
            overrides.update(part.overrides)
        return Candidate(
            " + ".join(p.name for p in parts),
            parts,
            lambda case, arrays: evaluate(info, case, arrays, formula, overrides),
        )

    singles = [make((v,)) for v in variants]
    pairs = [make(pair) for pair in itertools.combinations(variants, 2) if _composable(*pair)]
    return singles, pairs


def _evaluate_op(
    info: Any, case: Any, arrays: Mapping[str, np.ndarray], formula: Any, overrides: Mapping
) -> Arrays:
    hyper = {**case.hyper, **overrides}
    inputs = [arrays.get(f"input.{n}") for n in info.inputs]
    names = list(case.outputs)
    with np.errstate(all="ignore"):  # a variant may divide 0 by 0 where the reference does not
        if formula is None:
            # normref's reference with other hyperparameters, in float64 like the golden values
            up = [None if a is None else a.astype(np.float64) for a in inputs]
            *outputs, saved = info.forward(*up, **hyper, backend="reference")
            grads = info.backward(arrays["input.dy"].astype(np.float64), saved, backend="reference")
            grads = grads if isinstance(grads, tuple) else (grads,)
            result = {f"grad.{n}": g for n, g in zip(info.differentiable, grads) if n in case.grads}
        else:
            # inputs in the case dtype: a variant that rounds to the input dtype on the way
            # (cast_before_weight) needs to know it
            outputs = formula(*[None if a is None else a.copy() for a in inputs], **hyper)
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            result = {}
    for name, y in zip(names, outputs):
        if y is not None:
            result[f"output.{name}"] = np.asarray(y)
    return result


def _evaluate_generated(
    info: Any, case: Any, arrays: Mapping[str, np.ndarray], formula: Any, overrides: Mapping
) -> Arrays:
    # the variant's optimizer, transform or schedule, run over the case's inputs as the golden
    # values were (the case knows how: trajectories.py)
    built = (formula or info.factory)(**{**case.hyper, **overrides})
    with np.errstate(all="ignore"):
        return case.expected(built, arrays)


# ---------------------------------------------------------------------------------------------
# Comparing


def _error(got: Any, expected: np.ndarray, tol: Tolerance) -> float:
    if got is None:
        return math.inf
    got = np.asarray(got)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        return math.inf
    if expected.dtype.kind not in "fc" or got.dtype.kind not in "fc":
        return 0.0 if np.array_equal(got, expected) else math.inf
    return scaled_error(got, expected, tol)


def _tol(case: Any, key: str) -> Tolerance:
    return case.backward_tol if key.startswith("grad.") else case.forward_tol


def _computed(result: CaseResult) -> dict[str, Any]:
    """What the target computed for a case, by array key."""
    outcome = result.outcome
    got = {
        f"output.{n}": y for n, y in zip(result.case.outputs, outcome.outputs) if y is not NOT_GIVEN
    }
    if outcome.grads is not None:
        got.update({f"grad.{n}": outcome.grads.get(n) for n in result.case.grads})
    return got


def _failing_keys(result: CaseResult) -> set[str] | None:
    """The arrays of a failing case that are out of tolerance (a missing array or a wrong shape
    counts, with an infinite error); None when the target raised instead."""
    if result.outcome is None:
        return None
    return {k for k, e in result.errors.items() if e > 1}


@dataclass
class _Verdict:
    accepted: bool  # agrees with the target wherever it gives values, and explains a failure
    separated: bool  # the candidate differs from the golden values on a failing case
    left: list[tuple[CaseResult, str]]  # failing arrays it gives no value for (a formula's grads)
    worst: dict[str, float | None]


def _judge(candidate: Candidate, results: Sequence[CaseResult]) -> _Verdict:
    agrees, explains, separated = True, False, False
    left: list[tuple[CaseResult, str]] = []
    worst: dict[str, float | None] = {}
    for r in results:
        failing = _failing_keys(r) if r.verdict == FAIL else set()
        try:
            expected = candidate.evaluate(r.case, r.arrays)
        except Exception:  # the variant does not apply to this case (a hyperparameter it refuses)
            worst[r.id] = None
            agrees = agrees and r.verdict != FAIL
            continue
        if r.verdict == FAIL and any(
            _error(e, r.arrays[k], _tol(r.case, k)) > 1 for k, e in expected.items()
        ):
            separated = True
        got = _computed(r)
        errors = {k: _error(got[k], e, _tol(r.case, k)) for k, e in expected.items() if k in got}
        worst[r.id] = max(errors.values(), default=0.0)
        if failing is None or worst[r.id] > 1:
            agrees = False
            continue
        explains = explains or bool(failing & set(errors))
        left += [(r, k) for k in sorted(failing - set(errors))]
    return _Verdict(agrees and explains and separated, separated, left, worst)


# ---------------------------------------------------------------------------------------------
# The diagnosis


def diagnose(results: Sequence[CaseResult]) -> Diagnosis:
    """Diagnose one failing row from all its case results (passing ones included: a variant must
    agree with the target there too)."""
    ran = [r for r in results if r.verdict in (PASS, FAIL) and r.case is not None]
    failing = [r for r in ran if r.verdict == FAIL]
    if not failing:
        first = next((r for r in results if r.verdict == FAIL), None)
        return Diagnosis(f"not diagnosed: {first.message if first else 'no case ran'}")
    first_difference = _first_difference(failing[0])
    crashed = [r for r in failing if r.outcome is None]
    if crashed:
        return Diagnosis(
            f"the target raised on {len(crashed)} case(s), first {crashed[0].id}: "
            f"{crashed[0].message}",
            first_difference=first_difference,
        )

    # problems that are not values (a dtype, an input modified in place), said alongside
    other = [(r, p) for r in failing for p in r.structural]
    also = ""
    if other:
        r, problem = other[0]
        count = len({r.id for r, _ in other})
        also = f"; also: {problem} ({r.id}{f' and {count - 1} more cases' if count > 1 else ''})"
    failing = [r for r in failing if r.errors and max(r.errors.values()) > 1]
    if not failing:
        return Diagnosis(also[len("; also: ") :], first_difference=first_difference)

    case = failing[0].case
    singles, pairs = candidates(case.info, getattr(case, "kind", "op"))
    diagnosis = Diagnosis("", first_difference=first_difference)
    separated_any: set[str] = set()
    accepted: list[tuple[Candidate, _Verdict]] = []
    for group in (singles, pairs):
        for candidate in group:
            verdict = _judge(candidate, ran)
            diagnosis.candidates[candidate.name] = verdict.worst
            if verdict.separated and len(candidate.parts) == 1:  # a pair: thanks to which part?
                separated_any.add(candidate.name)
            if verdict.accepted:
                accepted.append((candidate, verdict))
        if any(not v.left for _, v in accepted):
            break  # a single variant that explains everything is simpler than any pair
    diagnosis.not_separated = [c.name for c in singles if c.name not in separated_any]

    if accepted:
        # the fewest failing arrays left unexplained first; singles before pairs on a tie
        fewest = min(len(v.left) for _, v in accepted)
        best = [(c, v) for c, v in accepted if len(v.left) == fewest]
        diagnosis.matches = [c.name for c, _ in best]
        name, *others = diagnosis.matches
        word = "variants" if " + " in name else "variant"
        summary = f"matches {word} {name}"
        if others:
            summary += f" (equally: {', '.join(others)}; these cases do not tell them apart)"
        if best[0][1].left:
            summary += f"; {_leftovers(best[0][1].left, ran)}"
        diagnosis.summary = summary + also
        return diagnosis
    summary = "no known variant matches"
    if not singles:
        summary += " (none is registered)"
    precision = _precision_hint(ran, failing)
    summary += f"; {precision}{first_difference}"
    diagnosis.precision = (
        bool(precision) and not other and all(math.isfinite(r.worst or 0.0) for r in failing)
    )
    # Rounding-only conventions are the reference in float64: a float64 failure rules them out,
    # and a float64 pass already makes the difference "precision", which covers them.
    if not precision and diagnosis.not_separated and all(r.dtype != "float64" for r in failing):
        hidden = ", ".join(diagnosis.not_separated)
        summary += f" (not separated by these cases, so not ruled out: {hidden})"
    diagnosis.summary = summary + also
    return diagnosis


def _leftovers(left: list[tuple[CaseResult, str]], ran: Sequence[CaseResult]) -> str:
    """The failing arrays a matched formula variant gives no value for (variants define no
    backward): how many, the worst, and whether only low precisions show them."""
    r, key = max(left, key=lambda rk: rk[0].errors.get(rk[1], 0.0))
    text = (
        f"it defines no value for {len(left)} other failing array(s), worst {key} of {r.id} "
        f"off by {r.errors.get(key, math.inf):.3g}x"
    )
    if all(r.dtype != "float64" for r, _ in left) and any(r.dtype == "float64" for r in ran):
        text += " (float64 agrees there: a precision difference)"
    return text


def _precision_hint(ran: Sequence[CaseResult], failing: Sequence[CaseResult]) -> str:
    """When float64 cases pass and only lower precisions fail, the target computes the same
    formula up to rounding (a different formula shows in float64, where the tolerance is a few
    ulps), so the difference is precision: say so, with its size."""
    if any(r.dtype == "float64" for r in failing) or not any(r.dtype == "float64" for r in ran):
        return ""
    dtypes = sorted({r.dtype for r in failing}, reverse=True)
    worst = max(r.worst or 0.0 for r in failing)
    which = (
        f"{dtypes[0]} is" if len(dtypes) == 1 else f"{', '.join(dtypes[:-1])} and {dtypes[-1]} are"
    )
    return (
        f"float64 passes, so the formula agrees; {which} off by up to {worst:.3g}x the tolerance: "
        "precision (intermediate results rounded to the input dtype, or a cancellation, where "
        "normref accumulates in float32 or wider and rounds once); "
    )


def _first_difference(result: CaseResult) -> str:
    """Where a failing case first differs: the first array off (outputs before gradients, the
    forward being the cause of a backward difference) and its first element out of tolerance."""
    if result.outcome is None:
        return f"case {result.id}: {result.message}"
    keys = [k for k, e in result.errors.items() if e > 1]
    if not keys:
        return f"case {result.id}: {result.message}"
    key = keys[0]
    got, expected = _computed(result).get(key), result.arrays[key]
    if got is None:
        return f"case {result.id}: {key} missing"
    got = np.asarray(got)
    if got.shape != expected.shape:
        return f"case {result.id}: {key} has shape {got.shape}, expected {expected.shape}"
    tol = _tol(result.case, key)
    g, e = got.astype(np.float64), expected.astype(np.float64)
    with np.errstate(all="ignore"):
        bad = ~(
            (np.abs(g - e) <= tol.atol + tol.rtol * np.abs(e))
            | (g == e)
            | (np.isnan(g) & np.isnan(e))
        )
    index = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else ()
    digits = 17 if result.dtype == "float64" else 9
    where = _index_text(result, index)
    return (
        f"first differing element: {key} of case {result.id} {where}: "
        f"got {g[index]:.{digits}g}, expected {e[index]:.{digits}g}"
    )


def _index_text(result: CaseResult, index: tuple[int, ...]) -> str:
    position = getattr(result.case, "position", None)  # a generated case: a step, or a call
    if position is not None and index:
        return position(index)
    return f"at index {index}"
