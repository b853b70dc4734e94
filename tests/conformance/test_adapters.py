"""`normref verify TARGET` for user adapters: the protocol, target resolution, exit statuses, the
"not provided" verdict, the JSON report, and examples/adapter_template.py passing for what it
provides."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from normref import registry
from normref.cli import main
from normref.conformance.adapter import TargetError, load_target
from normref.conformance.runner import NOT_PROVIDED, PASS, verify
from normref.conformance.trajectories import load_cases, optimizers
from normref.golden import load_index

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "adapter_template.py"
# what the template implements: two ops, an optimizer, a gradient transform, a schedule
PROVIDED = {"layer_norm", "rms_norm", "sgd", "clip_by_global_norm", "cosine_with_warmup"}


def _run(capsys, *argv):
    status = main(["verify", *argv])
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.mark.parametrize("spec", ["examples.adapter_template", str(TEMPLATE)])
def test_the_template_passes_everything_it_provides(spec, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)  # `examples.adapter_template` resolves from the working directory
    path = tmp_path / "report.json"
    status, out = _run(capsys, spec, "--json", str(path))
    assert status == 0, out
    report = json.loads(path.read_text())
    verdicts = {r["op"]: r["verdict"] for r in report["rows"]}
    assert {op for op, v in verdicts.items() if v == PASS} == PROVIDED
    # every other op, optimizer, transform and schedule is listed as not provided, never passing
    assert set(verdicts) == set(registry.OPS) | set(optimizers())
    assert all(v == NOT_PROVIDED for op, v in verdicts.items() if op not in PROVIDED)
    assert "not provided by the target: batch_norm" in out and "one_cycle" in out
    ran = {c["id"] for c in report["cases"] if c["verdict"] == PASS}
    expected = {c.id for c in load_index() if c.op in PROVIDED}
    expected |= {c.id for c in load_cases() if c.op in PROVIDED}
    assert ran == expected
    assert all(c["checked"] for c in report["cases"] if c["verdict"] == PASS)


def test_filters_ops_skip_and_dtype(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "r.json"
    status, out = _run(
        capsys, str(TEMPLATE), "--ops", "*_norm,sgd", "--skip", "rms*", "--dtype", "float32",
        "--json", str(path), "-v",
    )  # fmt: skip
    assert status == 0, out
    cases = json.loads(path.read_text())["cases"]
    ran = {c["id"] for c in cases if c["verdict"] == PASS}
    assert ran and all(i.endswith("float32") for i in ran)
    # *_norm selects clip_by_global_norm too: patterns cover every table
    assert {i.rsplit("-", 2)[0] for i in ran} == {"layer_norm", "sgd", "clip_by_global_norm"}
    assert "layer_norm-00-float32" in out  # -v: one row per case


def _write(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_failing_adapter_exits_1_with_the_diagnosis_in_table_and_json(tmp_path, capsys):
    # an adapter file of its own, reusing the deviant RMSNorm (eps added to the RMS)
    adapter = _write(
        tmp_path,
        "eps_outside",
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import deviants
        OPS = {{"rms_norm": deviants.rms_norm_eps_outside_sqrt}}
        """,
    )
    path = tmp_path / "report.json"
    status, out = _run(capsys, str(adapter), "--json", str(path))
    assert status == 1, out
    assert "matches variant eps_outside_sqrt" in out and "forward only" not in out
    row = next(r for r in json.loads(path.read_text())["rows"] if r["op"] == "rms_norm")
    assert row["verdict"] == "FAIL" and row["checked"] == "forward"
    assert row["diagnosis_detail"]["matches"] == ["eps_outside_sqrt"]


def test_not_implemented_cases_are_not_provided_and_do_not_fail(tmp_path, capsys):
    adapter = _write(
        tmp_path,
        "float64_only",
        """
        import importlib.util, pathlib
        spec = importlib.util.spec_from_file_location("t", TEMPLATE)
        t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)

        def ln(x, *args, **hyper):
            if x.dtype != "float64":
                raise NotImplementedError("float64 only")
            return t.layer_norm(x, *args, **hyper)

        OPS = {"layer_norm": ln}
        """.replace("TEMPLATE", repr(str(TEMPLATE))),
    )
    status, out = _run(capsys, str(adapter), "--ops", "layer_norm")
    assert status == 0, out
    assert "case(s) not provided" in out and "forward only" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_module_xyz"], "cannot import"),
        (["json"], "not a normref adapter"),
        (["json:nothing_here"], "has no attribute"),
        (["/no/such/adapter.py"], "no such file"),
        (["examples.adapter_template", "--dtype", "float8"], "--dtype float8"),
        (["examples.adapter_template", "--ops", "nothing*"], "selects nothing"),
    ],
)
def test_usage_errors_exit_2(argv, message, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    status, out = _run(capsys, *argv)
    assert status == 2 and "usage:" in out and message in out, out


def test_an_adapter_naming_unknown_ops_is_refused(tmp_path):
    adapter = _write(tmp_path, "typo", "OPS = {'layer_nrom': lambda x, *a, **k: x}\n")
    with pytest.raises(TargetError, match="layer_nrom"):
        load_target(str(adapter))


def test_an_adapter_that_raises_or_returns_the_wrong_thing_fails_its_cases(tmp_path):
    adapter = _write(
        tmp_path,
        "broken",
        """
        import numpy as np
        def boom(*a, **k):
            raise RuntimeError("kaput")
        def mutates(x, *a, **k):
            x += 1
            return x.copy()
        def wrong_dtype(x, *a, **k):
            return np.zeros(x.shape, np.float64)
        OPS = {"layer_norm": boom, "rms_norm": mutates, "group_norm": wrong_dtype}
        """,
    )
    target = load_target(str(adapter))
    report = verify(target.backends, ops=["layer_norm", "rms_norm", "group_norm"])
    messages = {r.op: " ".join(r.messages) for r in report.rows}
    assert "RuntimeError: kaput" in messages["layer_norm"]
    assert "input.x was modified in place" in messages["rms_norm"]
    assert "has dtype float64, expected float32" in messages["group_norm"]
    assert all(r.verdict == "FAIL" for r in report.rows) and not report.ok


def test_module_attribute_targets_and_sys_path(monkeypatch, tmp_path, capsys):
    """`package.module:attribute` picks an adapter object inside a module; a module in the working
    directory is importable without installing it."""
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "adapters.py").write_text(
        f"import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tmpl', {str(TEMPLATE)!r})\n"
        "tmpl = importlib.util.module_from_spec(spec); spec.loader.exec_module(tmpl)\n"
        "class Mine:\n"
        "    NAME = 'mine'\n"
        "    OPS = {'rms_norm': {'forward': tmpl.rms_norm, 'backward': tmpl.rms_norm_backward}}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    status, out = _run(capsys, "my_pkg.adapters:Mine", "--ops", "rms_norm")
    assert status == 0 and "mine" in out, out
