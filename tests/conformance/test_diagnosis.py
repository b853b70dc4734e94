"""The diagnosis is real: deliberately deviant implementations (tests/conformance/deviants.py) fail
verify, and the report names the convention each one follows; a bug that no convention explains
is reported as such, with where it first differs."""

from __future__ import annotations

import deviants
import numpy as np
import pytest

from normref.conformance.adapter import _from_adapter
from normref.conformance.diagnosis import diagnose
from normref.conformance.runner import (
    FAIL,
    NOT_GIVEN,
    PASS,
    PRECISION,
    CaseResult,
    Outcome,
    Report,
    _diagnose_rows,
    _rows,
    judge,
    verify,
)
from normref.golden import load_index


def _verify(adapter, **kw):
    target = _from_adapter(adapter, adapter.NAME)
    names = [*adapter.OPS, *adapter.OPTIMIZERS]
    return verify(target.backends, ops=names, trajectories=bool(adapter.OPTIMIZERS), **kw)


@pytest.mark.parametrize(
    "adapter, op, variant",
    [
        (deviants.LN_EPS_OUTSIDE_SQRT, "layer_norm", "eps_outside_sqrt"),
        (deviants.LN_UNBIASED, "layer_norm", "unbiased_variance"),
        (deviants.RMS_EPS_OUTSIDE_SQRT, "rms_norm", "eps_outside_sqrt"),
        (deviants.BN_KERAS_MOMENTUM, "batch_norm", "momentum_weights_old"),
        (deviants.ADAMW_AS_L2, "adamw", "l2_vs_decoupled"),
        (deviants.ADAM_NO_BIAS_CORRECTION, "adam", "no_bias_correction"),
        (deviants.ADAM_EPS_INSIDE_SQRT, "adam", "eps_root"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_deviant_fails_and_its_convention_is_named(adapter, op, variant):
    report = _verify(adapter)
    (row,) = [r for r in report.rows if r.op == op]
    assert not report.ok and row.verdict == FAIL
    assert row.diagnosis_detail["matches"][0] == variant, row.diagnosis
    assert row.diagnosis.startswith(f"matches variant {variant}")


def test_keras_momentum_is_not_told_apart_from_flax_and_says_so():
    """Flax's BatchNorm is Keras' momentum plus the fast variance, which in float64 is the exact
    variance: both explain the cases equally, and the report says that it cannot decide."""
    (row,) = _verify(deviants.BN_KERAS_MOMENTUM).rows
    assert row.diagnosis_detail["matches"] == ["momentum_weights_old", "flax"]
    assert "do not tell them apart" in row.diagnosis


def test_a_bug_no_convention_explains_is_reported_with_its_first_difference():
    (row,) = _verify(deviants.LN_SHIFTED).rows
    assert row.verdict == FAIL and row.diagnosis_detail["matches"] == []
    assert row.diagnosis.startswith("no known variant matches")
    assert "first differing element: output.y of case layer_norm-00-float64 at index (0, 0)" in (
        row.diagnosis
    )
    assert "got 0.06922813374796" in row.diagnosis and "expected 0.06822813374796" in row.diagnosis
    # every candidate was tried, and the JSON keeps how far the target was from each
    assert "eps_outside_sqrt" in row.diagnosis_detail["candidates"]


def test_a_correct_implementation_passes_with_nothing_to_diagnose():
    report = _verify(deviants.ADAM_RIGHT)
    assert report.ok and all(r.verdict == PASS and not r.diagnosis for r in report.rows)


def test_a_trajectory_difference_is_located_by_step():
    (row,) = _verify(deviants.ADAM_NO_BIAS_CORRECTION).rows
    assert "at step 0 (0-based)" in row.diagnosis_detail["first_difference"]


def test_only_float32_failures_list_the_variants_rounding_alone_separates():
    """fast_variance is the reference itself when evaluated in float64: a float32-only failure
    cannot rule it out, and the report says so rather than pretending."""
    (row,) = _verify(deviants.LN_SHIFTED, dtypes=["float32"]).rows
    assert "not ruled out: fast_variance" in row.diagnosis
    (row,) = _verify(deviants.LN_SHIFTED).rows  # float64 fails too: fast_variance is ruled out
    assert "not ruled out" not in row.diagnosis


def _result(case, arrays, outputs, grads):
    """A CaseResult as the runner would make it, for a hand-made outcome."""
    outcome = Outcome(outputs, grads, "test")
    errors, problems = judge(case, arrays, outcome)
    verdict = FAIL if problems or max(errors.values()) > 1 else PASS
    return CaseResult(
        case.id, case.op, case.dtype, "test", verdict, max(errors.values()), None, errors,
        "; ".join(problems), structural=problems, case=case, arrays=arrays, outcome=outcome,
    )  # fmt: skip


def _rms_norm_results(float16_error=None, float64_error=None):
    """rms_norm case 0 in every dtype, exact except for the first output element of the float16
    and float64 cases, moved by the given function of that element."""
    results = []
    for case in (c for c in load_index() if c.op == "rms_norm" and c.index == 0):
        arrays = case.arrays()
        y = arrays["output.y"].astype(case.dtype)
        change = {"float16": float16_error, "float64": float64_error}.get(case.dtype)
        if change is not None:
            y.flat[0] = change(y.flat[0])
        grads = {n: arrays[f"grad.{n}"].astype(case.dtype) for n in case.grads}
        results.append(_result(case, arrays, [y], grads))
    return results


def _report(results, strict=False):
    rows = _rows(results)
    _diagnose_rows(rows, results)
    return Report("test", rows, results, [], strict=strict)


def _ulps(k):
    return lambda v: v + k * np.spacing(v)


def test_precision_only_differences_are_called_precision():
    """float64 exact, float16 off by a few ulps: the same formula, rounded differently."""
    results = _rms_norm_results(float16_error=_ulps(8))
    found = diagnose(results)
    assert found.matches == []
    assert "float64 passes, so the formula agrees; float16 is off" in found.summary
    (row,) = _report(results).rows
    assert row.verdict == PRECISION and row.worst > 1
    assert _report(results).ok and not _report(results, strict=True).ok


@pytest.mark.parametrize(
    "errors",
    [
        {"float16_error": lambda v: np.float16("nan")},  # a NaN is no rounding
        {"float16_error": _ulps(8), "float64_error": lambda v: v * (1 + 1e-9)},  # float64 fails
    ],
    ids=["float16-nan", "float64-fails"],
)
def test_a_precision_row_needs_float64_passing_and_finite_errors(errors):
    report = _report(_rms_norm_results(**errors))
    (row,) = report.rows
    assert row.verdict == FAIL and not report.ok


def test_a_dtype_problem_does_not_hide_the_convention():
    """A target returning float32 running statistics for float16 inputs (Flax does) is still
    diagnosed on its numbers, and the dtype is said alongside."""
    from normref import registry

    variant = next(v for v in registry.OPS["batch_norm"].variants if v.name == "biased_running_var")
    results = []
    for case in (c for c in load_index() if c.op == "batch_norm" and c.index == 0):
        arrays = case.arrays()
        inputs = [arrays.get(f"input.{n}") for n in case.info.inputs]
        y, mean, var, count = variant.forward(*inputs, **case.hyper)
        grads = {n: arrays[f"grad.{n}"].astype(case.dtype) for n in case.grads}
        if case.dtype == "float16":
            mean, var = mean.astype(np.float32), var.astype(np.float32)
        results.append(_result(case, arrays, [y, mean, var, NOT_GIVEN], grads))
    found = diagnose(results)
    assert found.matches[0] == "biased_running_var", found.summary
    assert "also: output.running_mean has dtype float32, expected float16" in found.summary
