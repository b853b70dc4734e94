"""Launchers for the BatchNorm and GroupNorm CUDA kernels (batch_norm.cu, group_norm.cu).

The op wrappers (normref/norms/batch_norm.py, group_norm.py) view x as a C-contiguous (N, C, S)
CuPy array, allocate the outputs and call the five functions of the channel-norm kernel contract,
the same as the Numba module's (normref/kernels/numba/channel_norms.py, whose docstring states it):
`batch_norm_forward`, `batch_norm_apply`, `batch_norm_backward`, `group_norm_forward`,
`group_norm_backward`. Outputs and per-channel vectors are in the accumulation dtype (float32 for
float16 x); weight, bias, dweight, dbias may be None.

Built like launch.py (LayerNorm, RMSNorm), whose docstring explains the choices; this module
reuses its LaunchConfig, dtype table, source inlining and CuPy runtime, and has its own sources
and geometry:

- The launch geometry is one pure function, `launch_config`, which the CPU emulator of the tests
  calls too, and each op's sequence of launches is written once against the ``launch`` + ``empty``
  runtime interface: `bind(runtime)` runs this very code on the emulator.
- BatchNorm reduces over N * S values per channel. They are cut into *units* (`units`: a function
  of the shape only) of up to UNIT values, one block each: per-unit sums, then one block per
  channel combining its units in a fixed order (Chan et al.'s formula for the sum of squares), then
  an elementwise kernel. No float atomics: same input, same bits.
- GroupNorm normalizes each (sample, group) row of C/G * S contiguous values with one block, like
  layer_norm.cu's long-row kernels; its parameter gradients are summed per (sample, channel) and
  then over the samples by reduce.cuh's `param_grad_finish`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from normref.kernels.cuda import launch as _launch
from normref.kernels.cuda.launch import KERNEL_DIR, LaunchConfig

__all__ = [
    "SOURCES",
    "bind",
    "kernel_names",
    "launch_config",
    "module_source",
    "units",
    "batch_norm_forward",
    "batch_norm_apply",
    "batch_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]

SOURCES = {"batch_norm": "batch_norm.cu", "group_norm": "group_norm.cu"}

UNIT_THREADS = 256  # kUnitThreads in batch_norm.cu: blocks of the per-unit and elementwise kernels
TILE = 4096  # kTile in batch_norm.cu: values per block of the elementwise kernels
UNIT = 4096  # values a BatchNorm unit aims at (16 per thread)
FINISH_MAX_THREADS = 256  # per-channel combine of the units
ROW_VALUES_PER_THREAD = 8  # GroupNorm rows: about this many values per thread, 32 to 1024 threads
FINISH_THREADS = _launch.FINISH_THREADS  # param_grad_finish
_INT32_MAX = 2**31 - 1

_BATCH_NORM_TA = (
    "batch_norm_stats",
    "batch_norm_stats_finish",
    "batch_norm_apply",
    "batch_norm_bwd_partial",
    "batch_norm_bwd_dx",
)


def _acc_name(base: str, dtype: Any) -> str:
    """Name expression of a kernel templated on the accumulation type only."""
    return f"normref::{base}<{_launch._CTYPE[_launch._storage(dtype)[1]]}>"


def units(n: int, c: int, s: int) -> tuple[int, int, int]:
    """(rows, seg, count): a BatchNorm unit is `rows` consecutive samples by `seg` consecutive
    positions of one channel, and there are `count` of them. Long planes are cut into about equal
    segments of at most UNIT values; short ones are grouped over samples, up to UNIT values."""
    if s >= UNIT:
        segments = -(-s // UNIT)
        rows, seg = 1, -(-s // segments)
    else:
        rows, seg = min(n, max(1, UNIT // s)), s
    return rows, seg, -(-n // rows) * c * -(-s // seg)


def _pow2_threads(wanted: int, most: int) -> int:
    """The smallest power of two >= wanted, between a warp and `most`."""
    return min(most, max(_launch.WARP, 1 << max(0, wanted - 1).bit_length()))


def launch_config(kernel: str, n: int, c: int, s: int, dtype: Any, groups: int = 1) -> LaunchConfig:
    """Kernel name, grid and block for one launch on x of shape (N, C, S); a pure function of its
    arguments (no CuPy). `groups`: GroupNorm's G."""
    block = (UNIT_THREADS, 1, 1)
    if kernel in ("batch_norm_stats", "batch_norm_bwd_partial"):
        return LaunchConfig(_launch._name(kernel, dtype), (units(n, c, s)[2], 1, 1), block)
    if kernel in ("batch_norm_stats_finish", "batch_norm_bwd_finish"):
        per_channel = units(n, c, s)[2] // c
        threads = _pow2_threads(per_channel, FINISH_MAX_THREADS)
        name = (
            _launch._name(kernel, dtype) if kernel in _BATCH_NORM_TA else _acc_name(kernel, dtype)
        )
        return LaunchConfig(name, (c, 1, 1), (threads, 1, 1))
    if kernel in ("batch_norm_apply", "batch_norm_bwd_dx"):
        return LaunchConfig(_launch._name(kernel, dtype), (-(-n * c * s // TILE), 1, 1), block)
    if kernel in ("group_norm_fwd", "group_norm_bwd"):
        row = c // groups * s
        threads = _pow2_threads(-(-row // ROW_VALUES_PER_THREAD), _launch.MAX_THREADS)
        return LaunchConfig(_launch._name(kernel, dtype), (n * groups, 1, 1), (threads, 1, 1))
    if kernel == "param_grad_finish":  # (N, C) per-sample partial sums -> (C,)
        grid = (-(-c // FINISH_THREADS), 1, 1)
        return LaunchConfig(_acc_name(kernel, dtype), grid, (FINISH_THREADS, 1, 1))
    raise ValueError(f"unknown kernel {kernel!r}")


def kernel_names(source: str, dtype: Any) -> tuple[str, ...]:
    """Every name expression `launch_config` can return for `source` ("batch_norm" or
    "group_norm") and `dtype`: what the module of that dtype is compiled with."""
    if source == "batch_norm":
        names = [_launch._name(k, dtype) for k in _BATCH_NORM_TA]
        return (*names, _acc_name("batch_norm_bwd_finish", dtype))
    if source == "group_norm":
        names = [_launch._name(k, dtype) for k in ("group_norm_fwd", "group_norm_bwd")]
        return (*names, _acc_name("param_grad_finish", dtype))
    raise ValueError(f"unknown kernel source {source!r}; expected one of {', '.join(SOURCES)}")


def module_source(source: str, directory: Path = KERNEL_DIR) -> str:
    """The text handed to the compiler for `source`, local includes inlined (launch.py's
    module_source for these files)."""
    return _launch._expand(Path(directory) / SOURCES[source])


# ---- the sequence of launches of each op, on any runtime --------------------------------------


def _checked(x: Any, like_x: tuple = (), per_channel: tuple = (), stats: tuple = (), groups=1):
    """(N, C, S, accumulation dtype) of x, after checking every array a kernel will index with x's
    geometry: `like_x` (N, C, S) in x's dtype, `per_channel` (C,) and `stats` (N, groups) in the
    accumulation dtype (None: absent), all C-contiguous; and that the sizes fit the kernels'
    32-bit index arithmetic. A mismatch would read or write out of bounds."""
    acc = _launch._storage(x.dtype)[1]
    if x.ndim != 3:
        raise ValueError(f"CUDA channel-norm kernels take (N, C, S) arrays, got shape {x.shape}")
    n, c, s = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"CUDA group_norm kernels: {groups} groups for {c} channels")
    sizes = (s + TILE, 3 * c, c // groups * s, n * groups)  # grids and 32-bit offsets
    if min(n, c, s) < 1 or max(*sizes, units(n, c, s)[2]) > _INT32_MAX:
        raise ValueError(
            f"CUDA channel-norm kernels take N, C, S >= 1 within 32-bit limits, got {x.shape}"
        )
    expected = [(a, (n, c, s), x.dtype) for a in (x, *like_x)]
    expected += [(a, (c,), acc) for a in per_channel]
    expected += [(a, (n, groups), acc) for a in stats]
    for a, shape, dtype in expected:
        if a is not None and (
            tuple(a.shape) != shape or a.dtype != dtype or not a.flags.c_contiguous
        ):
            raise ValueError(
                f"CUDA channel-norm kernels: expected a C-contiguous {shape} "
                f"{np.dtype(dtype).name} array, got shape {tuple(a.shape)}, {a.dtype}, "
                f"c_contiguous={a.flags.c_contiguous}"
            )
    return n, c, s, acc


def _groups(mean: Any) -> int:
    return mean.shape[1] if mean.ndim == 2 else 0  # 0: refused by _checked


def _unit_args(n, c, s):
    rows, seg, _ = units(n, c, s)
    return tuple(np.int32(v) for v in (n, c, s, rows, seg))


def _batch_norm_forward(rt, x, weight, bias, eps, y, mean, rstd, sumsq) -> None:
    n, c, s, acc = _checked(x, (y,), (weight, bias, mean, rstd, sumsq))
    count = units(n, c, s)[2]
    psum, pm2 = rt.empty((count,), acc), rt.empty((count,), acc)
    shift, centre = rt.empty((c,), acc), rt.empty((c,), acc)
    geometry = _unit_args(n, c, s)
    config = launch_config("batch_norm_stats", n, c, s, x.dtype)
    rt.launch("batch_norm", x.dtype, config, (x, psum, pm2, *geometry))
    config = launch_config("batch_norm_stats_finish", n, c, s, x.dtype)
    args = (x, psum, pm2, *geometry, acc(eps), mean, rstd, sumsq, shift, centre)
    rt.launch("batch_norm", x.dtype, config, args)
    _apply(rt, x, shift, centre, rstd, weight, bias, y)


def _apply(rt, x, shift, centre, rstd, weight, bias, y) -> None:
    n, c, s = x.shape
    config = launch_config("batch_norm_apply", n, c, s, x.dtype)
    args = (x, shift, centre, rstd, weight, bias, y, np.int32(c), np.int32(s), np.int64(n * c * s))
    rt.launch("batch_norm", x.dtype, config, args)


def _batch_norm_apply(rt, x, mean, rstd, weight, bias, y) -> None:
    _checked(x, (y,), (mean, rstd, weight, bias))
    _apply(rt, x, mean, None, rstd, weight, bias, y)  # the mean is the shift, no centre


def _batch_norm_backward(rt, dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias) -> None:
    n, c, s, acc = _checked(x, (dy, dx), (mean, rstd, weight, dweight, dbias))
    coefficient = None  # fixed statistics: dx = dy * weight * rstd needs no sums
    if batch_stats or dweight is not None or dbias is not None:
        count = units(n, c, s)[2]
        geometry = _unit_args(n, c, s)
        partial = rt.empty((3, count), acc)
        config = launch_config("batch_norm_bwd_partial", n, c, s, x.dtype)
        rt.launch("batch_norm", x.dtype, config, (dy, x, mean, partial, *geometry))
        coefficient = rt.empty((3, c), acc) if batch_stats else None
        config = launch_config("batch_norm_bwd_finish", n, c, s, x.dtype)
        args = (partial, rstd, weight, *geometry, np.int32(count), np.int32(bool(batch_stats)))
        rt.launch("batch_norm", x.dtype, config, args + (dweight, dbias, coefficient))
    config = launch_config("batch_norm_bwd_dx", n, c, s, x.dtype)
    args = (dy, x, mean, rstd, weight, coefficient, dx, np.int32(c), np.int32(s))
    rt.launch("batch_norm", x.dtype, config, args + (np.int64(n * c * s),))


def _group_norm_forward(rt, x, weight, bias, eps, y, mean, rstd) -> None:
    groups = _groups(mean)
    n, c, s, acc = _checked(x, (y,), (weight, bias), (mean, rstd), groups)
    config = launch_config("group_norm_fwd", n, c, s, x.dtype, groups)
    geometry = (np.int32(groups), np.int32(c // groups), np.int32(s))
    rt.launch("group_norm", x.dtype, config, (x, weight, bias, acc(eps), y, mean, rstd, *geometry))


def _group_norm_backward(rt, dy, x, mean, rstd, weight, dx, dweight, dbias) -> None:
    groups = _groups(mean)
    n, c, s, acc = _checked(x, (dy, dx), (weight, dweight, dbias), (mean, rstd), groups)
    # per (sample, channel) sums, added over the samples in order by param_grad_finish
    partial_w = None if dweight is None else rt.empty((n, c), acc)
    partial_b = None if dbias is None else rt.empty((n, c), acc)
    config = launch_config("group_norm_bwd", n, c, s, x.dtype, groups)
    geometry = (np.int32(groups), np.int32(c // groups), np.int32(s))
    args = (dy, x, mean, rstd, weight, dx, partial_w, partial_b, *geometry)
    rt.launch("group_norm", x.dtype, config, args)
    finish = launch_config("param_grad_finish", n, c, s, x.dtype)
    for partial, out in ((partial_w, dweight), (partial_b, dbias)):
        if out is not None:
            rt.launch("group_norm", x.dtype, finish, (partial, np.int32(n), np.int32(c), out))


def bind(runtime: Any) -> SimpleNamespace:
    """The five kernel-contract functions running on `runtime` (the emulator tests use this)."""

    def batch_norm_forward(x, weight, bias, eps, y, mean, rstd, sumsq):
        _batch_norm_forward(runtime, x, weight, bias, eps, y, mean, rstd, sumsq)

    def batch_norm_apply(x, mean, rstd, weight, bias, y):
        _batch_norm_apply(runtime, x, mean, rstd, weight, bias, y)

    def batch_norm_backward(dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias):
        _batch_norm_backward(runtime, dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias)

    def group_norm_forward(x, weight, bias, eps, y, mean, rstd):
        _group_norm_forward(runtime, x, weight, bias, eps, y, mean, rstd)

    def group_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
        _group_norm_backward(runtime, dy, x, mean, rstd, weight, dx, dweight, dbias)

    return SimpleNamespace(
        batch_norm_forward=batch_norm_forward,
        batch_norm_apply=batch_norm_apply,
        batch_norm_backward=batch_norm_backward,
        group_norm_forward=group_norm_forward,
        group_norm_backward=group_norm_backward,
    )


# ---- CuPy ---------------------------------------------------------------------------------------


@functools.cache
def _runtime() -> _launch._CupyRuntime:
    """launch.py's CuPy runtime compiling this module's sources, made on the first launch."""
    return _launch._CupyRuntime(module_source, kernel_names)


def batch_norm_forward(x, weight, bias, eps, y, mean, rstd, sumsq) -> None:
    """y, mean, rstd, sumsq <- BatchNorm of x (N, C, S) with its batch statistics."""
    _batch_norm_forward(_runtime(), x, weight, bias, eps, y, mean, rstd, sumsq)


def batch_norm_apply(x, mean, rstd, weight, bias, y) -> None:
    """y <- (x - mean) * rstd * weight + bias with given per-channel mean and rstd (C,)."""
    _batch_norm_apply(_runtime(), x, mean, rstd, weight, bias, y)


def batch_norm_backward(dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias) -> None:
    """dx, and dweight / dbias unless None <- BatchNorm's backward (batch or fixed statistics)."""
    _batch_norm_backward(_runtime(), dy, x, mean, rstd, weight, batch_stats, dx, dweight, dbias)


def group_norm_forward(x, weight, bias, eps, y, mean, rstd) -> None:
    """y, mean, rstd (N, G) <- GroupNorm of x (N, C, S) over G = mean.shape[1] groups."""
    _group_norm_forward(_runtime(), x, weight, bias, eps, y, mean, rstd)


def group_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias) -> None:
    """dx, and dweight / dbias unless None <- GroupNorm's backward."""
    _group_norm_backward(_runtime(), dy, x, mean, rstd, weight, dx, dweight, dbias)
