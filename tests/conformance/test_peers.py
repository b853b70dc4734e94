"""The built-in peers: `normref verify torch` and `normref verify jax`.

What PyTorch 2.13 CPU does, as verify reports it (and these tests pin down):

- float64: every op and optimizer PyTorch provides passes, except NAdam, whose `mu_product` state
  PyTorch keeps in the default dtype (float32) even for float64 parameters;
- float32: everything passes except LayerNorm's gradient on a row of one element, where x - mean
  is not exactly 0 and rstd = 1/sqrt(eps) magnifies the residue (~3e-5 where 0 is exact);
- float16: PyTorch's CPU kernels round intermediate results to float16, a few times the float16
  tolerance off (which assumes one rounding at the end), and the diagnosis says exactly that.

Gradient transforms and schedules (clip_grad_norm_, clip_grad_value_, torch.optim.lr_scheduler)
pass; torch has no AGC, LinearLR cannot warm up from 0, and past their end CosineAnnealingLR rises
again and OneCycleLR stops: those are not provided (test_transforms_schedules.py).

So every row PyTorch provides is PASS or PRECISION (float64 passes, a lower precision is off by
rounding), and `normref verify torch` exits 0; with --strict it exits 1.

JAX's tests run only where jax, flax and optax are installed (`pip install jax flax optax`; about
15 s and 400 MB), on a subset of ops: every JAX case compiles with XLA (~0.1 s).
"""

from __future__ import annotations

import pytest

from normref import registry
from normref.cli import main
from normref.conformance.adapter import load_target
from normref.conformance.runner import NOT_PROVIDED, PASS, PRECISION, verify
from normref.conformance.trajectories import optimizers

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_report():
    target = load_target("torch")
    return verify(target.backends, trajectories=True, target=target.label)


def test_torch_float64_passes_on_every_op_it_provides(torch_report):
    rows = {r.op: r for r in torch_report.rows}
    provided = [op for op, r in rows.items() if r.verdict != NOT_PROVIDED]
    assert {"layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm"} <= set(provided)
    assert {"sgd", "adam", "adamw"} <= set(provided)
    for case in torch_report.cases:
        if case.dtype == "float64" and case.op != "nadam" and case.verdict != NOT_PROVIDED:
            assert case.verdict == PASS, (case.id, case.message)


def test_torch_passes_whole_rows_where_its_numerics_are_normrefs(torch_report):
    rows = {r.op: r for r in torch_report.rows}
    for op in ("rms_norm", "sgd", "adam", "adamw"):
        assert rows[op].verdict == PASS, (op, rows[op].messages)
        assert rows[op].cases > 0 and rows[op].worst <= 1


def test_torch_lacks_are_listed_as_not_provided(torch_report):
    rows = {r.op: r for r in torch_report.rows}
    assert set(rows) == set(registry.OPS) | set(optimizers())
    lacking = [op for op in ("weight_standardization", "lamb") if op in rows]
    assert all(rows[op].verdict == NOT_PROVIDED and rows[op].cases == 0 for op in lacking)


def test_torch_float16_differences_are_diagnosed_as_precision(torch_report):
    row = next(r for r in torch_report.rows if r.op == "group_norm")
    assert row.verdict == PRECISION, row.messages
    assert "float64 passes, so the formula agrees; float16 is off" in row.diagnosis


def test_torch_passes_every_op_it_provides(torch_report):
    """The proof that the golden values and tolerances are calibrated: the peer passes, with
    rounding-only differences reported as such."""
    provided = [r for r in torch_report.rows if r.verdict != NOT_PROVIDED]
    assert all(r.verdict in (PASS, PRECISION) for r in provided), [
        (r.op, r.verdict, r.diagnosis) for r in provided if r.verdict not in (PASS, PRECISION)
    ]
    assert torch_report.ok


def test_torch_batch_norm_running_statistics_and_count_are_compared(torch_report):
    keys = {
        k
        for c in torch_report.cases
        if c.id == "batch_norm-01-float64"  # momentum=None: PyTorch's cumulative average
        for k in c.errors
    }
    assert {"output.running_mean", "output.running_var", "output.num_batches_tracked"} <= keys


def test_verify_torch_command(capsys):
    status = main(["verify", "torch", "--ops", "rms_norm,sgd", "--dtype", "float64,float32"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "torch" in out and "rms_norm" in out and "sgd" in out and "PASS" in out


def test_verify_torch_strict_fails_precision_rows(capsys):
    assert main(["verify", "torch", "--ops", "group_norm", "--dtype", "float64,float16"]) == 0
    assert "precision only" in capsys.readouterr().out
    assert main(["verify", "torch", "--ops", "group_norm", "--strict"]) == 1


# ------------------------------------------------------------------------------------------- JAX


@pytest.fixture(scope="module")
def jax_report():
    for name in ("jax", "flax", "optax"):
        pytest.importorskip(name, reason="JAX targets need jax, flax and optax installed")
    target = load_target("jax")
    return verify(
        target.backends,
        ops=["layer_norm", "batch_norm", "sgd", "adam"],
        dtypes=["float64"],
        trajectories=True,
    )


def test_jax_flax_layer_norm_and_optax_sgd_pass(jax_report):
    rows = {r.op: r for r in jax_report.rows}
    assert rows["layer_norm"].verdict == PASS, rows["layer_norm"].messages
    assert rows["layer_norm"].checked == "forward+backward"
    assert rows["sgd"].verdict == PASS
    assert rows["sgd"].not_provided > 0  # dampening: optax has none, so those cases are skipped


def test_jax_conventions_are_named(jax_report):
    """Flax's BatchNorm stores the biased batch variance; optax's AMSGrad keeps the maximum of the
    bias-corrected second moment: both are documented conventions that verify must name."""
    rows = {r.op: r for r in jax_report.rows}
    assert rows["batch_norm"].diagnosis.startswith("matches variant biased_running_var")
    assert rows["adam"].diagnosis.startswith("matches variant max_of_bias_corrected")
