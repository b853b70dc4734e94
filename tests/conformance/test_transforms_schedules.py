"""`normref verify` on the gradient transforms and schedules of the registry's OPTIMIZERS table:
the generated cases, the TRANSFORMS and SCHEDULES tables of the adapter protocol, and what the
built-in peers do (PyTorch passes what it provides; optax's clipping conventions are named)."""

from __future__ import annotations

import deviants
import numpy as np
import pytest

from normref import registry
from normref.conformance.adapter import TargetError, _from_adapter, load_target
from normref.conformance.runner import FAIL, NOT_PROVIDED, PASS, verify
from normref.conformance.trajectories import load_cases

FAMILIES = ("gradient_transform", "schedule")
NAMES = [n for n, info in registry.OPTIMIZERS.items() if info.family in FAMILIES]


def _verify(adapter, names=None):
    target = _from_adapter(adapter, adapter.NAME)
    names = names or [*adapter.TRANSFORMS, *adapter.SCHEDULES]
    return verify(target.backends, ops=names, trajectories=True)


# ----------------------------------------------------------------------------- generated cases


def test_every_transform_and_schedule_has_cases_from_the_reference():
    cases = [c for c in load_cases() if c.info.family in FAMILIES]
    assert {c.op for c in cases} == set(NAMES)
    for case in cases:
        info, arrays = case.info, case.arrays()
        assert case.kind == ("schedule" if info.family == "schedule" else "transform")
        if case.kind == "schedule":
            # 0-based: element s is the value at step s, the first update reading schedule(0)
            schedule = info.factory(**case.hyper)
            expected = [schedule(s) for s in range(case.steps)]
            assert case.dtype == "float64" and arrays["output.value"].tolist() == expected
    # non-default probes, and a schedule with an end also run past it
    assert any(c.hyper["warmup_steps"] == 0 for c in cases if c.op == "cosine_with_warmup")
    steps = {c.steps for c in cases if c.op == "one_cycle" and c.hyper["total_steps"] == 20}
    assert steps == {20, 25}


def test_transform_cases_cross_the_thresholds_and_hold_a_zero_parameter():
    case = next(c for c in load_cases() if c.op == "clip_by_global_norm")
    arrays = case.arrays()
    grads = [arrays[f"input.grads.{i}"].astype(np.float64) for i in range(case.count)]
    norms = [np.sqrt(sum(np.sum(g[t] ** 2) for g in grads)) for t in range(case.steps)]
    max_norm = case.hyper["max_norm"]
    assert max(norms) > max_norm and 0 < min(n for n in norms if n) < max_norm and 0.0 in norms
    assert case.dtype == "float64" and {c.dtype for c in load_cases() if c.op == case.op} == {
        "float64",
        "float32",
    }
    agc = next(c for c in load_cases() if c.op == "adaptive_grad_clip").arrays()
    assert not agc["input.param.3"].any() and not agc["input.param.1"][0].any()
    # generated from the case id: the same arrays every time
    assert all(np.array_equal(v, case.arrays()[k]) for k, v in arrays.items())


# ----------------------------------------------------------------------------------- deviants


def test_a_correct_clip_passes():
    report = _verify(deviants.CLIP_RIGHT)
    assert report.ok and [r.verdict for r in report.rows] == [PASS]


@pytest.mark.parametrize(
    "adapter, op, variant",
    [
        (deviants.CLIP_NO_EPS, "clip_by_global_norm", "optax_no_eps"),
        (deviants.AGC_CHANNELS_LAST, "adaptive_grad_clip", "optax_layout"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_deviant_transform_fails_and_its_convention_is_named(adapter, op, variant):
    report = _verify(adapter)
    (row,) = report.rows
    assert row.op == op and row.verdict == FAIL and not report.ok
    assert row.diagnosis_detail["matches"] == [variant], row.diagnosis


def test_a_wrong_schedule_fails_with_its_first_difference():
    (row,) = _verify(deviants.EXP_DECAY_ONE_BASED).rows
    assert row.verdict == FAIL and row.diagnosis_detail["matches"] == []
    assert "none is registered" in row.diagnosis
    assert "output.value of case exponential_decay-s00-float64 at step 0 (0-based)" in (
        row.diagnosis
    )


def test_unsupported_cases_and_missing_entries_are_not_provided():
    def cosine(**hyper):
        if hyper["warmup_steps"]:
            raise NotImplementedError("no warmup")
        return registry.OPTIMIZERS["cosine_with_warmup"].factory(**hyper)

    adapter = deviants.adapter(schedules={"cosine_with_warmup": cosine}, name="no warmup")
    report = _verify(adapter, names=["cosine_with_warmup", "constant", "clip_by_value"])
    rows = {r.op: r for r in report.rows}
    assert rows["cosine_with_warmup"].verdict == PASS and rows["cosine_with_warmup"].cases > 0
    assert rows["cosine_with_warmup"].not_provided > 0
    assert rows["constant"].verdict == NOT_PROVIDED and rows["constant"].cases == 0
    assert "not in the adapter's SCHEDULES" in rows["constant"].messages[0]
    assert "not in the adapter's TRANSFORMS" in rows["clip_by_value"].messages[0]


def test_each_table_takes_only_its_own_kind():
    misplaced = deviants.adapter(optimizers={"one_cycle": lambda params, **h: None})
    with pytest.raises(TargetError, match=r"OPTIMIZERS names \['one_cycle'\]"):
        _from_adapter(misplaced, "misplaced")


def test_a_transform_that_changes_the_parameters_fails():
    def clip(params, *, clip_value):
        def apply(grads):
            params[0] += 1
            return [np.clip(g, -clip_value, clip_value) for g in grads]

        return apply

    (row,) = _verify(deviants.adapter(transforms={"clip_by_value": clip})).rows
    assert row.verdict == FAIL and "input.param.0 was modified in place" in row.messages[0]


# -------------------------------------------------------------------------------------- peers


def test_torch_passes_the_transforms_and_schedules_it_has():
    pytest.importorskip("torch")
    target = load_target("torch")
    rows = {r.op: r for r in verify(target.backends, ops=NAMES, trajectories=True).rows}
    assert rows["adaptive_grad_clip"].verdict == NOT_PROVIDED  # torch has no AGC
    for op in ("clip_by_global_norm", "clip_by_value", "constant", "step_decay", "one_cycle"):
        assert rows[op].verdict == PASS and rows[op].cases > 0, (op, rows[op].messages)
    for op in ("exponential_decay", "linear_with_warmup", "one_cycle_momentum"):
        assert rows[op].verdict == PASS and rows[op].cases > 0, (op, rows[op].messages)
    # LinearLR cannot warm up from 0, and past T_max the cosine rises again: not provided
    cosine = rows["cosine_with_warmup"]
    assert cosine.verdict == PASS and cosine.cases > 0 and cosine.not_provided > 0
    assert any("LinearLR cannot warm up" in m for m in cosine.messages)


def test_optax_clipping_conventions_are_named():
    for name in ("jax", "flax", "optax"):
        pytest.importorskip(name, reason="JAX targets need jax, flax and optax installed")
    target = load_target("jax")
    names = ["clip_by_global_norm", "adaptive_grad_clip", "clip_by_value", "one_cycle", "cos*"]
    rows = {r.op: r for r in verify(target.backends, ops=names, trajectories=True).rows}
    assert rows["clip_by_global_norm"].diagnosis.startswith("matches variant optax_no_eps")
    assert rows["adaptive_grad_clip"].diagnosis.startswith("matches variant optax_layout")
    assert rows["clip_by_value"].verdict == PASS
    assert rows["cosine_with_warmup"].verdict == PASS
    assert rows["cosine_with_warmup"].not_provided == 0
    assert rows["one_cycle"].verdict == NOT_PROVIDED  # optax's one-cycle has other phase ends


def test_verify_command_selects_transforms_and_schedules(capsys):
    from pathlib import Path

    from normref.cli import main

    template = Path(__file__).resolve().parents[2] / "examples" / "adapter_template.py"
    status = main(["verify", str(template), "--ops", "cosine_with_warmup,clip_*"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "cosine_with_warmup" in out and "not provided by the target: clip_by_value" in out
