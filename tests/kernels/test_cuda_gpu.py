"""The CUDA kernels on a real GPU through CuPy: launch.py's four functions, and the public ops
with backend="cuda", against normref's float64 reference. The same cases as the emulator tests
(test_cuda_emulated.py), plus shapes too large to emulate. Skipped without CuPy or a device."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulator import cases

import normref
from normref.kernels.cuda import launch


def _cupy_with_device():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed: the CUDA kernels cannot run", allow_module_level=True)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        pytest.skip(f"no usable CUDA device: {error}", allow_module_level=True)
    if count == 0:
        pytest.skip("no CUDA device", allow_module_level=True)
    return cupy


cp = _cupy_with_device()

EPS = 1e-5
SHAPES = cases.SHAPES + ((4096, 768), (333, 4097), (64, 65536))


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernels(shape, dtype):
    rows, n = shape
    rng = np.random.default_rng([rows, n])
    inputs = cases.make_inputs(rng, rows, n, dtype)
    got = cases.run_layer_norm(launch, cp, inputs, EPS)
    cases.assert_close(got, cases.reference_layer_norm(inputs, EPS), dtype, f"layer_norm {shape}")
    got = cases.run_rms_norm(launch, cp, inputs, EPS)
    cases.assert_close(got, cases.reference_rms_norm(inputs, EPS), dtype, f"rms_norm {shape}")


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
def test_special_rows_and_absent_parameters(dtype):
    rows, n = 6, 1500
    inputs = cases.make_inputs(np.random.default_rng(1), rows, n, dtype, weight=False)
    x = inputs["x"]
    x[0], x[1], x[2, 0], x[3, n // 2] = 3.25, 0, np.nan, np.nan
    got = cases.run_layer_norm(launch, cp, inputs, EPS)
    cases.assert_close(got, cases.reference_layer_norm(inputs, EPS), dtype, "layer_norm special")
    assert np.array_equal(got["y"][0], inputs["bias"].astype(dtype))
    got = cases.run_rms_norm(launch, cp, inputs, EPS)
    cases.assert_close(got, cases.reference_rms_norm(inputs, EPS), dtype, "rms_norm special")


def test_large_offset_float32():
    rng = np.random.default_rng(2)
    inputs = cases.make_inputs(rng, 64, 4096, np.float32, offset=1e4, scale=1e-3)
    got = cases.run_layer_norm(launch, cp, inputs, 1e-10)
    cases.assert_close(got, cases.reference_layer_norm(inputs, 1e-10), np.float32, "large offset")


def test_deterministic():
    inputs = cases.make_inputs(np.random.default_rng(3), 3000, 1000, np.float32)
    first = cases.run_layer_norm(launch, cp, inputs, EPS)
    second = cases.run_layer_norm(launch, cp, inputs, EPS)
    for name, value in first.items():
        assert value.tobytes() == second[name].tobytes(), name


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
def test_public_ops_on_cuda(dtype):
    """normref.layer_norm / rms_norm with backend="cuda" on CuPy arrays (the op wrappers'
    reshaping and casting included), non-contiguous input too."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 7, 96)).astype(dtype)
    weight, bias = rng.standard_normal(96).astype(dtype), rng.standard_normal(96).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    tol = cases.TOLERANCE[np.dtype(dtype).type]
    for xs in (x, np.swapaxes(x, 0, 1)):
        dys = dy if xs is x else np.swapaxes(dy, 0, 1)
        args = (cp.asarray(xs), cp.asarray(weight), cp.asarray(bias))
        y, saved = normref.layer_norm_forward(*args, backend="cuda")
        grads = normref.layer_norm_backward(cp.asarray(dys), saved, backend="cuda")
        f64 = [a.astype(np.float64) for a in (xs, weight, bias, dys)]
        y_ref, saved_ref = normref.layer_norm_forward(*f64[:3], backend="reference")
        grads_ref = normref.layer_norm_backward(f64[3], saved_ref, backend="reference")
        for got, want in zip((y, *grads), (y_ref, *grads_ref)):
            got = cp.asnumpy(got).astype(np.float64)
            assert np.max(np.abs(got - want)) <= 4 * tol * max(np.max(np.abs(want)), 1.0)
        y = normref.rms_norm(cp.asarray(xs), cp.asarray(weight), eps=EPS, backend="cuda")
        y_ref = normref.rms_norm(*f64[:2], eps=EPS, backend="reference")
        got = cp.asnumpy(y).astype(np.float64)
        assert np.max(np.abs(got - y_ref)) <= 4 * tol * np.max(np.abs(y_ref))
