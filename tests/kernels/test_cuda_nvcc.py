"""Every CUDA source compiles with nvcc for sm_80 and sm_90, exactly as launch.py hands it to NVRTC
(local headers inlined, the same template instantiations), without warnings, register spills or
stack frames; and its #line directives make diagnostics name the real file and line."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from normref.kernels.cuda import launch

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")

ARCHS = ("sm_80", "sm_90")
DTYPES = (np.float32, np.float16, np.float64)


def _with_instances(text: str, names: list[str]) -> str:
    """Taking each kernel's address instantiates it, as NVRTC's name_expressions do."""
    refs = "".join(f"    (void*)&{name},\n" for name in names)
    table = "void* const normref_instances[]"  # extern: no unused-variable warning
    return f"{text}\n// launch.py's instantiations\nextern {table};\n{table} = {{\n{refs}}};\n"


def _nvcc(path: Path, arch: str) -> subprocess.CompletedProcess:
    command = [NVCC, "-cubin", f"-arch={arch}", *launch.COMPILE_OPTIONS, "-Xptxas", "-v"]
    command += ["-Werror", "all-warnings", "-o", str(path.with_suffix(".cubin")), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(launch.SOURCES))
def test_compiles_without_spills(tmp_path, source, arch):
    names = list(dict.fromkeys(n for dt in DTYPES for n in launch.kernel_names(source, dt)))
    path = tmp_path / f"{source}.cu"
    path.write_text(_with_instances(launch.module_source(source), names))
    done = _nvcc(path, arch)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    entries = re.findall(r"Compiling entry function '(\w+)' for '" + arch + "'", log)
    assert len(set(entries)) == len(names), f"{len(set(entries))} kernels for {len(names)} names"
    properties = re.findall(
        r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
        r"(\d+) bytes spill loads",
        log,
    )
    assert {p[0] for p in properties} == set(entries)
    # No spills, and no stack: the register-cached rows really stay in registers.
    bad = [p for p in properties if p[1:] != ("0", "0", "0")]
    assert not bad, f"stack/spills (name, stack, stores, loads): {bad}"


def test_line_directives_point_at_the_real_files(tmp_path):
    """An error in the inlined header and one in the .cu after the include are both reported at
    their own file and line, so a compile error from CuPy leads straight to the source."""
    for name in ("reduce.cuh", "layer_norm.cu"):
        shutil.copy(launch.KERNEL_DIR / name, tmp_path / name)
    broken = {}
    for name in ("reduce.cuh", "layer_norm.cu"):
        lines = (tmp_path / name).read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("namespace normref {"))
        lines.insert(at + 1, "this_is_not_cuda;")
        broken[name] = at + 2  # 1-based line of the inserted error
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    inlined = tmp_path / "inlined.cu"
    inlined.write_text(launch.module_source("layer_norm", tmp_path))
    done = _nvcc(inlined, "sm_80")
    assert done.returncode != 0
    for name, line in broken.items():
        where = f"{(tmp_path / name).as_posix()}({line}): error"
        assert where in done.stderr, done.stderr
