"""The BatchNorm / GroupNorm CUDA kernels (batch_norm.cu, group_norm.cu, channel_launch.py) against
normref's float64 reference: on the CPU through tests/cuda_emulator (channel_launch.bind runs the
launcher's own launch sequence and geometry there), compiled by nvcc for sm_80 / sm_90 without
spills, and on a real GPU through CuPy when there is one.

OS threads are expensive in the emulator: the shapes are few and small, but cover every path: a
plane longer than a block, units cut into segments (S > UNIT), units grouping samples (short
planes), N = 1, C = 1, one value per plane, GroupNorm rows longer than a block.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from cuda_emulator import cases, emulator

import normref
from normref.kernels.cuda import channel_launch as cl

DTYPES = cases.DTYPES  # float32, float16, float64
EPS = 1e-5
# (N, C, S): S > UNIT (two segments), plane > block with samples grouped, S = 1 with 40 samples
# to a unit, C = 1, N = 1, odd sizes
BN_SHAPES = ((1, 2, 5000), (4, 3, 700), (40, 3, 1), (5, 1, 33), (1, 3, 300), (3, 5, 7))
# (N, C, S, G): a row longer than the block, one value per plane (G = 1 and G = C), instance norm
GN_SHAPES = ((1, 4, 1500, 2), (3, 6, 7, 3), (5, 6, 1, 1), (2, 3, 100, 3), (4, 8, 9, 2))


def _ids(value):
    return "x".join(map(str, value)) if isinstance(value, tuple) else np.dtype(value).name


def _runtime(build_dir=emulator.BUILD):
    builds = {}  # started together: the two compilations run in parallel
    for source, filename in cl.SOURCES.items():
        names = dict.fromkeys(n for dt in DTYPES for n in cl.kernel_names(source, dt))
        builds[source] = emulator.Build(cl.KERNEL_DIR / filename, names, build_dir)
    return emulator.EmulatorRuntime({source: b.result() for source, b in builds.items()})


# ---- inputs, the reference, and running the kernels --------------------------------------------


def make(shape, dtype, *, weight=True, bias=True, offset=0.0, scale=1.0, seed=0):
    """x = offset + scale * N(0, 1) in `dtype` (N, C, S), dy, and weight / bias / running
    statistics in the accumulation dtype (what the op wrappers hand to the kernels)."""
    rng = np.random.default_rng(seed)
    acc = cases.accumulation(dtype)
    c = shape[1]
    return {
        "x": (offset + scale * rng.standard_normal(shape)).astype(dtype),
        "dy": rng.standard_normal(shape).astype(dtype),
        "weight": (rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)).astype(acc)
        if weight
        else None,
        "bias": rng.standard_normal(c).astype(acc) if bias else None,
        "running_mean": rng.standard_normal(c).astype(acc),
        "running_var": rng.uniform(0.5, 1.5, c).astype(acc),
    }


def _nan(xp, shape, dtype, wanted=True):
    return xp.full(shape, np.nan, dtype) if wanted else None  # unwritten outputs show as NaN


def run(kernels, xp, inputs, mode, groups=1, grads=(True, True)):
    """Forward, then backward from the forward's own statistics, through `kernels` (channel_launch
    or channel_launch.bind(runtime)) on arrays of `xp`. mode: "train", "eval" or "group".
    grads: whether dweight / dbias are wanted (when the parameter exists)."""
    x, dy, w, b = (
        None if inputs[k] is None else xp.asarray(inputs[k]) for k in ("x", "dy", "weight", "bias")
    )
    n, c, _ = x.shape
    acc = cases.accumulation(x.dtype)
    y, dx = _nan(xp, x.shape, x.dtype), _nan(xp, x.shape, x.dtype)
    dw = _nan(xp, (c,), acc, w is not None and grads[0])
    db = _nan(xp, (c,), acc, b is not None and grads[1])
    out = {}
    if mode == "group":
        mean, rstd = _nan(xp, (n, groups), acc), _nan(xp, (n, groups), acc)
        kernels.group_norm_forward(x, w, b, EPS, y, mean, rstd)
        kernels.group_norm_backward(dy, x, mean, rstd, w, dx, dw, db)
    elif mode == "train":
        mean, rstd, sumsq = (_nan(xp, (c,), acc) for _ in range(3))
        kernels.batch_norm_forward(x, w, b, EPS, y, mean, rstd, sumsq)
        kernels.batch_norm_backward(dy, x, mean, rstd, w, True, dx, dw, db)
        out["sumsq"] = sumsq
    else:
        mean = xp.asarray(inputs["running_mean"])
        rstd = 1 / xp.sqrt(xp.asarray(inputs["running_var"]) + acc(EPS))
        kernels.batch_norm_apply(x, mean, rstd, w, b, y)
        kernels.batch_norm_backward(dy, x, mean, rstd, w, False, dx, dw, db)
    out.update(y=y, mean=mean, rstd=rstd, dx=dx, dweight=dw, dbias=db)
    return {k: v.get() if hasattr(v, "get") else v for k, v in out.items()}


def reference(inputs, mode, groups=1, grads=(True, True)):
    """normref's array-API reference in float64 on the same inputs, plus the size of the terms each
    gradient sums (what its rounding error scales with: see cases.compare)."""
    f64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in inputs.items()}
    x, dy, w, b = f64["x"], f64["dy"], f64["weight"], f64["bias"]
    n, c, s = x.shape
    with np.errstate(invalid="ignore"):
        if mode == "group":
            y, saved = normref.group_norm_forward(
                x, w, b, num_groups=groups, eps=EPS, backend="reference"
            )
            dx, dw, db = normref.group_norm_backward(dy, saved, backend="reference")
            mean = np.repeat(saved.mean, c // groups, axis=1)[:, :, None]
            rstd = np.repeat(saved.rstd, c // groups, axis=1)[:, :, None]
        else:
            rm, rv = f64["running_mean"], f64["running_var"]
            forward = normref.batch_norm_forward(
                x, w, b, rm, rv, training=mode == "train", eps=EPS, backend="reference"
            )
            y, saved = forward[0], forward[-1]
            dx, dw, db = normref.batch_norm_backward(dy, saved, backend="reference")
            mean, rstd = saved.mean[None, :, None], saved.rstd[None, :, None]
        g = dy if w is None else dy * w[None, :, None]
        want = {
            "y": y,
            "mean": saved.mean,
            "rstd": saved.rstd,
            "dx": dx,
            "dweight": dw,
            "dbias": db,
        }
        want["scale"] = {
            "dx": float(np.nanmax(np.abs(rstd * g))),
            "dweight": float(np.nanmax(np.sum(np.abs(dy * (x - mean) * rstd), axis=(0, 2)))),
            "dbias": float(np.nanmax(np.sum(np.abs(dy), axis=(0, 2)))),
        }
    if not grads[0]:
        want["dweight"] = None
    if not grads[1]:
        want["dbias"] = None
    if mode == "train":
        want["sumsq"] = np.sum((x - saved.mean[None, :, None]) ** 2, axis=(0, 2))
    return want


def check(kernels, xp, inputs, mode, groups=1, grads=(True, True), context=""):
    got = run(kernels, xp, inputs, mode, groups, grads)
    want = reference(inputs, mode, groups, grads)
    cases.assert_close(got, want, inputs["x"].dtype, f"{mode} {context}")
    return got


# ---- the emulator --------------------------------------------------------------------------------

emulated = pytest.mark.skipif(
    emulator.compiler() is None, reason=f"no C++ compiler ({emulator.CXX}) for the emulator"
)


@pytest.fixture(scope="module")
def runtime():
    return _runtime()


@pytest.fixture(scope="module")
def kernels(runtime):
    return cl.bind(runtime)


@emulated
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=_ids)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_norm(kernels, mode, shape, dtype):
    inputs = make(shape, dtype, seed=sum(shape))
    check(kernels, np, inputs, mode, context=str(shape))


@emulated
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape", GN_SHAPES, ids=_ids)
def test_group_norm(kernels, runtime, shape, dtype):
    n, c, s, groups = shape
    inputs = make((n, c, s), dtype, seed=sum(shape))
    check(kernels, np, inputs, "group", groups, context=str(shape))


@emulated
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("mode", ["train", "eval", "group"])
@pytest.mark.parametrize(
    "affine, grads",
    [
        ("none", (True, True)),
        ("weight", (True, True)),
        ("bias", (True, True)),
        ("both", (False, False)),
    ],
    ids=["no-params", "weight-only", "bias-only", "no-param-grads"],
)
def test_absent_parameters_and_gradients(kernels, affine, grads, mode, dtype):
    weight, bias = affine in ("weight", "both"), affine in ("bias", "both")
    inputs = make((3, 4, 300), dtype, weight=weight, bias=bias)
    check(kernels, np, inputs, mode, 2, grads, context=affine)


@emulated
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_special_channels(kernels, dtype):
    """Channel 0 constant, channel 1 all zero, NaN at channel 2's shift K = x[0, 2, 0] and in the
    middle of channel 3: constant channels normalize to exactly the bias, NaN reaches its channel's
    y, dx and dweight (training), its (sample, group) (group norm, one channel per group), and
    only its value's y in eval; everything else is untouched."""
    shape = (3, 6, 50)
    inputs = make(shape, dtype, seed=3)
    x = inputs["x"]
    x[:, 0] = 3.25
    x[:, 1] = 0
    x[0, 2, 0] = np.nan
    x[1, 3, 25] = np.nan
    got = check(kernels, np, inputs, "train", context="special")
    bias_as_y = inputs["bias"].astype(dtype)
    assert np.array_equal(got["y"][:, 0], np.broadcast_to(bias_as_y[0], (3, 50)))
    assert np.array_equal(got["y"][:, 1], np.broadcast_to(bias_as_y[1], (3, 50)))
    assert np.isnan(got["y"][:, 2:4]).all() and not np.isnan(got["y"][:, 4:]).any()
    assert np.isnan(got["dweight"][2:4]).all() and not np.isnan(got["dbias"]).any()
    got = check(kernels, np, inputs, "eval", context="special")
    assert np.isnan(got["y"]).sum() == 2 and not np.isnan(got["dx"]).any()
    got = check(kernels, np, inputs, "group", 6, context="special")  # a group per channel
    assert np.array_equal(got["y"][:, :2], np.broadcast_to(bias_as_y[:2, None], (3, 2, 50)))
    nan = np.zeros(shape, bool)
    nan[0, 2] = nan[1, 3] = True  # the NaNs' (sample, group)
    assert np.array_equal(np.isnan(got["y"]), nan) and np.array_equal(np.isnan(got["dx"]), nan)


@emulated
@pytest.mark.parametrize("mode", ["train", "group"])
@pytest.mark.parametrize("shape", [(2, 2, 5000), (6, 4, 300)], ids=_ids)
def test_large_offset_float32(kernels, shape, mode):
    """mean 1e4, std 1e-3 per channel (design.md §6): the shifted statistics and re-centred
    backward keep full accuracy; the plain float32 two-pass formula does not (checked, so that the
    case keeps its teeth)."""
    inputs = make(shape, np.float32, offset=1e4, scale=1e-3, seed=4)
    got = check(kernels, np, inputs, mode, 2, context="large offset")
    x, w, b = inputs["x"], inputs["weight"][:, None], inputs["bias"][:, None]
    # the naive formula over the same values: per channel, or per (sample, group of 2)
    xs, axes = (x, (0, 2)) if mode == "train" else (x.reshape(shape[0], 2, -1), (2,))
    mean = xs.mean(axis=axes, keepdims=True, dtype=np.float32)
    var = ((xs - mean) ** 2).mean(axis=axes, keepdims=True)
    naive = ((xs - mean) / np.sqrt(var + np.float32(EPS))).reshape(shape) * w + b
    want = reference(inputs, mode, 2)["y"]
    assert np.max(np.abs(naive - want)) > 100 * np.max(np.abs(got["y"] - want))


@emulated
def test_deterministic_and_free_of_barrier_races(runtime, kernels):
    """Same input, same bits, also with warps leaving every __syncthreads out of step (emulator
    jitter): no atomics, fixed reduction orders, no missing barrier."""
    inputs = make((4, 3, 700), np.float32, seed=5)
    first = {m: run(kernels, np, inputs, m, 3) for m in ("train", "group")}
    try:
        for module in runtime.modules.values():
            module.set_jitter(2000, 1)
        again = {m: run(kernels, np, inputs, m, 3) for m in ("train", "group")}
    finally:
        for module in runtime.modules.values():
            module.set_jitter(0)
    for mode, outputs in first.items():
        for name, value in outputs.items():
            assert value.tobytes() == again[mode][name].tobytes(), (mode, name)


@emulated
def test_launches_are_the_configured_ones(runtime, kernels):
    runtime.launched.clear()
    run(kernels, np, make((4, 3, 700), np.float32), "eval", grads=(False, False))
    assert runtime.launched == ["normref::batch_norm_apply<float, float>"] + [
        "normref::batch_norm_bwd_dx<float, float>"
    ]  # fixed statistics and no parameter gradients: no sums at all


# ---- geometry and input checks (no compiler needed) ----------------------------------------------


@pytest.mark.parametrize(
    "shape", [(1, 2, 5000), (40, 3, 1), (4, 3, 700), (2, 5, 8193), (7, 2, 4096)]
)
def test_units_tile_every_channel(shape):
    """Decoding every unit as batch_norm.cu's Unit does covers each channel's values once."""
    n, c, s = shape
    rows, seg, count = cl.units(n, c, s)
    assert rows * seg <= max(cl.UNIT, s) and count < 2**31
    segments = -(-s // seg)
    seen = np.zeros(shape, np.int64)
    for u in range(count):
        ch, n0, s0 = (u // segments) % c, u // segments // c * rows, u % segments * seg
        seen[n0 : n0 + rows, ch, s0 : s0 + seg] += 1
    assert np.all(seen == 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_launch_configs_name_compiled_kernels(dtype):
    names = {s: cl.kernel_names(s, dtype) for s in cl.SOURCES}
    kernels = {
        "batch_norm": ["batch_norm_stats", "batch_norm_stats_finish", "batch_norm_apply"]
        + ["batch_norm_bwd_partial", "batch_norm_bwd_finish", "batch_norm_bwd_dx"],
        "group_norm": ["group_norm_fwd", "group_norm_bwd", "param_grad_finish"],
    }
    for shape in [(1, 1, 1), (40, 3, 1), (2, 5, 8193), (64, 512, 3136), (1, 1, 10**7)]:
        for source, ks in kernels.items():
            for k in ks:
                config = cl.launch_config(k, *shape, dtype, groups=1)
                assert config.kernel in names[source]
                threads = config.block[0] * config.block[1]
                assert threads % 32 == 0 and 32 <= threads <= 1024, (k, config)
                assert 1 <= config.grid[0] < 2**31 and config.grid[1:] == (1, 1)
    assert cl.launch_config("group_norm_bwd", 8, 256, 784, dtype, 32).grid == (256, 1, 1)
    with pytest.raises(ValueError, match="unknown kernel source"):
        cl.kernel_names("layer_norm", dtype)


class _Unused:
    def launch(self, *args):
        raise AssertionError("nothing should be launched")

    def empty(self, *args):
        raise AssertionError("nothing should be allocated")


def test_inputs_are_checked_before_any_launch():
    k = cl.bind(_Unused())
    x = np.zeros((2, 3, 4), np.float32)
    v = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="float32, float16 or float64"):
        k.batch_norm_apply(x.astype(np.int32), v, v, None, None, x)
    with pytest.raises(ValueError, match=r"\(N, C, S\)"):
        k.batch_norm_apply(x.reshape(6, 4), v, v, None, None, x)
    with pytest.raises(ValueError, match=r"C-contiguous \(2, 3, 4\) float32 array, got shape"):
        k.batch_norm_forward(x, None, None, EPS, np.zeros((4, 3, 2), np.float32).T, v, v, v)
    with pytest.raises(ValueError, match=r"\(3,\) float32 array, got shape \(3,\), float16"):
        k.batch_norm_backward(x, x, v, v, v.astype(np.float16), True, x, None, None)
    with pytest.raises(ValueError, match="2 groups for 3 channels"):
        stats = np.zeros((2, 2), np.float32)
        k.group_norm_forward(x, None, None, EPS, x, stats, stats)
    with pytest.raises(ValueError, match=r"\(2, 3\) float32 array, got shape \(2, 3\), float64"):
        k.group_norm_backward(x, x, np.zeros((2, 3)), np.zeros((2, 3)), None, x, None, None)


# ---- nvcc ----------------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(cl.SOURCES))
def test_compiles_without_spills(tmp_path, source, arch):
    """As NVRTC gets it (local headers inlined, launch_config's instantiations), without warnings,
    register spills or stack frames (test_cuda_nvcc.py does the same for launch.py's sources)."""
    names = list(dict.fromkeys(n for dt in DTYPES for n in cl.kernel_names(source, dt)))
    table = "void* const normref_instances[]"  # taking the addresses instantiates the templates
    refs = "".join(f"    (void*)&{name},\n" for name in names)
    path = tmp_path / f"{source}.cu"
    path.write_text(f"{cl.module_source(source)}\nextern {table};\n{table} = {{\n{refs}}};\n")
    command = [NVCC, "-cubin", f"-arch={arch}", *cl._launch.COMPILE_OPTIONS, "-Xptxas", "-v"]
    command += ["-Werror", "all-warnings", "-o", str(path.with_suffix(".cubin")), str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    properties = re.findall(
        r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
        r"(\d+) bytes spill loads",
        done.stdout + done.stderr,
    )
    assert len({p[0] for p in properties}) == len(names)
    bad = [p for p in properties if p[1:] != ("0", "0", "0")]
    assert not bad, f"stack/spills (name, stack, stores, loads): {bad}"


# ---- a real GPU ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cupy():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed: the CUDA kernels cannot run")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as error:
        pytest.skip(f"no usable CUDA device: {error}")
    return cupy


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("mode", ["train", "eval", "group"])
def test_gpu_kernels(cupy, mode, dtype):
    for shape in (*BN_SHAPES, (32, 64, 3136), (1, 3, 10**6)):
        inputs = make(shape, dtype, seed=sum(shape))
        groups = 1 if mode != "group" or shape[1] % 2 else 2
        check(cl, cupy, inputs, mode, groups, context=str(shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_gpu_public_ops(cupy, dtype):
    """normref.batch_norm / group_norm with backend="cuda" on CuPy arrays (the wrappers' views and
    casts included), non-contiguous input too, against the reference."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 6, 7, 8)).astype(dtype)
    w, b = (rng.standard_normal(6).astype(dtype) for _ in range(2))
    dy = rng.standard_normal(x.shape).astype(dtype)
    tol = 4 * cases.TOLERANCE[np.dtype(dtype).type]
    for xs, dys in ((x, dy), (x[..., ::2], dy[..., ::2])):
        f64 = [a.astype(np.float64) for a in (xs, w, b, dys)]
        for op, kw in (("batch_norm", {}), ("group_norm", {"num_groups": 3})):
            fwd, bwd = getattr(normref, f"{op}_forward"), getattr(normref, f"{op}_backward")
            args = [cupy.asarray(a) for a in (xs, w, b)]
            out = fwd(*args, **kw, backend="cuda")
            grads = bwd(cupy.asarray(dys), out[-1], backend="cuda")
            out_ref = fwd(*f64[:3], **kw, backend="reference")
            grads_ref = bwd(f64[3], out_ref[-1], backend="reference")
            for got, want in zip((out[0], *grads), (out_ref[0], *grads_ref)):
                got = cupy.asnumpy(got).astype(np.float64)
                assert np.max(np.abs(got - want)) <= tol * max(np.max(np.abs(want)), 1.0), op
