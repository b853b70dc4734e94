"""`normref verify` and `normref golden build`: exit statuses, what the report says, and that a
wrong backend is caught and named. The CLI runs in-process through `main([...])`, and once as a real
subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from normref import _dispatch, _plans, registry
from normref.cli import main
from normref.conformance import runner
from normref.golden import DATA_DIR, load_index

ROOT = Path(__file__).resolve().parents[1]
NUMBA_MODULE = registry.OPS["layer_norm"].kernels["numba"].module
ALL_CASES = {case.id for case in load_index()}


def _numba_kernels():
    """The real Numba kernel module, or a skip while it cannot be imported."""
    try:
        return _dispatch.kernels_for(
            registry.OPS["layer_norm"], np.zeros((1, 1), np.float32), "numba"
        )
    except ImportError as e:
        pytest.skip(f"Numba kernels not importable: {e}")


@pytest.fixture(autouse=True)
def fresh_plans():
    """The tests here patch the registry or the loaded kernel modules, which call plans hold
    (normref/_plans.py): no plan made before a patch is used under it, or one made under it
    after."""
    _plans.clear()
    yield
    _plans.clear()


def _patch_kernels(monkeypatch, **wrappers):
    """Make the dispatcher hand out a copy of the Numba kernel module in which each named kernel
    is replaced by wrappers[name](real_kernel)."""
    real = _numba_kernels()
    fake = types.SimpleNamespace(**{name: getattr(real, name) for name in real.__all__})
    for name, wrap in wrappers.items():
        setattr(fake, name, wrap(getattr(real, name)))
    fake.entry = lambda name, rows, n, dtype: getattr(fake, name)  # what plans call: the fakes
    monkeypatch.setitem(_dispatch._loaded, NUMBA_MODULE, fake)


def _verify(capsys, *args):
    status = main(["verify", *args])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_verify_passes_on_this_install(capsys):
    _numba_kernels()
    status, out = _verify(capsys)
    assert status == 0, out
    for op in registry.OPS:
        assert op in out
    assert "numba" in out and "auto → reference" in out  # float16 runs the reference
    assert "FAIL" not in out and "PRECISION" not in out
    assert "CUDA skipped" in out or "cuda" in out


def test_normref_itself_is_verified_strictly():
    """normref's kernels round once, as the golden values do: a float32 miss is a bug there."""
    from normref.conformance.adapter import load_target

    assert load_target("normref").strict
    assert not load_target(str(ROOT / "examples" / "adapter_template.py")).strict


def test_verify_in_a_subprocess():
    """The real command line, with the real kernels: what a user runs after installing."""
    proc = subprocess.run(
        [sys.executable, "-m", "normref.cli", "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    try:
        _numba_kernels()
    except pytest.skip.Exception:  # until the kernels land: reported, not a crash
        assert proc.returncode == 1 and "UNAVAILABLE" in out and "Traceback" not in out, out
        return
    assert proc.returncode == 0, out
    assert "PASS" in out and "Traceback" not in out


def test_verify_verbose_lists_every_case(capsys):
    _numba_kernels()
    status, out = _verify(capsys, "-v", "--ops", "rms_*")
    assert status == 0, out
    rms_cases = {c for c in ALL_CASES if c.startswith("rms_norm")}
    assert rms_cases and all(c in out for c in rms_cases)
    assert "layer_norm" not in out


def test_verify_json_has_every_case(tmp_path, capsys):
    _numba_kernels()
    path = tmp_path / "report.json"
    status, _ = _verify(capsys, "--json", str(path))
    report = json.loads(path.read_text())
    assert status == 0 and report["ok"] is True
    assert {c["id"] for c in report["cases"]} == ALL_CASES
    for case in report["cases"]:
        assert case["verdict"] == "PASS" and 0 <= case["worst"] <= 1
        assert any(k.startswith("output.") for k in case["errors"])
        assert any(k.startswith("grad.") for k in case["errors"])
    with_numba = {name for name, op in registry.OPS.items() if "numba" in op.kernels}
    assert {(r["op"], r["backend"]) for r in report["rows"]} >= {(op, "numba") for op in with_numba}


def _plus(delta, index):
    """A kernel wrapper that adds `delta` to the array argument at `index` after the real call."""

    def wrap(kernel):
        def wrong(*args):
            kernel(*args)
            args[index][...] += delta

        return wrong

    return wrap


def _scribble_on_input(kernel):
    def wrong(x, *rest):
        kernel(x, *rest)
        x[0, 0] += 1

    return wrong


@pytest.mark.parametrize(
    "wrappers, message",
    [
        ({"layer_norm_forward": _plus(1e-3, 4)}, "output.y off by"),
        ({"layer_norm_backward": _plus(1e-3, 5)}, "grad.x off by"),
        ({"layer_norm_forward": _scribble_on_input}, "input.x was modified in place"),
    ],
    ids=["forward", "backward", "mutates input"],
)
def test_a_wrong_backend_fails_and_is_named(monkeypatch, tmp_path, capsys, wrappers, message):
    _patch_kernels(monkeypatch, **wrappers)
    path = tmp_path / "report.json"
    status, out = _verify(capsys, "--json", str(path))
    assert status == 1, out
    assert "FAIL layer_norm [numba]" in out and message in out
    rows = {(r["op"], r["backend"]): r["verdict"] for r in json.loads(path.read_text())["rows"]}
    assert rows[("layer_norm", "numba")] == "FAIL"
    assert rows[("rms_norm", "numba")] == "PASS"  # the damage is pinned on the right op


def test_a_kernel_that_raises_fails_its_cases_without_crashing(monkeypatch, capsys):
    def boom(kernel):
        def raising(*args):
            raise RuntimeError("kernel exploded")

        return raising

    _patch_kernels(monkeypatch, rms_norm_backward=boom)
    status, out = _verify(capsys)
    assert status == 1 and "RuntimeError: kernel exploded" in out and "rms_norm" in out


def test_an_unimportable_kernel_module_is_reported_unavailable(monkeypatch, capsys):
    missing = registry.Kernels("normref.kernels.numba.not_written_yet", ("float32", "float64"))
    for op in registry.OPS.values():
        monkeypatch.setitem(op.kernels, "numba", missing)
    status, out = _verify(capsys)
    assert status == 1, out  # normref's own calls would raise too: the install is not right
    assert "UNAVAILABLE" in out and "ModuleNotFoundError" in out
    assert "auto → reference" in out  # the float16 cases still ran


def test_cuda_is_skipped_with_a_reason(monkeypatch, capsys):
    monkeypatch.setattr(runner, "_cupy", lambda: (None, "CuPy finds no CUDA device"))
    _, out = _verify(capsys, "--ops", "rms_norm")
    assert "CUDA skipped: CuPy finds no CUDA device" in out


def test_cupy_without_a_gpu_is_noticed(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice")

    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    )
    monkeypatch.setitem(sys.modules, "cupy", fake)
    cupy, why = runner._cupy()
    assert cupy is None and "no CUDA device" in why and "cudaErrorNoDevice" in why


def test_runner_takes_any_backend():
    """The runner is not tied to normref's backends: a target is anything with this interface."""

    class Echo:
        """Returns the golden values themselves, optionally all wrong by `delta`."""

        def __init__(self, delta):
            self.name = f"echo{delta}"
            self.delta = delta

        def handles(self, case):
            return case.dtype == "float64"

        def unavailable(self, case):
            return None

        def run(self, case, arrays):
            def out(key):
                a = arrays[key]  # float64 values, or an exact count
                return (a + self.delta).astype(case.dtype) if a.dtype.kind == "f" else a

            return runner.Outcome(
                outputs=[out(f"output.{n}") for n in case.outputs],
                grads={n: out(f"grad.{n}") for n in case.grads},
                ran=self.name,
            )

    report = runner.verify([Echo(0.0)])
    assert report.ok and all(c.worst == 0 for c in report.cases)
    assert len(report.cases) == len([c for c in ALL_CASES if c.endswith("float64")])
    report = runner.verify([Echo(1e-9)], ops="layer_*")
    assert not report.ok and {r.op for r in report.rows} == {"layer_norm"}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["verify", "--bogus"],
        ["verify", "no_such_target_module"],  # neither a built-in target nor importable
        ["verify", "--dtype", "float8"],
        ["verify", "--skip", "*"],  # skips everything: nothing to check is a usage error
        ["verify", "--ops", "no_such_op*"],
        ["verify", "--json", "/no/such/dir/report.json"],
        ["golden"],
        ["golden", "build", "--bogus"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "verify" in capsys.readouterr().out


def test_golden_build_command(tmp_path, capsys):
    assert main(["golden", "build", "--out", str(tmp_path / "a")]) == 0
    assert "golden cases" in capsys.readouterr().out
    proc = subprocess.run(
        [sys.executable, "-m", "normref.golden", "build", "--out", str(tmp_path / "b")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    a = sorted((tmp_path / "a").iterdir())
    b = sorted((tmp_path / "b").iterdir())
    assert [p.name for p in a] == [p.name for p in b] and len(a) == len(ALL_CASES) + 1
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_cli_and_conformance_import_lightly():
    """`import normref` loads NumPy and array-api-compat only; the CLI, the runner and the pytest
    plugin add no heavy imports until a command runs."""
    code = (
        "import sys, normref, normref.cli, normref.golden, normref.conformance, "
        "normref.conformance.adapter, normref.conformance.pytest_plugin; "
        "print(sorted(m for m in ('rich', 'numba', 'cupy', 'torch', 'jax') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_corrupt_golden_file_fails_its_case_and_the_rest_still_runs(tmp_path):
    data = shutil.copytree(DATA_DIR, tmp_path / "data")
    victim = data / "rms_norm-01-float32.npz"
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    report = runner.verify(runner.normref_backends()[0], directory=data)
    failed = [c for c in report.cases if c.verdict != "PASS"]
    assert [(c.id, c.backend) for c in failed] == [("rms_norm-01-float32", "golden data")]
    assert "sha256" in failed[0].message and not report.ok
    assert len(report.cases) == len(ALL_CASES)
