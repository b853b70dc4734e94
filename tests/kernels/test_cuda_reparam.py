"""The weight_norm / weight_standardization CUDA kernels (weight_norm.cu, weight_standardization.cu,
launched by reparam_launch.py) against normref's float64 reference:

- on the CPU, through tests/cuda_emulator (the same .cu sources compiled by g++, one OS thread per
  CUDA thread), with `reparam_launch.bind(runtime)` running the launcher's own launch sequence,
  geometry and argument types: small shapes that cover every kernel variant;
- through nvcc for sm_80 and sm_90, as reparam_launch.py hands the sources to NVRTC: no warnings,
  no spills, no stack;
- on a real GPU through CuPy and the public ops with backend="cuda" (skipped without one), the
  conv weights of the benchmark included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_emulator import cases, emulator

import normref
from normref.kernels.cuda import launch, reparam_launch

DTYPES = cases.DTYPES  # float32, float16, float64
EPS = 1e-5

# (rows, n): n = 1 (weight_norm only: standardization needs n >= 2), n below a warp (2, 5, 31),
# 1, 2, 4 and 8 values per thread (33, 100, 1500, 5000), rows longer than the block (1500 > 512
# threads, 5000 > 1024) and the long-row kernel (9001 > 8 * 1024; float64 from 5000 > 4 * 1024).
SHAPES = ((3, 1), (4, 2), (3, 5), (3, 31), (9, 33), (5, 100), (3, 1500), (2, 5000), (2, 9001))
# One row past WHOLE_MIN_N (8192): weight_norm's many-block kernels (dim=None). 2, 3 and 5 chunks
# of 4096, the last one full (12288) or holding a single value (8193, 12289).
WHOLE_SHAPES = ((1, 8193), (1, 12288), (1, 12289), (1, 20000))

needs_compiler = pytest.mark.skipif(
    emulator.compiler() is None, reason=f"no C++ compiler ({emulator.CXX}) to build the emulator"
)


def _ids(shape):
    return "x".join(map(str, shape))


def _max_cached(dtype):
    """The longest row the register-cached kernels take (8 * 1024; 4 * 1024 for float64)."""
    return max(reparam_launch.values_per_thread(dtype)) * launch.MAX_THREADS


@pytest.fixture(scope="module")
def runtime():
    builds = {  # started together: the two compilations run in parallel
        source: emulator.Build(
            reparam_launch.KERNEL_DIR / filename,
            list(
                dict.fromkeys(n for dt in DTYPES for n in reparam_launch.kernel_names(source, dt))
            ),
        )
        for source, filename in reparam_launch.SOURCES.items()
    }
    return emulator.EmulatorRuntime({source: b.result() for source, b in builds.items()})


@pytest.fixture(scope="module")
def kernels(runtime):
    return reparam_launch.bind(runtime)


# ---- running the kernel contract, and the reference ---------------------------------------------


def _host(a):
    return a.get() if hasattr(a, "get") else a


def make_inputs(rng, rows, n, dtype, offset=0.0, scale=1.0):
    """v (also the weight to standardize) = offset + scale * N(0, 1) in `dtype`, a signed g in the
    accumulation dtype (what the op wrappers hand the kernels), a random upstream gradient dw."""
    acc = cases.accumulation(dtype)
    return {
        "v": (offset + scale * rng.standard_normal((rows, n))).astype(dtype),
        "g": (rng.uniform(0.5, 1.5, rows) * rng.choice([-1, 1], rows)).astype(acc),
        "dw": rng.standard_normal((rows, n)).astype(dtype),
    }


def run_weight_norm(kernels, xp, inputs):
    """Forward, then backward from the forward's own norm, on arrays of `xp`. Outputs start as NaN,
    so an unwritten one shows."""
    v, g, dw = (xp.asarray(inputs[k]) for k in ("v", "g", "dw"))
    rows, n = v.shape
    acc = cases.accumulation(v.dtype)
    w, dv = xp.full((rows, n), np.nan, v.dtype), xp.full((rows, n), np.nan, v.dtype)
    norm, dg = xp.full(rows, np.nan, acc), xp.full(rows, np.nan, acc)
    kernels.weight_norm_forward(v, g, w, norm)
    kernels.weight_norm_backward(dw, v, g, norm, dv, dg)
    return {k: _host(a) for k, a in {"w": w, "norm": norm, "dv": dv, "dg": dg}.items()}


def run_weight_standardization(kernels, xp, inputs, eps=EPS):
    weight, dw = xp.asarray(inputs["v"]), xp.asarray(inputs["dw"])
    rows, n = weight.shape
    acc = cases.accumulation(weight.dtype)
    w, dweight = xp.full((rows, n), np.nan, weight.dtype), xp.full((rows, n), np.nan, weight.dtype)
    mean, std = xp.full(rows, np.nan, acc), xp.full(rows, np.nan, acc)
    kernels.weight_standardization_forward(weight, eps, w, mean, std)
    kernels.weight_standardization_backward(dw, weight, mean, std, eps, dweight)
    out = {"w": w, "mean": mean, "std": std, "dweight": dweight}
    return {k: _host(a) for k, a in out.items()}


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def reference_weight_norm(inputs):
    """normref's array-API reference in float64 on the same inputs, and the size of the terms each
    gradient sums (what its rounding error scales with)."""
    v, g, dw = (_f64(inputs[k]) for k in ("v", "g", "dw"))
    with np.errstate(invalid="ignore", divide="ignore"):
        w, saved = normref.weight_norm_forward(g[:, None], v, backend="reference")
        dg, dv = normref.weight_norm_backward(dw, saved, backend="reference")
        norm = saved.norm.ravel()
        scale = {
            "dg": float(np.nanmax(np.sum(np.abs(dw * v), axis=1) / norm, initial=0)),
            "dv": float(np.nanmax(np.abs(g[:, None] / norm[:, None] * dw), initial=0)),
        }
    return {"w": w, "norm": norm, "dv": dv, "dg": dg.ravel(), "scale": scale}


def reference_weight_standardization(inputs, eps=EPS):
    weight, dw = _f64(inputs["v"]), _f64(inputs["dw"])
    n = weight.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        w, saved = normref.weight_standardization_forward(weight, eps=eps, backend="reference")
        (dweight,) = normref.weight_standardization_backward(dw, saved, backend="reference")
        # dweight = (g - mean(g)) / (std + eps) - y * sum(g y) / ((n - 1) std): the terms' sizes
        first = np.abs(dw) / (saved.std + eps)
        second = np.abs(w) * np.sum(np.abs(dw * w), axis=1, keepdims=True) / ((n - 1) * saved.std)
        terms = np.where(saved.std > 0, np.maximum(first, second), first)
        scale = {"dweight": float(np.nanmax(terms, initial=0))}
    return {
        "w": w,
        "mean": saved.mean.ravel(),
        "std": saved.std.ravel(),
        "dweight": dweight,
        "scale": scale,
    }


def assert_close(got, want, dtype, context):
    """cases.assert_close: errors in units of cases.TOLERANCE, NaN exactly where the reference has
    it, float16 outputs rounded once. The mean of weight standardization counts relative to the
    channel's spread (std), plus the rounding of storing the mean itself."""
    want, got = dict(want), dict(got)
    if "mean" in want:
        mean, got_mean = want.pop("mean"), _f64(got.pop("mean"))
        assert np.array_equal(np.isnan(mean), np.isnan(got_mean)), "mean: NaN differs"
        ok = ~np.isnan(mean)
        tolerance = cases.TOLERANCE[np.dtype(dtype).type]
        stored = np.spacing(np.abs(mean).astype(cases.accumulation(dtype))).astype(np.float64)
        bound = tolerance * want["std"] + stored
        err = np.abs(got_mean - mean)[ok] / bound[ok]
        assert np.all(err <= 1), f"{context}: mean error {np.max(err):.3g} x the bound"
    cases.assert_close(got, want, dtype, context)


# ---- the emulator -------------------------------------------------------------------------------


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_weight_norm(kernels, runtime, shape, dtype):
    rows, n = shape
    inputs = make_inputs(np.random.default_rng([rows, n]), rows, n, dtype)
    got = run_weight_norm(kernels, np, inputs)
    assert_close(got, reference_weight_norm(inputs), dtype, f"weight_norm {shape}")
    fwd = reparam_launch.launch_config("weight_norm_fwd", rows, n, dtype).kernel
    assert fwd in runtime.launched and (n > _max_cached(dtype)) == ("_long<" in fwd)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", WHOLE_SHAPES, ids=_ids)
def test_weight_norm_of_one_long_row_runs_on_many_blocks(kernels, runtime, shape, dtype):
    """dim=None's single row: per-chunk partial sums, one block combining them, an elementwise
    pass (weight_norm.cu), against the same reference as the row kernels."""
    rows, n = shape
    inputs = make_inputs(np.random.default_rng([rows, n, 2]), rows, n, dtype)
    runtime.launched.clear()
    got = run_weight_norm(kernels, np, inputs)
    assert_close(got, reference_weight_norm(inputs), dtype, f"weight_norm {shape}")
    expected = [
        reparam_launch.whole_config(k, n, dtype).kernel
        for k in (
            "weight_norm_partial",
            "weight_norm_fwd_combine",
            "weight_norm_fwd_apply",
            "weight_norm_partial",
            "weight_norm_bwd_combine",
            "weight_norm_bwd_apply",
        )
    ]
    assert runtime.launched == expected


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] >= 2], ids=_ids)
def test_weight_standardization(kernels, runtime, shape, dtype):
    rows, n = shape
    inputs = make_inputs(np.random.default_rng([rows, n, 1]), rows, n, dtype)
    got = run_weight_standardization(kernels, np, inputs)
    want = reference_weight_standardization(inputs)
    assert_close(got, want, dtype, f"weight_standardization {shape}")
    fwd = reparam_launch.launch_config("weight_std_fwd", rows, n, dtype).kernel
    assert fwd in runtime.launched and (n > _max_cached(dtype)) == ("_long<" in fwd)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(5, 37), (5, 1500), (5, 9001)], ids=_ids)
def test_special_rows(kernels, shape, dtype):
    """weight_norm: a zero row has no direction (NaN w, dv, dg: the reference's and PyTorch's), a
    NaN in v or dw stays in its row. weight_standardization: constant rows (3.25, 0) give w = 0
    exactly and a finite gradient; a NaN at a row's first element (the shift K) or in its middle
    reaches that row only."""
    rows, n = shape
    inputs = make_inputs(np.random.default_rng([rows, n, 3]), rows, n, dtype)
    v = inputs["v"]
    v[0] = 3.25
    v[1] = 0
    v[2, 0] = np.nan
    v[3, n // 2] = np.nan
    # A constant channel's gradient is (dw - mean(dw)) / eps, ~1e5 for eps = 1e-5: past float16's
    # 65504. A smaller dw there keeps it finite in every dtype.
    inputs["dw"][:2] *= inputs["dw"].dtype.type(1e-2)

    got = run_weight_norm(kernels, np, inputs)
    assert_close(got, reference_weight_norm(inputs), dtype, "weight_norm special rows")
    assert np.isnan(got["w"][1:4]).all() and np.isnan(got["dv"][1:4]).all()
    assert np.isnan(got["dg"][1:4]).all() and np.isfinite(got["w"][[0, 4]]).all()

    got = run_weight_standardization(kernels, np, inputs)
    want = reference_weight_standardization(inputs)
    assert_close(got, want, dtype, "weight_standardization special rows")
    assert np.all(got["w"][:2] == 0) and np.isfinite(got["dweight"][:2]).all()
    assert np.isnan(got["w"][2:4]).all() and np.isnan(got["dweight"][2:4]).all()
    assert np.isfinite(got["w"][4]).all() and np.isfinite(got["dweight"][4]).all()


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_special_values_in_one_long_row(kernels, dtype):
    """The many-block path keeps the row kernels' special values: a zero row has no direction
    (NaN w, dv, dg), and a NaN anywhere in the row reaches all of it through the sum."""
    n = reparam_launch.WHOLE_MIN_N + 1
    for place in ("zero", "nan"):
        inputs = make_inputs(np.random.default_rng([n, 6]), 1, n, dtype)
        if place == "zero":
            inputs["v"][:] = 0
        else:
            inputs["v"][0, n - 1] = np.nan  # in the last chunk, which holds this value only
        got = run_weight_norm(kernels, np, inputs)
        assert_close(got, reference_weight_norm(inputs), dtype, f"weight_norm {place} row")
        assert np.isnan(got["w"]).all() and np.isnan(got["dv"]).all() and np.isnan(got["dg"]).all()
        assert (got["norm"] == 0).all() if place == "zero" else np.isnan(got["norm"]).all()


@needs_compiler
@pytest.mark.parametrize("shape", [(4, 37), (3, 1500), (2, 9001)], ids=_ids)
def test_large_offset_float32(kernels, shape):
    """mean 1e4, std 1e-3 in float32 (design.md §6): the shifted forward and the re-centred
    backward keep full accuracy (an unshifted float32 formula does not: see the Numba tests)."""
    rows, n = shape
    rng = np.random.default_rng([rows, n, 4])
    inputs = make_inputs(rng, rows, n, np.float32, offset=1e4, scale=1e-3)
    got = run_weight_standardization(kernels, np, inputs, eps=1e-10)
    want = reference_weight_standardization(inputs, eps=1e-10)
    assert_close(got, want, np.float32, "weight_standardization large offset")


@needs_compiler
@pytest.mark.parametrize("shape", [(7, 1500), WHOLE_SHAPES[2]], ids=_ids)
def test_deterministic(kernels, shape):
    inputs = make_inputs(np.random.default_rng(5), *shape, np.float32)
    for run in (run_weight_norm, run_weight_standardization):
        first, second = run(kernels, np, inputs), run(kernels, np, inputs)
        for name, value in first.items():
            assert value.tobytes() == second[name].tobytes(), name


@needs_compiler
@pytest.mark.parametrize("shape", [(3, 1500), (2, 5000), WHOLE_SHAPES[2]], ids=_ids)
def test_no_barrier_races(runtime, kernels, shape):
    """With warps leaving every __syncthreads out of step (emulator jitter, up to 3 ms), the
    results stay bit-identical: a missing barrier would let a fast warp overwrite block_sum's
    shared partials while a slow one still reads them."""
    inputs = make_inputs(np.random.default_rng([*shape, 7]), *shape, np.float32)
    runs = (run_weight_norm, run_weight_standardization)
    plain = [run(kernels, np, inputs) for run in runs]
    try:
        for module in runtime.modules.values():
            module.set_jitter(3000, 1)
        for run, expected in zip(runs, plain):
            jittered = run(kernels, np, inputs)
            for name, value in expected.items():
                assert value.tobytes() == jittered[name].tobytes(), name
    finally:
        for module in runtime.modules.values():
            module.set_jitter(0)


# ---- the launcher without a GPU -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kernel", sorted(reparam_launch.ROW_KERNELS))
def test_launch_geometry(kernel, dtype):
    """One block per row; the register-cached instantiation with the fewest values per thread
    that covers the row, the long-row kernel past 8 * 1024 (4 * 1024 for float64); every name
    is compiled."""
    names = reparam_launch.kernel_names(reparam_launch.ROW_KERNELS[kernel], dtype)
    for n in [*range(1, 70), 1023, 1024, 1025, 1152, 4095, 4608, 8192, 8193, 10**6]:
        config = reparam_launch.launch_config(kernel, 1024, n, dtype)
        threads = config.block[0]
        assert config.grid == (1024, 1, 1) and config.block[1:] == (1, 1)
        assert threads % 32 == 0 and 32 <= threads <= launch.MAX_THREADS
        assert config.kernel in names
        vpt = re.search(r", (\d+)>$", config.kernel)
        if vpt is None:
            assert "_long<" in config.kernel and n > _max_cached(dtype)
        else:
            assert int(vpt[1]) * threads >= n and (
                int(vpt[1]) == 1 or int(vpt[1]) // 2 * threads < n
            )
    with pytest.raises(ValueError, match="unknown kernel"):
        reparam_launch.launch_config("layer_norm_fwd", 1, 1, dtype)
    with pytest.raises(ValueError, match="unknown kernel source"):
        reparam_launch.kernel_names("layer_norm", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_whole_row_geometry(dtype):
    """One row past WHOLE_MIN_N takes the many-block kernels, any other shape the row kernels.
    The partial and apply grids cover the row in chunks of WHOLE_CHUNK with no empty chunk, the
    combine block has a warp multiple of threads; every name is compiled."""
    names = reparam_launch.kernel_names("weight_norm", dtype)
    limit = reparam_launch.WHOLE_MIN_N
    assert not reparam_launch.whole_row(1, limit) and reparam_launch.whole_row(1, limit + 1)
    assert not reparam_launch.whole_row(2, 10**6)
    chunk = reparam_launch.WHOLE_CHUNK
    for n in [limit + 1, 3 * chunk, 3 * chunk + 1, 10**6, 2**31 - 1]:
        for kernel in reparam_launch.WHOLE_KERNELS:
            config = reparam_launch.whole_config(kernel, n, dtype)
            assert config.kernel in names and config.chunks == -(-n // chunk)
            assert (config.chunks - 1) * chunk < n <= config.chunks * chunk
            threads = config.block[0]
            assert threads % 32 == 0 and threads <= launch.MAX_THREADS
            if kernel.endswith("_combine"):
                assert config.grid == (1, 1, 1)
                assert threads >= min(config.chunks, launch.MAX_THREADS)
            else:
                assert config.grid == (config.chunks, 1, 1)
                assert threads == reparam_launch.WHOLE_THREADS
    with pytest.raises(ValueError, match="unknown kernel"):
        reparam_launch.whole_config("weight_norm_fwd", 10**5, dtype)


class _Unused:
    def launch(self, *args):
        raise AssertionError("nothing should be launched")

    def empty(self, *args):
        raise AssertionError("nothing should be allocated")


def test_inputs_are_checked_before_any_launch():
    k = reparam_launch.bind(_Unused())
    v = np.zeros((4, 3), np.float32)
    per_row = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="float32, float16 or float64"):
        k.weight_norm_forward(v.astype(np.int32), per_row, v, per_row)
    with pytest.raises(ValueError, match="g is required"):
        k.weight_norm_forward(v, None, v, per_row)
    with pytest.raises(ValueError, match="C-contiguous"):
        k.weight_standardization_forward(np.zeros((3, 4), np.float32).T, 1e-5, v, per_row, per_row)
    with pytest.raises(ValueError, match=r"\(4,\) float32 array, got shape \(4,\), float16"):
        k.weight_norm_backward(v, v, per_row.astype(np.float16), per_row, v, per_row)
    with pytest.raises(ValueError, match=r"\(4, 3\) float32 array, got shape \(3, 3\)"):
        k.weight_standardization_backward(v[:3], v, per_row, per_row, 1e-5, v)
    # no rows: nothing to launch
    empty = np.zeros((0, 3), np.float32)
    k.weight_standardization_forward(empty, 1e-5, empty, per_row[:0], per_row[:0])


def test_no_cupy_on_import():
    """Importing the launcher, computing launch configs and sources loads no CuPy."""
    code = (
        "import sys, numpy as np\n"
        "from normref.kernels.cuda import reparam_launch as r\n"
        "r.launch_config('weight_std_bwd', 4, 100, np.float32)\n"
        "r.module_source('weight_norm')\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr


# ---- nvcc -----------------------------------------------------------------------------------


NVCC = shutil.which("nvcc")


def _nvcc(path, arch):
    command = [NVCC, "-cubin", f"-arch={arch}", *reparam_launch.COMPILE_OPTIONS, "-Xptxas", "-v"]
    command += ["-Werror", "all-warnings", "-o", str(path.with_suffix(".cubin")), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(reparam_launch.SOURCES))
def test_nvcc_compiles_without_spills(tmp_path, source, arch):
    """Exactly the text and instantiations NVRTC gets (taking each kernel's address instantiates it,
    as name_expressions do): no warnings, and no spills or stack, so the register-cached rows
    really stay in registers."""
    names = list(dict.fromkeys(n for dt in DTYPES for n in reparam_launch.kernel_names(source, dt)))
    refs = "".join(f"    (void*)&{name},\n" for name in names)
    table = "void* const normref_instances[]"
    text = reparam_launch.module_source(source)
    path = tmp_path / f"{source}.cu"
    path.write_text(f"{text}\nextern {table};\n{table} = {{\n{refs}}};\n")
    done = _nvcc(path, arch)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    entries = set(re.findall(r"Compiling entry function '(\w+)' for '" + arch + "'", log))
    assert len(entries) == len(names), f"{len(entries)} kernels for {len(names)} names"
    properties = re.findall(
        r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
        r"(\d+) bytes spill loads",
        log,
    )
    assert {p[0] for p in properties} == entries
    bad = [p for p in properties if p[1:] != ("0", "0", "0")]
    assert not bad, f"stack/spills (name, stack, stores, loads): {bad}"


def test_module_source_inlines_the_header_with_line_directives():
    for source, filename in reparam_launch.SOURCES.items():
        text = reparam_launch.module_source(source)
        assert not re.search(r'#\s*include\s+"', text) and "block_sum" in text
        assert text.startswith(f'#line 1 "{(launch.KERNEL_DIR / filename).as_posix()}"')
        assert f'#line 1 "{(launch.KERNEL_DIR / "reduce.cuh").as_posix()}"' in text


# ---- a real GPU -----------------------------------------------------------------------------


def _cupy():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # not installed, no driver, no device
        pass
    return None


cp = _cupy()
needs_gpu = pytest.mark.skipif(cp is None, reason="needs CuPy and a CUDA device")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [*SHAPES, (1024, 4608), (256, 1152), (64, 65536)], ids=_ids)
def test_gpu_kernels(shape, dtype):
    rows, n = shape
    inputs = make_inputs(np.random.default_rng([rows, n, 8]), rows, n, dtype)
    got = run_weight_norm(reparam_launch, cp, inputs)
    assert_close(got, reference_weight_norm(inputs), dtype, f"weight_norm {shape}")
    if n >= 2:
        got = run_weight_standardization(reparam_launch, cp, inputs)
        want = reference_weight_standardization(inputs)
        assert_close(got, want, dtype, f"weight_standardization {shape}")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dim", [0, 1, None])
def test_gpu_public_ops(dtype, dim):
    """normref.weight_norm / weight_standardization with backend="cuda" on CuPy conv weights (the
    wrappers' layout and casting included), a non-contiguous one too."""
    rng = np.random.default_rng(9)
    v = rng.standard_normal((64, 32, 3, 3)).astype(dtype)
    dw = rng.standard_normal(v.shape).astype(dtype)
    tol = 4 * cases.TOLERANCE[np.dtype(dtype).type]
    for vs, dws in ((v, dw), (v[:, ::2], dw[:, ::2])):
        keep = () if dim is None else tuple(s if i == dim else 1 for i, s in enumerate(vs.shape))
        g = rng.uniform(0.5, 1.5, keep).astype(dtype)
        w, saved = normref.weight_norm_forward(
            cp.asarray(g), cp.asarray(vs), dim=dim, backend="cuda"
        )
        dg, dv = normref.weight_norm_backward(cp.asarray(dws), saved, backend="cuda")
        w_ref, saved_ref = normref.weight_norm_forward(
            _f64(g), _f64(vs), dim=dim, backend="reference"
        )
        dg_ref, dv_ref = normref.weight_norm_backward(_f64(dws), saved_ref, backend="reference")
        for got, want in ((w, w_ref), (dg, dg_ref), (dv, dv_ref)):
            got = cp.asnumpy(got).astype(np.float64)
            assert got.shape == want.shape
            assert np.max(np.abs(got - want)) <= tol * max(np.max(np.abs(want)), 1.0)
        if dim == 0:
            w, saved = normref.weight_standardization_forward(cp.asarray(vs), backend="cuda")
            (dx,) = normref.weight_standardization_backward(cp.asarray(dws), saved, backend="cuda")
            w_ref, saved_ref = normref.weight_standardization_forward(_f64(vs), backend="reference")
            (dx_ref,) = normref.weight_standardization_backward(
                _f64(dws), saved_ref, backend="reference"
            )
            for got, want in ((w, w_ref), (dx, dx_ref)):
                got = cp.asnumpy(got).astype(np.float64)
                assert np.max(np.abs(got - want)) <= tol * max(np.max(np.abs(want)), 1.0)
