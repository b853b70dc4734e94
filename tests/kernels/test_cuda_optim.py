"""The fused CUDA optimizer kernels (normref/kernels/cuda/optim.cu, optim_launch.py).

Three ways, as the norm kernels are tested:
- on the CPU through tests/cuda_emulator: the same source compiled with g++, launched by
  optim_launch's own code (`bind`), compared bit for bit with the reference `update_` (the
  kernels round exactly as NumPy does: --fmad=false, IEEE sqrt and division);
- compiled by nvcc for sm_80 and sm_90 as NVRTC gets it: no warnings, no stack or spills, and no
  fused multiply-add in the PTX;
- on a GPU through CuPy with `update_(backend="cuda")`, skipped (with the reason) without CuPy or
  a device.
The emulator runs one OS thread per CUDA thread, so its sizes are small.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from cuda_emulator import emulator

import normref.optim as optim
from normref.kernels.cuda import optim_launch

try:
    import ml_dtypes
except ImportError:  # bfloat16 cases are skipped
    ml_dtypes = None

CONFIGS = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd_momentum_dampening_l2": lambda: optim.sgd(
        0.05, momentum=0.9, dampening=0.25, weight_decay=1e-2
    ),
    "sgd_nesterov_maximize": lambda: optim.sgd(
        0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, maximize=True
    ),
    "sgd_scheduled": lambda: optim.sgd(
        lambda s: 0.1 / (1 + s), momentum=lambda s: 0.0 if s == 0 else 0.8
    ),
    "adam_l2_amsgrad_maximize": lambda: optim.adam(
        1e-2, weight_decay=0.1, amsgrad=True, maximize=True
    ),
    "adam_lerp_high_weight": lambda: optim.adam(1e-2, betas=(0.3, 0.9)),
    "adamw": lambda: optim.adamw(1e-2),
    "adamw_amsgrad_scheduled": lambda: optim.adamw(
        lambda s: 1e-2 * 0.7**s, weight_decay=lambda s: 0.1 * s, amsgrad=True
    ),
    "lion_decay_scheduled": lambda: optim.lion(lambda s: 1e-3 * (s + 1), weight_decay=0.5),
}
DTYPES = (np.float32, np.float16)
SIZES = (1, 37, 300, 513)  # below a block, odd, just over one and two blocks of 256
STEPS = 3


def assert_same_bits(got, want, what):
    """Equal bit for bit, except that a NaN need only be a NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(got)
    assert np.array_equal(nan, np.isnan(want)), f"{what}: NaNs at different places"
    bits = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    bad = (got.view(bits) != want.view(bits)) & ~nan
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} elements differ"


def _random(rng, shape, dtype, scale=1.0):
    return np.asarray(scale * rng.standard_normal(shape)).astype(dtype)


def _slots(state, i):
    return tuple(None if s is None else s[i] for s in state[1:])


def kernel_step(kernels, opt, params, grads, state):
    """What update_ does with a fused kernel, on `kernels` (an optim_launch.bind namespace)."""
    update = getattr(kernels, f"{opt.kernel}_update_")
    k = opt._coefficients(int(state.step))
    for i, (p, g) in enumerate(zip(params, grads)):
        update(p, g, *_slots(state, i), k)
    state.step[...] += 1


def compare_with_reference(kernels, opt, params, grads_per_step):
    fast, ref = [p.copy() for p in params], [p.copy() for p in params]
    fast_state, ref_state = opt.init(fast), opt.init(ref)
    for step, grads in enumerate(grads_per_step):
        kernel_step(kernels, opt, fast, grads, fast_state)
        opt.update_(ref, grads, ref_state, backend="reference")
        for i in range(len(ref)):
            assert_same_bits(fast[i], ref[i], f"step {step}: params[{i}]")
            for field, got, want in zip(ref_state._fields[1:], _slots(fast_state, i),
                                        _slots(ref_state, i)):  # fmt: skip
                if want is not None:
                    assert_same_bits(got, want, f"step {step}: state.{field}[{i}]")
    return fast


# ---- the emulator -------------------------------------------------------------------------------

needs_compiler = pytest.mark.skipif(
    emulator.compiler() is None, reason=f"no C++ compiler ({emulator.CXX}) to build the emulator"
)


def _dtypes_built():
    return DTYPES + ((ml_dtypes.bfloat16,) if ml_dtypes is not None else ())


@pytest.fixture(scope="module")
def runtime():
    names = [n for dt in _dtypes_built() for n in optim_launch.kernel_names(dt)]
    module = emulator.build(optim_launch.launch.KERNEL_DIR / optim_launch.SOURCE, names)
    return emulator.EmulatorRuntime({"optim": module})


@pytest.fixture(scope="module")
def kernels(runtime):
    return optim_launch.bind(runtime)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("config", CONFIGS)
def test_emulated_matches_the_reference_bit_for_bit(kernels, config, dtype):
    rng = np.random.default_rng([len(config), np.dtype(dtype).itemsize])
    params = [_random(rng, n, dtype) for n in SIZES] + [_random(rng, (3, 5, 2), dtype)]
    grads = [[_random(rng, p.shape, dtype, 0.1) for p in params] for _ in range(STEPS)]
    compare_with_reference(kernels, CONFIGS[config](), params, grads)


@needs_compiler
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's
@pytest.mark.parametrize("config", ["sgd_momentum_dampening_l2", "adam_l2_amsgrad_maximize",
                                    "adamw", "lion_decay_scheduled"])  # fmt: skip
def test_emulated_zero_inf_and_nan_grads(kernels, config):
    rng = np.random.default_rng(3)
    grads = []
    for _ in range(STEPS):
        g = _random(rng, 301, np.float32)
        g[::7], g[5], g[6], g[10::50] = 0, np.inf, -np.inf, np.nan
        grads.append([g, np.zeros(301, np.float32)])
    params = [_random(rng, 301, np.float32), np.zeros(301, np.float32)]
    fast = compare_with_reference(kernels, CONFIGS[config](), params, grads)
    assert np.isnan(fast[0][10::50]).all() and np.isfinite(fast[1]).all()


@needs_compiler
def test_emulated_non_contiguous_params_are_updated_in_place(kernels):
    """Strided and Fortran-order params, transposed grads: copied to C order, updated, copied
    back, with the reference's bits, written through the views into their base."""
    rng = np.random.default_rng(11)
    base = _random(rng, (9, 14), np.float32)
    fortran = np.asfortranarray(_random(rng, (5, 6), np.float32))
    opt = optim.adamw(1e-2, amsgrad=True)
    fast_base, ref_base = base.copy(), base.copy()
    fast = [fast_base[::2, 1::3], fortran.copy(order="F")]
    ref = [ref_base[::2, 1::3], fortran.copy(order="F")]
    fast_state, ref_state = opt.init(fast), opt.init(ref)
    for _ in range(2):
        grads = [_random(rng, p.shape[::-1], np.float32).T for p in fast]
        kernel_step(kernels, opt, fast, grads, fast_state)
        opt.update_(ref, grads, ref_state, backend="reference")
    for got, want in zip(fast, ref):
        assert_same_bits(got, want, "params")
    assert_same_bits(fast_base, ref_base, "the strided view's base")
    assert not np.array_equal(fast_base, base)


@needs_compiler
def test_emulated_grid_stride_loop_covers_every_element(kernels, runtime, monkeypatch):
    """A grid smaller than n / 256 blocks: each thread loops over several elements."""
    monkeypatch.setattr(optim_launch, "MAX_BLOCKS", 2)
    rng = np.random.default_rng(17)
    params = [_random(rng, 1500, np.float32)]
    grads = [[_random(rng, 1500, np.float32)] for _ in range(2)]
    compare_with_reference(kernels, optim.adamw(1e-2), params, grads)
    assert optim_launch.launch_config("adam_update", 1500, np.float32).grid == (2, 1, 1)
    assert runtime.launched[-1] == "normref::adam_update<float>"


@needs_compiler
@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes (NumPy's bfloat16) is not installed")
@pytest.mark.parametrize("config", ["sgd_nesterov_maximize", "adam_l2_amsgrad_maximize",
                                    "lion_decay_scheduled"])  # fmt: skip
def test_emulated_bfloat16_params_with_float32_state(kernels, config):
    """bfloat16 params: the float32 reference on the same values, rounded once per step."""
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(13)
    opt = CONFIGS[config]()
    p = _random(rng, 517, bf16)
    p32 = [p.astype(np.float32)]
    state, ref_state = opt.init(p32), opt.init(p32)
    for _ in range(STEPS):
        g = _random(rng, 517, bf16)
        g[3] = np.nan
        kernel_step(kernels, opt, [p], [g], state)
        opt.update_(p32, [g.astype(np.float32)], ref_state, backend="reference")
        rounded = p32[0].astype(bf16)
        assert_same_bits(p, rounded, "params")
        for got, want in zip(_slots(state, 0), _slots(ref_state, 0)):
            if want is not None:
                assert_same_bits(got, want, "state")
        p32[0][...] = rounded.astype(np.float32)


# ---- launch geometry and names (pure Python) ----------------------------------------------------


def test_launch_config():
    for n in (1, 255, 256, 257, 10**7):
        config = optim_launch.launch_config("lion_update", n, np.float16)
        assert config.kernel == "normref::lion_update<__half>"
        assert config.block == (optim_launch.THREADS, 1, 1)
        blocks = config.grid[0]
        assert blocks == min(-(-n // 256), optim_launch.MAX_BLOCKS) and config.grid[1:] == (1, 1)
    assert optim_launch.kernel_names(np.float32) == (
        "normref::sgd_update<float>",
        "normref::adam_update<float>",
        "normref::lion_update<float>",
    )
    with pytest.raises(ValueError, match="unknown kernel"):
        optim_launch.launch_config("adagrad_update", 10, np.float32)
    with pytest.raises(ValueError, match="n >= 1"):
        optim_launch.launch_config("sgd_update", 0, np.float32)
    with pytest.raises(TypeError, match="take float32, float16, bfloat16 params, got float64"):
        optim_launch.kernel_names(np.float64)


# ---- nvcc ---------------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")


def _source_with_instances(tmp_path):
    """optim.cu as NVRTC gets it, with every instantiation launch_config can name (taking a
    kernel's address instantiates it, as NVRTC's name_expressions do)."""
    names = [n for dt in _dtypes_built() for n in optim_launch.kernel_names(dt)]
    refs = "".join(f"    (void*)&{name},\n" for name in names)
    table = "void* const normref_instances[]"
    path = tmp_path / "optim.cu"
    path.write_text(f"{optim_launch.module_source()}\nextern {table};\n{table} = {{\n{refs}}};\n")
    return path, names


def _nvcc(*args):
    command = [NVCC, *optim_launch.COMPILE_OPTIONS, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_without_spills(tmp_path, arch):
    path, names = _source_with_instances(tmp_path)
    done = _nvcc("-cubin", f"-arch={arch}", "-Xptxas", "-v", "-Werror", "all-warnings",
                 "-o", str(path.with_suffix(".cubin")), str(path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    entries = set(re.findall(r"Compiling entry function '(\w+)' for '" + arch + "'", log))
    assert len(entries) == len(names)
    properties = re.findall(
        r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
        r"(\d+) bytes spill loads",
        log,
    )
    assert {p[0] for p in properties} == entries
    bad = [p for p in properties if p[1:] != ("0", "0", "0")]
    assert not bad, f"stack/spills (name, stack, stores, loads): {bad}"


@needs_nvcc
def test_nvcc_emits_no_fused_multiply_add(tmp_path):
    """--fmad=false holds: every a * b + c is rounded twice, as NumPy computes it."""
    path, _ = _source_with_instances(tmp_path)
    ptx = path.with_suffix(".ptx")
    done = _nvcc("-ptx", "-arch=sm_80", "-o", str(ptx), str(path))
    assert done.returncode == 0, done.stderr
    text = ptx.read_text()
    assert "sqrt.rn.f32" in text and "div.rn.f32" in text
    assert not re.search(r"\bfma\.", text)


# ---- a real GPU ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cp():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed: the CUDA kernels cannot run")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        pytest.skip(f"no usable CUDA device: {error}")
    if count == 0:
        pytest.skip("no CUDA device")
    return cupy


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("config", CONFIGS)
def test_gpu_update_matches_the_reference_bit_for_bit(cp, config, dtype):
    """update_(backend="cuda") on CuPy arrays against the reference on the host, including a
    size past one full grid (the grid-stride loop)."""
    rng = np.random.default_rng([len(config), 2])
    sizes = (1, 37, 513, 100_003, optim_launch.MAX_BLOCKS * optim_launch.THREADS + 999)
    host = [_random(rng, n, dtype) for n in sizes]
    opt = CONFIGS[config]()
    device = [cp.asarray(p) for p in host]
    state, ref_state = opt.init(device), opt.init(host)
    for step in range(STEPS):
        grads = [_random(rng, p.shape, dtype, 0.1) for p in host]
        grads[1][::5] = np.nan
        opt.update_(device, [cp.asarray(g) for g in grads], state, backend="cuda")
        opt.update_(host, grads, ref_state, backend="reference")
        for i, want in enumerate(host):
            assert_same_bits(device[i].get(), want, f"step {step}: params[{i}]")
            for got, ref in zip(_slots(state, i), _slots(ref_state, i)):
                if ref is not None:
                    assert_same_bits(got.get(), ref, f"step {step}: state[{i}]")
