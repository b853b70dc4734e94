"""The exact float32 <-> 16-bit conversions of the Numba kernels (normref/kernels/numba/_half.py),
both ways they can be done, against NumPy (float16) and ml_dtypes (bfloat16): every 16-bit value
widened, and float32 values at and around every rounding tie narrowed."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from normref.kernels.numba import _half  # noqa: E402

HALVES = np.arange(2**16, dtype=np.uint16)  # every 16-bit pattern

F16_WAYS = {
    "bits": (_half._f16_to_f32_bits, _half._f32_to_f16_bits),
    "hardware": (_half._f16_to_f32_hw, _half._f32_to_f16_hw),
}


def _apply(convert, values, out_dtype):
    """[convert(v) for v in values], compiled: an intrinsic can only be called from Numba."""

    @numba.njit
    def loop(values, out):
        for i in range(values.shape[0]):
            out[i] = convert(values[i])

    out = np.empty(values.shape[0], out_dtype)
    loop(values, out)
    return out


def assert_same_bits(got, want, what):
    nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
    bits = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    bad = (got.view(bits) != want.view(bits)) & ~nan
    assert not bad.any(), f"{what}: {bad.sum()} values differ, first at {np.flatnonzero(bad)[:5]}"


def _midpoints(values32):
    """The float32 values halfway between consecutive finite entries of sorted `values32`, and one
    float32 ulp either side: where rounding to nearest even is decided."""
    v = np.unique(values32[np.isfinite(values32)]).astype(np.float64)
    mid = ((v[:-1] + v[1:]) / 2).astype(np.float32)  # exact: one more bit than 16-bit formats
    return np.concatenate([mid, np.nextafter(mid, -np.inf), np.nextafter(mid, np.inf)])


@pytest.mark.parametrize("way", F16_WAYS)
def test_float16_conversions_match_numpy(way):
    if way == "hardware" and not _half.HARDWARE_F16:
        pytest.skip("this CPU has no float16 conversion instructions (x86 F16C)")
    widen, narrow = F16_WAYS[way]
    halves = HALVES.view(np.float16)
    widened = _apply(widen, HALVES, np.float32)
    assert_same_bits(widened, halves.astype(np.float32), "float16 -> float32, every value")
    special = np.array([np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 1e-8, -(2.0**-25), 3e-8])
    samples = np.concatenate([halves.astype(np.float32), _midpoints(halves.astype(np.float32))])
    samples = np.concatenate([samples, special.astype(np.float32)])
    narrowed = _apply(narrow, samples, np.uint16).view(np.float16)
    with np.errstate(over="ignore"):  # the overflows to inf are among the cases
        want = samples.astype(np.float16)
    assert_same_bits(narrowed, want, "float32 -> float16, ties and edges")


def test_the_kernels_use_the_hardware_where_there_is_one():
    hardware = _half._has_hardware_f16()
    assert (_half.f16_to_f32 is _half._f16_to_f32_hw) == hardware
    assert (_half.f32_to_f16 is _half._f32_to_f16_hw) == hardware


def test_bfloat16_conversions_match_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    widened = _apply(_half.bf16_to_f32, HALVES, np.float32)
    assert_same_bits(widened, HALVES.view(bf16).astype(np.float32), "bfloat16 -> float32")
    values = HALVES.view(bf16).astype(np.float32)
    samples = np.concatenate([values, _midpoints(values), np.float32([3.4e38, -3.4028235e38])])
    narrowed = _apply(_half.f32_to_bf16, samples, np.uint16).view(bf16)
    with np.errstate(over="ignore", invalid="ignore"):  # the overflows to inf are among the cases
        want = samples.astype(bf16)
    assert_same_bits(narrowed, want, "float32 -> bfloat16, ties and edges")
