"""The CUDA emulator itself: float16 rounding, thread coordinates, shuffles, barriers, block_sum,
argument checking, and that a divergent __syncthreads is reported instead of hanging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from . import emulator

pytestmark = pytest.mark.skipif(
    emulator.compiler() is None, reason=f"no C++ compiler ({emulator.CXX}) to build the emulator"
)

SELFTEST = emulator.HERE / "selftest.cu"
REDUCE = Path(__file__).resolve().parents[2] / "normref" / "kernels" / "cuda" / "reduce.cuh"
NAMES = (
    "coordinates",
    "shuffles",
    "reverse_blocks",
    "block_sums<float>",
    "block_sums<double>",
    "divergent_sync",
)
FULL = 0xFFFFFFFF


@pytest.fixture(scope="module")
def module():
    return emulator.build(SELFTEST, NAMES, depends=[REDUCE])


def _ptr(a):
    import ctypes

    return a.ctypes.data_as(ctypes.c_void_p)


def test_half_to_float_is_exact_for_every_half(module):
    bits = np.arange(2**16, dtype=np.uint16)
    got = np.empty(bits.size, np.float32)
    module.library.emu_half_to_float(_ptr(bits), _ptr(got), bits.size)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_float_to_half_rounds_to_nearest_even(module):
    rng = np.random.default_rng(0)
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    halves = halves[np.isfinite(halves)]
    below, above = np.sort(halves)[:-1], np.sort(halves)[1:]
    # overflow to inf and its tie (65520), the subnormal range and its ties, zero's sign
    special = [0.0, -0.0, 65504, 65519.996, 65520, 65536, 1e9, np.inf, np.nan, 1e-40]
    special = np.array(
        special + [2**-24, 2**-25, 1.5 * 2**-25, 2**-26, 2**-14 - 2**-25], np.float32
    )
    values = np.concatenate(
        [
            rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            (below + above) / 2,  # exact ties between neighbouring halves: ties go to even
            np.nextafter((below + above) / 2, np.float32(np.inf)),
            np.nextafter((below + above) / 2, np.float32(-np.inf)),
            special,
            -special,
        ]
    ).astype(np.float32)
    got = np.empty(values.size, np.uint16)
    module.library.emu_float_to_half(_ptr(values), _ptr(got), values.size)
    with np.errstate(over="ignore"):
        want = values.astype(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got.view(np.float16)), nan)
    bad = np.flatnonzero(got[~nan] != want[~nan].view(np.uint16))
    assert bad.size == 0, f"{values[~nan][bad[:5]]} -> {got[~nan][bad[:5]]}"


def test_coordinates(module):
    grid, block = (3, 2, 2), (32, 2, 3)
    threads, blocks = int(np.prod(block)), int(np.prod(grid))
    out = np.full((blocks, threads, 6), -1, np.int32)
    module.get_function("coordinates")(grid, block, (out,))
    tz, ty, tx = np.meshgrid(*(np.arange(b) for b in block[::-1]), indexing="ij")
    bz, by, bx = np.meshgrid(*(np.arange(g) for g in grid[::-1]), indexing="ij")
    for axis, want in enumerate([tx, ty, tz]):
        assert np.array_equal(out[:, :, axis], np.broadcast_to(want.ravel(), (blocks, threads)))
    for axis, want in enumerate([bx, by, bz]):
        assert np.array_equal(out[:, :, 3 + axis], np.repeat(want.ravel()[:, None], threads, 1))


@pytest.mark.parametrize("lane_mask, delta", [(1, 1), (16, 5), (31, 31)])
def test_shuffles(module, lane_mask, delta):
    size = 3 * 64  # three blocks of two warps
    values = np.random.default_rng(lane_mask).standard_normal(size)
    out = np.zeros(4 * size)
    args = (values, out, np.int32(lane_mask), np.int32(delta))
    module.get_function("shuffles")((3,), (64,), args)
    lane = np.arange(size) % 32
    base = np.arange(size) - lane
    down = np.where(lane + delta < 32, lane + delta, lane)
    up = np.where(lane - delta >= 0, lane - delta, lane)
    for row, source in enumerate([lane ^ lane_mask, down, up, (lane * 7) % 32]):
        assert np.array_equal(out[row * size : (row + 1) * size], values[base + source]), row


def test_syncthreads_orders_shared_memory(module):
    values = np.arange(4 * 256, dtype=np.float32)
    out = np.zeros_like(values)
    module.get_function("reverse_blocks")((4,), (256,), (values, out))
    assert np.array_equal(out, values.reshape(4, 256)[:, ::-1].ravel())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [32, 96, 1024])
def test_block_sum(module, dtype, threads):
    """Integers sum exactly, so every thread must hold exactly its block's totals."""
    values = np.random.default_rng(threads).integers(-1000, 1000, 2 * threads).astype(dtype)
    out = np.zeros(4 * threads, dtype)
    name = {np.float32: "block_sums<float>", np.float64: "block_sums<double>"}[dtype]
    module.get_function(name)((2,), (threads,), (values, out))
    totals = values.reshape(2, threads).sum(axis=1)
    pairs = out.reshape(2, threads, 2)
    assert np.array_equal(pairs[..., 0], np.repeat(totals[:, None], threads, 1))
    assert np.array_equal(pairs[..., 1], np.repeat(2 * totals[:, None], threads, 1))


def test_arguments_are_checked(module):
    kernel = module.get_function("shuffles")
    values, out = np.zeros(32), np.zeros(128)
    with pytest.raises(TypeError, match="explicit NumPy type"):
        kernel((1,), (32,), (values, out, 1, np.int32(1)))  # a bare Python int
    with pytest.raises(RuntimeError, match="argument 2"):
        kernel((1,), (32,), (values, out, np.int64(1), np.int32(1)))  # int64 for an int
    with pytest.raises(RuntimeError, match="argument 0"):
        kernel((1,), (32,), (values.astype(np.float32), out, np.int32(1), np.int32(1)))
    with pytest.raises(RuntimeError, match="takes 4 arguments"):
        kernel((1,), (32,), (values, out))
    with pytest.raises(RuntimeError, match="invalid launch"):
        kernel((1,), (2048,), (values, out, np.int32(1), np.int32(1)))


def test_divergent_syncthreads_is_reported(module):
    """A real GPU may hang or misbehave; the emulator must stop with a message, not hang."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(emulator.HERE.parent)!r})
        from cuda_emulator import emulator
        module = emulator.build(emulator.HERE / "selftest.cu", {NAMES!r}, depends=[{str(REDUCE)!r}])
        module.get_function("divergent_sync")((1,), (64,), (np.zeros(64, np.int32),))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "divergent __syncthreads" in done.stderr, done.stderr
