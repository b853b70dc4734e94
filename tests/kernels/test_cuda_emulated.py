"""The CUDA kernels (normref/kernels/cuda/*.cu), run on the CPU by tests/cuda_emulator, against
normref's float64 reference.

The emulator compiles the very same .cu sources with g++ and runs one OS thread per CUDA thread;
`launch.bind(runtime)` runs launch.py's own launch sequence, geometry and argument types on it.
OS threads are expensive: the shapes are few and small, but cover every kernel variant.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulator import cases, emulator

from normref.kernels.cuda import launch

pytestmark = pytest.mark.skipif(
    emulator.compiler() is None, reason=f"no C++ compiler ({emulator.CXX}) to build the emulator"
)

EPS = 1e-5


@pytest.fixture(scope="module")
def runtime():
    return emulator.launcher_runtime()


@pytest.fixture(scope="module")
def kernels(runtime):
    return launch.bind(runtime)


def _ids(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", cases.SHAPES, ids=_ids)
def test_layer_norm(kernels, runtime, shape, dtype):
    rows, n = shape
    inputs = cases.make_inputs(np.random.default_rng([rows, n]), rows, n, dtype)
    got = cases.run_layer_norm(kernels, np, inputs, EPS)
    cases.assert_close(got, cases.reference_layer_norm(inputs, EPS), dtype, f"layer_norm {shape}")
    # the row kernels this shape exercises are the ones launch_config picks
    fwd = launch.launch_config("layer_norm_fwd", rows, n, dtype).kernel
    assert fwd in runtime.launched and (n > 8192) == fwd.startswith("normref::layer_norm_fwd_long")


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", cases.SHAPES, ids=_ids)
def test_rms_norm(kernels, shape, dtype):
    rows, n = shape
    inputs = cases.make_inputs(np.random.default_rng([rows, n, 1]), rows, n, dtype, bias=False)
    got = cases.run_rms_norm(kernels, np, inputs, EPS)
    cases.assert_close(got, cases.reference_rms_norm(inputs, EPS), dtype, f"rms_norm {shape}")


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("affine", ["none", "weight", "bias"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 1500), (2, 9001)], ids=_ids)
def test_absent_parameters(kernels, shape, affine, dtype):
    rows, n = shape
    rng = np.random.default_rng([rows, n, 2])
    inputs = cases.make_inputs(
        rng, rows, n, dtype, weight=affine == "weight", bias=affine == "bias"
    )
    got = cases.run_layer_norm(kernels, np, inputs, EPS)
    cases.assert_close(got, cases.reference_layer_norm(inputs, EPS), dtype, f"layer_norm {affine}")
    if affine != "bias":
        got = cases.run_rms_norm(kernels, np, inputs, EPS)
        cases.assert_close(got, cases.reference_rms_norm(inputs, EPS), dtype, f"rms_norm {affine}")


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(5, 37), (5, 1500), (5, 9001)], ids=_ids)
def test_special_rows(kernels, shape, dtype):
    """Row 0 constant, row 1 zero, NaN at row 2's first element (LayerNorm's shift K) and in the
    middle of row 3: the constant and zero rows normalize to exactly 0 (y = bias), NaN reaches
    every output of its row (and every column of dweight), the other rows are untouched."""
    rows, n = shape
    inputs = cases.make_inputs(np.random.default_rng([rows, n, 3]), rows, n, dtype)
    x = inputs["x"]
    x[0] = 3.25
    x[1] = 0
    x[2, 0] = np.nan
    x[3, n // 2] = np.nan

    got = cases.run_layer_norm(kernels, np, inputs, EPS)
    want = cases.reference_layer_norm(inputs, EPS)
    cases.assert_close(got, want, dtype, "layer_norm special rows")
    bias_as_y = inputs["bias"].astype(dtype)
    assert np.array_equal(got["y"][0], bias_as_y) and np.array_equal(got["y"][1], bias_as_y)
    assert np.isnan(got["y"][2:4]).all() and np.isnan(got["dx"][2:4]).all()
    assert np.isnan(got["mean"][2:4]).all() and not np.isnan(got["y"][4]).any()

    got = cases.run_rms_norm(kernels, np, inputs, EPS)
    cases.assert_close(got, cases.reference_rms_norm(inputs, EPS), dtype, "rms_norm special rows")
    assert np.all(got["y"][1] == 0) and np.isnan(got["y"][2:4]).all()


@pytest.mark.parametrize("shape", [(4, 37), (3, 1500), (2, 9001)], ids=_ids)
def test_large_offset_float32(kernels, shape):
    """mean 1e4, std 1e-3 in float32 (design.md §6): the shifted forward and the re-centred
    backward keep full accuracy; the plain float32 two-pass formula does not (checked, so that the
    case keeps its teeth)."""
    rows, n = shape
    eps = 1e-10  # let the variance (1e-6), not eps, set rstd
    rng = np.random.default_rng([rows, n, 4])
    inputs = cases.make_inputs(rng, rows, n, np.float32, offset=1e4, scale=1e-3)
    want = cases.reference_layer_norm(inputs, eps)
    got = cases.run_layer_norm(kernels, np, inputs, eps)
    cases.assert_close(got, want, np.float32, "layer_norm large offset")

    x = inputs["x"]
    mean = x.mean(axis=1, keepdims=True, dtype=np.float32)
    naive = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + np.float32(eps))
    naive_y = naive * inputs["weight"] + inputs["bias"]
    assert cases.compare({"y": naive_y}, {"y": want["y"]}, np.float32)["y"] > 1


def test_deterministic(kernels):
    """Same input, same bits: no atomics, fixed reduction order (several row chunks here)."""
    inputs = cases.make_inputs(np.random.default_rng(5), 70, 33, np.float32)
    first = cases.run_layer_norm(kernels, np, inputs, EPS)
    second = cases.run_layer_norm(kernels, np, inputs, EPS)
    assert launch.launch_config("param_grad_partial", 70, 33, np.float32).chunks > 1
    for name, value in first.items():
        assert value.tobytes() == second[name].tobytes(), name


def test_zero_rows(kernels):
    """No rows: nothing to launch, and the parameter gradients are empty sums, 0."""
    inputs = cases.make_inputs(np.random.default_rng(6), 0, 7, np.float32)
    got = cases.run_layer_norm(kernels, np, inputs, EPS)
    assert got["y"].shape == (0, 7) and np.all(got["dweight"] == 0) and np.all(got["dbias"] == 0)
    got = cases.run_rms_norm(kernels, np, inputs, EPS)
    assert np.all(got["dweight"] == 0)


@pytest.mark.parametrize(
    "run, shape",
    [
        (cases.run_layer_norm, (3, 1500)),
        (cases.run_layer_norm, (2, 5000)),
        (cases.run_rms_norm, (3, 1500)),
    ],
    ids=["ln-3x1500", "ln-2x5000", "rms-3x1500"],
)
def test_no_barrier_races(runtime, kernels, shape, run):
    """With warps leaving every __syncthreads out of step (emulator jitter, up to 3 ms: longer
    than a warp takes to reach the next barrier among ~1000 OS threads), the results stay
    bit-identical. A missing barrier lets a fast warp overwrite shared memory that a slow one
    still reads: with block_sum's second barrier removed this test failed 4 runs out of 4."""
    inputs = cases.make_inputs(np.random.default_rng([*shape, 7]), *shape, np.float32)
    plain = run(kernels, np, inputs, EPS)
    try:
        for seed in (1, 2):
            for module in runtime.modules.values():
                module.set_jitter(3000, seed)
            jittered = run(kernels, np, inputs, EPS)
            for name, value in plain.items():
                assert value.tobytes() == jittered[name].tobytes(), (name, seed)
    finally:
        for module in runtime.modules.values():
            module.set_jitter(0)
