"""Launchers for the weight normalization and weight standardization CUDA kernels (weight_norm.cu,
weight_standardization.cu, with reduce.cuh).

The op wrappers (normref/reparam/weight_norm.py, weight_standardization.py) validate, lay the
weight out as a C-contiguous (rows, n) CuPy array (one row per output channel, n its fan-in),
allocate the outputs and call the four functions at the bottom, the same contract as the Numba
kernels (normref/kernels/numba/reparam.py):

    weight_norm_forward(v, g, w, norm)
    weight_norm_backward(dw, v, g, norm, dv, dg)
    weight_standardization_forward(weight, eps, w, mean, std)
    weight_standardization_backward(dw, weight, mean, std, eps, dweight)

(rows, n) arrays in the storage dtype, (rows,) arrays in the accumulation dtype (float32 for
float16). Everything is launch.py's machinery, imported rather than copied: the source text with
headers inlined and ``#line`` directives, the row geometry (one block per row, the row in
registers up to 8 values a thread, 4 for float64, a long-row kernel beyond), the input checks,
explicit NumPy scalar types, the `Runtime` interface that lets the CPU emulator run this module's
own launch sequence (`bind`), and the CuPy RawModule cache. Every output of a row depends on that
row alone, so there is no cross-row sum: one launch per call, deterministic by construction.

One exception: weight_norm with one row longer than WHOLE_MIN_N (dim=None, one norm over the
whole tensor) would run as one block on one SM. It runs as three launches instead (weight_norm.cu,
"one long row, many blocks"): per-chunk partial sums of WHOLE_CHUNK values, one block adding them
in chunk order, then an elementwise pass over the row; the chunking depends on n alone, so this
too gives the same bits run after run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from normref.kernels.cuda import launch as _launch
from normref.kernels.cuda.launch import COMPILE_OPTIONS, KERNEL_DIR, LaunchConfig, Runtime

__all__ = [
    "COMPILE_OPTIONS",
    "KERNEL_DIR",
    "SOURCES",
    "bind",
    "kernel_names",
    "launch_config",
    "module_source",
    "weight_norm_backward",
    "weight_norm_forward",
    "weight_standardization_backward",
    "weight_standardization_forward",
    "whole_config",
    "whole_row",
]

SOURCES = {"weight_norm": "weight_norm.cu", "weight_standardization": "weight_standardization.cu"}
# kernel -> the source that defines it
ROW_KERNELS = {
    "weight_norm_fwd": "weight_norm",
    "weight_norm_bwd": "weight_norm",
    "weight_std_fwd": "weight_standardization",
    "weight_std_bwd": "weight_standardization",
}
# weight_norm's kernels for one long row (`whole_row`); their configs come from `whole_config`
WHOLE_KERNELS = (
    "weight_norm_partial",
    "weight_norm_fwd_combine",
    "weight_norm_bwd_combine",
    "weight_norm_fwd_apply",
    "weight_norm_bwd_apply",
)
WHOLE_THREADS = 256  # kWholeThreads in weight_norm.cu: the partial and apply blocks
WHOLE_CHUNK = 4096  # values per block of the partial and apply kernels (16 a thread)
# A single row longer than the register-cached kernels hold (8 values x 1024 threads) goes to the
# many-block kernels; a shorter one is quicker as one launch of one block.
WHOLE_MIN_N = 8 * _launch.MAX_THREADS


def values_per_thread(dtype: Any) -> tuple[int, ...]:
    """The register-cached instantiations for `dtype`. float64 stops at 4: weight_std_bwd<double,
    double, 8> keeps two arrays of 8 doubles (32 registers) live across a block sum and the row's
    divisions, past the 64 registers a thread that __launch_bounds__(1024, 1) allows, and spilled
    on sm_80 and sm_90. Longer float64 rows take the long-row kernels, whose second pass reads the
    row again (from cache, mostly)."""
    _launch._storage(dtype)  # the dtype check and its message
    if np.dtype(dtype) == np.float64:
        return tuple(v for v in _launch.VALUES_PER_THREAD if v <= 4)
    return _launch.VALUES_PER_THREAD


def launch_config(kernel: str, rows: int, n: int, dtype: Any) -> LaunchConfig:
    """Kernel name, grid and block for one launch; a pure function of its arguments (no CuPy).

    One block per row, sized by launch.py's row geometry: the register-cached instantiation with
    the fewest values per thread that covers n, or the long-row kernel past 8 * 1024 values (past
    4 * 1024 for float64: `values_per_thread`).
    """
    if kernel not in ROW_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(ROW_KERNELS)}")
    threads, vpt = _launch._row_geometry(n)
    if vpt not in values_per_thread(dtype):
        return LaunchConfig(_launch._name(kernel + "_long", dtype), (rows, 1, 1), (threads, 1, 1))
    name = _launch._name(kernel, dtype, vpt)
    return LaunchConfig(name, (rows, 1, 1), (threads, 1, 1))


def whole_row(rows: int, n: int) -> bool:
    """Whether weight_norm runs on the many-block kernels: one row (dim=None, or a 1-row v) longer
    than WHOLE_MIN_N."""
    return rows == 1 and n > WHOLE_MIN_N


def whole_config(kernel: str, n: int, dtype: Any) -> LaunchConfig:
    """Kernel name, grid and block of one launch of the one-long-row weight_norm kernels; a pure
    function of n and dtype, so their sums have one fixed order. `chunks` is the number of
    partial sums, which the partial kernel writes and the combine kernels read."""
    if kernel not in WHOLE_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(WHOLE_KERNELS)}")
    chunks = -(-n // WHOLE_CHUNK)
    name = _launch._name(kernel, dtype)
    if kernel.endswith("_combine"):  # one block, a power of two of 32 to 1024 threads
        threads = min(_launch.MAX_THREADS, max(_launch.WARP, 1 << (chunks - 1).bit_length()))
        return LaunchConfig(name, (1, 1, 1), (threads, 1, 1), chunks)
    return LaunchConfig(name, (chunks, 1, 1), (WHOLE_THREADS, 1, 1), chunks)


def kernel_names(source: str, dtype: Any) -> tuple[str, ...]:
    """Every name expression `launch_config` can return for `source` and `dtype`: what the module
    of that dtype is compiled with."""
    if source not in SOURCES:
        raise ValueError(f"unknown kernel source {source!r}; expected one of {', '.join(SOURCES)}")
    names = []
    for kernel in (k for k, s in ROW_KERNELS.items() if s == source):
        names += [_launch._name(kernel, dtype, vpt) for vpt in values_per_thread(dtype)]
        names.append(_launch._name(kernel + "_long", dtype))
    if source == "weight_norm":
        names += [_launch._name(kernel, dtype) for kernel in WHOLE_KERNELS]
    return tuple(names)


def module_source(source: str, directory: Path = KERNEL_DIR) -> str:
    """The text handed to the compiler for `source`: the .cu file with its local includes inlined
    and ``#line`` directives (launch.module_source for these files)."""
    return _launch._expand(Path(directory) / SOURCES[source])


# ---- the launches of each op, on any runtime ----------------------------------------------------


def _required(**arrays: Any) -> None:
    """launch._checked reads None as "absent"; these kernels read every per-row array, and a null
    pointer on a GPU would poison the CUDA context rather than raise."""
    for name, a in arrays.items():
        if a is None:
            raise ValueError(f"CUDA reparameterization kernels: {name} is required, got None")


def _weight_norm_forward(rt: Runtime, v, g, w, norm) -> None:
    _required(g=g, norm=norm)
    rows, n, acc = _launch._checked(v, (w,), (g, norm))
    if rows == 0:
        return
    if whole_row(rows, n):
        partial = _whole_partial(rt, v, None, n, acc)
        combine = whole_config("weight_norm_fwd_combine", n, v.dtype)
        rt.launch("weight_norm", v.dtype, combine, (partial, np.int32(combine.chunks), norm))
        config = whole_config("weight_norm_fwd_apply", n, v.dtype)
        rt.launch("weight_norm", v.dtype, config, (v, g, norm, w, np.int32(n)))
        return
    config = launch_config("weight_norm_fwd", rows, n, v.dtype)
    rt.launch("weight_norm", v.dtype, config, (v, g, w, norm, np.int32(n)))


def _weight_norm_backward(rt: Runtime, dw, v, g, norm, dv, dg) -> None:
    _required(g=g, norm=norm, dg=dg)
    rows, n, acc = _launch._checked(v, (dw, dv), (g, norm, dg))
    if rows == 0:
        return
    if whole_row(rows, n):
        partial = _whole_partial(rt, dw, v, n, acc)
        combine = whole_config("weight_norm_bwd_combine", n, v.dtype)
        args = (partial, np.int32(combine.chunks), norm, dg)
        rt.launch("weight_norm", v.dtype, combine, args)
        config = whole_config("weight_norm_bwd_apply", n, v.dtype)
        rt.launch("weight_norm", v.dtype, config, (dw, v, g, norm, dg, dv, np.int32(n)))
        return
    config = launch_config("weight_norm_bwd", rows, n, v.dtype)
    rt.launch("weight_norm", v.dtype, config, (dw, v, g, norm, dv, dg, np.int32(n)))


def _whole_partial(rt: Runtime, a, b, n: int, acc) -> Any:
    """Per-chunk partial sums of a * b over one long row (b None: a^2), in a new (chunks,)
    accumulation-dtype array."""
    config = whole_config("weight_norm_partial", n, a.dtype)
    partial = rt.empty((config.chunks,), acc)
    args = (a, b, partial, np.int32(n), np.int32(WHOLE_CHUNK))
    rt.launch("weight_norm", a.dtype, config, args)
    return partial


def _weight_standardization_forward(rt: Runtime, weight, eps, w, mean, std) -> None:
    _required(mean=mean, std=std)
    rows, n, acc = _launch._checked(weight, (w,), (mean, std))
    if rows == 0:
        return
    config = launch_config("weight_std_fwd", rows, n, weight.dtype)
    args = (weight, acc(eps), w, mean, std, np.int32(n))
    rt.launch("weight_standardization", weight.dtype, config, args)


def _weight_standardization_backward(rt: Runtime, dw, weight, mean, std, eps, dweight) -> None:
    _required(mean=mean, std=std)
    rows, n, acc = _launch._checked(weight, (dw, dweight), (mean, std))
    if rows == 0:
        return
    config = launch_config("weight_std_bwd", rows, n, weight.dtype)
    args = (dw, weight, mean, std, acc(eps), dweight, np.int32(n))
    rt.launch("weight_standardization", weight.dtype, config, args)


def bind(runtime: Runtime) -> SimpleNamespace:
    """The four kernel-contract functions running on `runtime` (the emulator tests use this)."""

    def weight_norm_forward(v, g, w, norm):
        _weight_norm_forward(runtime, v, g, w, norm)

    def weight_norm_backward(dw, v, g, norm, dv, dg):
        _weight_norm_backward(runtime, dw, v, g, norm, dv, dg)

    def weight_standardization_forward(weight, eps, w, mean, std):
        _weight_standardization_forward(runtime, weight, eps, w, mean, std)

    def weight_standardization_backward(dw, weight, mean, std, eps, dweight):
        _weight_standardization_backward(runtime, dw, weight, mean, std, eps, dweight)

    return SimpleNamespace(
        weight_norm_forward=weight_norm_forward,
        weight_norm_backward=weight_norm_backward,
        weight_standardization_forward=weight_standardization_forward,
        weight_standardization_backward=weight_standardization_backward,
    )


# ---- CuPy ---------------------------------------------------------------------------------------


@functools.cache
def _runtime() -> _launch._CupyRuntime:
    """launch.py's CuPy runtime compiling this module's sources, made on the first launch."""
    return _launch._CupyRuntime(module_source, kernel_names)


def weight_norm_forward(v, g, w, norm) -> None:
    """w = v * (g / norm), norm = sqrt(sum(v^2)) for each row of v (rows, n); g, norm: (rows,)
    in the accumulation dtype."""
    _weight_norm_forward(_runtime(), v, g, w, norm)


def weight_norm_backward(dw, v, g, norm, dv, dg) -> None:
    """dv (rows, n) and dg (rows,) of weight normalization from the upstream gradient dw."""
    _weight_norm_backward(_runtime(), dw, v, g, norm, dv, dg)


def weight_standardization_forward(weight, eps, w, mean, std) -> None:
    """w = (weight - mean) / (std + eps) for each row of weight (rows, n >= 2), std unbiased;
    mean and std (rows,) in the accumulation dtype."""
    _weight_standardization_forward(_runtime(), weight, eps, w, mean, std)


def weight_standardization_backward(dw, weight, mean, std, eps, dweight) -> None:
    """dweight (rows, n) of weight standardization from the upstream gradient dw."""
    _weight_standardization_backward(_runtime(), dw, weight, mean, std, eps, dweight)
