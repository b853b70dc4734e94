"""`normref golden export DIR` read back with plain NumPy and JSON, and the pytest plugin
(`--normref-adapter`) run through pytester."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from normref.cli import main
from normref.conformance.trajectories import load_cases
from normref.golden import load_index
from normref.golden.export import ExportError, export

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "adapter_template.py"


# ------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    assert main(["golden", "export", str(root)]) == 0
    return root


def _read(root: Path, entry: dict) -> np.ndarray:
    """An array as a C++ or Rust reader would take it: the manifest's file, dtype and shape."""
    path = root / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    array = np.load(path, allow_pickle=False)
    assert array.dtype.name == entry["dtype"] and list(array.shape) == entry["shape"]
    assert array.dtype.byteorder in "<|=" and array.flags.c_contiguous
    return array


def test_export_round_trips_every_case(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["format"] == "normref-golden-export" and manifest["version"] == 2
    entries = {c["id"]: c for c in manifest["cases"]}
    op_cases = load_index()
    generated = load_cases()
    assert set(entries) == {c.id for c in op_cases} | {c.id for c in generated}
    kinds = {e["kind"] for e in entries.values()}
    assert kinds == {"op", "trajectory", "transform", "schedule"}

    for case in op_cases:
        entry, arrays = entries[case.id], case.arrays()
        assert entry["kind"] == "op" and entry["op"] == case.op and entry["dtype"] == case.dtype
        assert entry["tolerance"]["forward"] == case.forward_tol._asdict()
        assert entry["input_order"] == list(case.info.inputs)
        # hyperparameters: JSON lists are the tuples the ops take
        hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["hyper"].items()}
        assert hyper == dict(case.hyper)
        read = {f"input.{n}": _read(exported, e) for n, e in entry["inputs"].items()}
        read["input.dy"] = _read(exported, entry["dy"])
        read |= {f"output.{n}": _read(exported, e) for n, e in entry["outputs"].items()}
        read |= {f"grad.{n}": _read(exported, e) for n, e in entry["grads"].items()}
        assert list(entry["outputs"]) == list(case.outputs)
        assert set(read) == set(arrays)
        for key, array in arrays.items():
            assert read[key].dtype == array.dtype and np.array_equal(read[key], array), key

    for case in generated:
        entry, arrays = entries[case.id], case.arrays()
        assert entry["kind"] == case.kind and entry["family"] == case.info.family
        if case.kind == "schedule":
            assert entry["steps"] == case.steps and entry["dtype"] == "float64"
            got = _read(exported, entry["expected"])
            assert np.array_equal(got, arrays["output.value"]), case.id
            continue
        length = "calls" if case.kind == "transform" else "steps"
        assert entry[length] == case.steps
        outputs = "output.grads" if case.kind == "transform" else "output.param"
        for i in range(case.count):
            for field, key in (
                ("params", "input.param"),
                ("grads", "input.grads"),
                ("expected", outputs),
            ):
                got = _read(exported, entry[field][i])
                assert np.array_equal(got, arrays[f"{key}.{i}"]), (case.id, field, i)


def test_export_refuses_a_foreign_directory_and_replaces_an_earlier_export(tmp_path, exported):
    (tmp_path / "mine.txt").write_text("not an export")
    with pytest.raises(ExportError, match="not empty"):
        export(tmp_path)
    assert (tmp_path / "mine.txt").exists()
    again = export(exported)  # over the earlier export: no complaint, same content
    assert len(again["cases"]) == len(json.loads((exported / "manifest.json").read_text())["cases"])


# ------------------------------------------------------------------------------- pytest plugin


def _plugin_args() -> list[str]:
    """Load the plugin by hand unless the installed entry point already does (loading it twice
    is an error)."""
    installed = any(
        ep.name == "normref" for ep in importlib.metadata.entry_points(group="pytest11")
    )
    return [] if installed else ["-p", "normref.conformance.pytest_plugin"]


def _expected_counts() -> tuple[int, int]:
    from normref import registry
    from normref.conformance.trajectories import optimizers

    provided = {"layer_norm", "rms_norm", "sgd", "clip_by_global_norm", "cosine_with_warmup"}
    cases = [c for c in load_index() if c.op in provided]
    cases += [c for c in load_cases() if c.op in provided]
    absent = (set(registry.OPS) | set(optimizers())) - provided
    return len(cases), len(absent)


def test_plugin_makes_one_test_per_case(pytester):
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = pytester.runpytest(
        *_plugin_args(), f"--normref-adapter={TEMPLATE}", "-p", "no:cacheprovider"
    )
    cases, absent = _expected_counts()
    result.assert_outcomes(passed=cases + 1, skipped=absent)


def test_plugin_failures_carry_the_diagnosis(pytester):
    adapter = pytester.makepyfile(
        my_adapter=f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import deviants
        OPS = {{"layer_norm": deviants.layer_norm(eps_outside_sqrt=True)}}
        """
    )
    result = pytester.runpytest(
        *_plugin_args(), f"--normref-adapter={adapter}", "--normref-ops=layer_norm",
        "-k", "float64", "-p", "no:cacheprovider",
    )  # fmt: skip
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1 and outcomes.get("passed", 0) >= 1
    result.stdout.fnmatch_lines(["*layer_norm-00-float64*", "*matches variant eps_outside_sqrt*"])


def test_plugin_without_the_option_adds_nothing(pytester):
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = pytester.runpytest(*_plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_plugin_bad_adapter_is_a_usage_error(pytester):
    result = pytester.runpytest(*_plugin_args(), "--normref-adapter=no_such_mod_xyz")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot import" in result.stderr.str()


def test_plugin_imports_nothing_heavy():
    """Installed, the plugin loads in every pytest run of the environment: it must cost nothing."""
    import subprocess

    code = (
        "import sys, normref.conformance.pytest_plugin; "
        "print(sorted(m for m in ('numpy', 'rich', 'torch', 'jax', 'normref.registry') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # the package's __init__ loads NumPy (normref's only hard dependency), nothing else
    assert "rich" not in proc.stdout and "torch" not in proc.stdout and "jax" not in proc.stdout
