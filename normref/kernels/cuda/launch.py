"""Launchers for the LayerNorm and RMSNorm CUDA kernels (layer_norm.cu, rms_norm.cu, reduce.cuh).

The op wrappers (normref/norms/layer_norm.py, rms_norm.py) validate, reshape to C-contiguous
(rows, n) CuPy arrays, allocate the outputs and call the four functions of docs/contracts.md
("Kernel contract"): `layer_norm_forward`, `layer_norm_backward`, `rms_norm_forward`,
`rms_norm_backward` (which `entry` hands out as they are).

How this module is put together, and why:

- CuPy is imported on the first launch, never at import time (``import normref`` must not load it).
- Each .cu file is compiled once per (file, dtype, device) by ``cupy.RawModule`` with the template
  instantiations of that dtype as ``name_expressions``, and cached. Local ``#include "x.cuh"`` lines
  are inlined with ``#line`` directives (`module_source`): compiler errors then name the real file
  and line, and CuPy's on-disk cache, keyed by the source text, sees header edits too.
- Every scalar goes to a kernel with an explicit NumPy type (``np.int32`` for ``int``,
  ``np.float32``/``np.float64`` for ``Acc``): CuPy passes a bare Python int as 64 bits.
- The launch geometry comes from one pure-Python function, `launch_config`, which the CPU emulator
  of the tests (tests/cuda_emulator) calls too. The sequence of launches for each op is written
  once against a small runtime interface (``launch`` + ``empty``), so the emulator runs this very
  module's code with NumPy arrays: `bind(runtime)` returns the four functions on any runtime.
- Parameter gradients are two deterministic stages (reduce.cuh): per-(row chunk, column) partial
  sums, then one ordered sum over the chunks per column. No float atomics: same input, same bits.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple, Protocol

import numpy as np

__all__ = [
    "COMPILE_OPTIONS",
    "SOURCES",
    "LaunchConfig",
    "Runtime",
    "bind",
    "entry",
    "kernel_names",
    "launch_config",
    "layer_norm_backward",
    "layer_norm_forward",
    "module_source",
    "rms_norm_backward",
    "rms_norm_forward",
]

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = {"layer_norm": "layer_norm.cu", "rms_norm": "rms_norm.cu"}
COMPILE_OPTIONS = ("--std=c++17",)

# Storage dtype -> (C++ storage type, accumulation dtype). Keep in step with reduce.cuh.
_TYPES = {
    np.dtype(np.float32): ("float", np.float32),
    np.dtype(np.float16): ("__half", np.float32),
    np.dtype(np.float64): ("double", np.float64),
}
_CTYPE = {np.float32: "float", np.float64: "double"}

WARP = 32
MAX_THREADS = 1024  # kMaxThreads in reduce.cuh: the __launch_bounds__ of the row kernels
VALUES_PER_THREAD = (1, 2, 4, 8)  # the register-cached instantiations; longer rows loop
COL_TILE, ROW_LANES = 32, 8  # param_grad_partial's block (kColTile, kRowLanes in reduce.cuh)
FINISH_THREADS = 256
TARGET_BLOCKS = 1024  # param_grad_partial: about this many blocks, enough to fill a large GPU
MIN_ROWS_PER_CHUNK = 32  # ... but at least 4 rows per thread in each chunk
_INT32_MAX = 2**31 - 1


class LaunchConfig(NamedTuple):
    kernel: str  # the name expression, e.g. "normref::layer_norm_fwd<float, float, 4>"
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    chunks: int = 1  # param_grad_*: how many row chunks the partial sums cover
    rows_per_chunk: int = 0  # param_grad_partial: rows summed by one block


def _storage(dtype: Any) -> tuple[str, type]:
    try:
        return _TYPES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TypeError(
            f"CUDA norm kernels take float32, float16 or float64, got {dtype}"
        ) from None


def _name(base: str, dtype: Any, vpt: int | None = None) -> str:
    t, acc = _storage(dtype)
    params = [t, _CTYPE[acc]] + ([] if vpt is None else [str(vpt)])
    return f"normref::{base}<{', '.join(params)}>"


def _row_geometry(n: int) -> tuple[int, int | None]:
    """(threads, values per thread) of a one-block-per-row kernel; None: the long-row kernel.

    Aim at about 4 elements per thread, in a power-of-two block of 32 to 1024 threads, then take
    the smallest register-cached instantiation that covers the row.
    """
    threads = min(MAX_THREADS, max(WARP, 1 << max(0, math.ceil(n / 4) - 1).bit_length()))
    for vpt in VALUES_PER_THREAD:
        if vpt * threads >= n:
            return threads, vpt
    return threads, None


def launch_config(kernel: str, rows: int, n: int, dtype: Any) -> LaunchConfig:
    """Kernel name, grid and block for one launch; a pure function of its arguments (no CuPy).

    kernel: "layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd" (one block per
    row; the register-cached or the long-row instantiation by n), "param_grad_partial" or
    "param_grad_finish" (the two stages of the parameter-gradient column sums).
    """
    if kernel in ("layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd"):
        threads, vpt = _row_geometry(n)
        name = _name(kernel, dtype, vpt) if vpt is not None else _name(kernel + "_long", dtype)
        return LaunchConfig(name, (rows, 1, 1), (threads, 1, 1))
    col_blocks = -(-n // COL_TILE)
    chunks = max(1, min(-(-rows // MIN_ROWS_PER_CHUNK), -(-TARGET_BLOCKS // col_blocks)))
    rows_per_chunk = max(1, -(-rows // chunks))
    chunks = -(-rows // rows_per_chunk)  # no empty trailing chunk (and 0 chunks for 0 rows)
    if kernel == "param_grad_partial":
        block = (COL_TILE, ROW_LANES, 1)
        return LaunchConfig(
            _name(kernel, dtype), (col_blocks, chunks, 1), block, chunks, rows_per_chunk
        )
    if kernel == "param_grad_finish":
        acc = _storage(dtype)[1]
        grid = (-(-n // FINISH_THREADS), 1, 1)
        name = f"normref::param_grad_finish<{_CTYPE[acc]}>"
        return LaunchConfig(name, grid, (FINISH_THREADS, 1, 1), chunks, rows_per_chunk)
    raise ValueError(f"unknown kernel {kernel!r}")


def kernel_names(source: str, dtype: Any) -> tuple[str, ...]:
    """Every name expression `launch_config` can return for `source` ("layer_norm" or
    "rms_norm") and `dtype`: what the module of that dtype is compiled with."""
    if source not in SOURCES:
        raise ValueError(f"unknown kernel source {source!r}; expected one of {', '.join(SOURCES)}")
    names = []
    for kind in ("fwd", "bwd"):
        base = f"{source}_{kind}"
        names += [_name(base, dtype, vpt) for vpt in VALUES_PER_THREAD]
        names.append(_name(base + "_long", dtype))
    names.append(_name("param_grad_partial", dtype))
    names.append(f"normref::param_grad_finish<{_CTYPE[_storage(dtype)[1]]}>")
    return tuple(names)


_LOCAL_INCLUDE = re.compile(r'\s*#\s*include\s+"([^"]+)"\s*$')


def module_source(source: str, directory: Path = KERNEL_DIR) -> str:
    """The text handed to the compiler for `source`: the .cu file (in `directory`) with its local
    includes inlined, and ``#line`` directives so that diagnostics point at the real files."""
    return _expand(Path(directory) / SOURCES[source])


def _expand(path: Path) -> str:
    out = [f'#line 1 "{path.as_posix()}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match:
            out.append(_expand(path.parent / match[1]))
            out.append(f'#line {number + 1} "{path.as_posix()}"')
        else:  # `#pragma once` is meaningless once inlined, and a warning: blank it
            out.append("" if line.strip() == "#pragma once" else line)
    return "\n".join(out) + "\n"


# ---- the sequence of launches of each op, on any runtime --------------------------------------


class Runtime(Protocol):
    """Where kernels run: CuPy on a GPU here, the CPU emulator in the tests."""

    def launch(self, source: str, dtype: Any, config: LaunchConfig, args: tuple) -> None: ...

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any: ...


def _checked(x: Any, like_x: tuple = (), per_row: tuple = (), per_column: tuple = ()):
    """(rows, n, accumulation dtype) of x, after checking every array a kernel will index with
    x's geometry: `like_x` (rows, n) in x's dtype, `per_row` (rows,) and `per_column` (n,) in the
    accumulation dtype (None: absent), all C-contiguous. A mismatch would read out of bounds."""
    acc = _storage(x.dtype)[1]
    if x.ndim != 2:
        raise ValueError(f"CUDA norm kernels take (rows, n) arrays, got shape {x.shape}")
    rows, n = x.shape
    if n == 0 or n > _INT32_MAX or rows > _INT32_MAX:
        raise ValueError(f"CUDA norm kernels take 1 <= n, rows < 2**31, got shape {x.shape}")
    expected = [(a, (rows, n), x.dtype) for a in (x, *like_x)]
    expected += [(a, (rows,), acc) for a in per_row] + [(a, (n,), acc) for a in per_column]
    for a, shape, dtype in expected:
        if a is not None and (
            tuple(a.shape) != shape or a.dtype != dtype or not a.flags.c_contiguous
        ):
            raise ValueError(
                f"CUDA norm kernels: expected a C-contiguous {shape} {np.dtype(dtype).name} array, "
                f"got shape {tuple(a.shape)}, {a.dtype}, c_contiguous={a.flags.c_contiguous}"
            )
    return rows, n, acc


def _param_grads(rt, source, dy, x, mean, rstd, centre, dweight, dbias) -> None:
    """dweight = sum over rows of dy * x_hat, dbias = sum over rows of dy (either may be None)."""
    (rows, n), acc = x.shape, _storage(x.dtype)[1]  # checked by the caller
    if dweight is None and dbias is None:
        return
    if rows == 0:
        for out in (dweight, dbias):
            if out is not None:
                out[...] = 0
        return
    part = launch_config("param_grad_partial", rows, n, x.dtype)
    partial_w = None if dweight is None else rt.empty((part.chunks, n), acc)
    partial_b = None if dbias is None else rt.empty((part.chunks, n), acc)
    args = (dy, x, mean, rstd, centre, partial_w, partial_b)
    i32 = np.int32
    rt.launch(source, x.dtype, part, args + (i32(rows), i32(n), i32(part.rows_per_chunk)))
    finish = launch_config("param_grad_finish", rows, n, x.dtype)
    for partial, out in ((partial_w, dweight), (partial_b, dbias)):
        if out is not None:
            rt.launch(source, x.dtype, finish, (partial, i32(finish.chunks), i32(n), out))


def _layer_norm_forward(rt, x, weight, bias, eps, y, mean, rstd) -> None:
    rows, n, acc = _checked(x, (y,), (mean, rstd), (weight, bias))
    if rows == 0:
        return
    config = launch_config("layer_norm_fwd", rows, n, x.dtype)
    args = (x, weight, bias, acc(eps), y, mean, rstd, np.int32(n))
    rt.launch("layer_norm", x.dtype, config, args)


def _layer_norm_backward(rt, dy, x, mean, rstd, weight, dx, dweight, dbias) -> None:
    rows, n, acc = _checked(x, (dy, dx), (mean, rstd), (weight, dweight, dbias))
    centre = None  # mean(x_hat') per row: the dweight column sums subtract it (re-centred x_hat)
    if rows > 0:
        centre = None if dweight is None else rt.empty((rows,), acc)
        config = launch_config("layer_norm_bwd", rows, n, x.dtype)
        args = (dy, x, mean, rstd, weight, dx, centre, np.int32(n))
        rt.launch("layer_norm", x.dtype, config, args)
    _param_grads(rt, "layer_norm", dy, x, mean, rstd, centre, dweight, dbias)


def _rms_norm_forward(rt, x, weight, eps, y, rstd) -> None:
    rows, n, acc = _checked(x, (y,), (rstd,), (weight,))
    if rows == 0:
        return
    config = launch_config("rms_norm_fwd", rows, n, x.dtype)
    rt.launch("rms_norm", x.dtype, config, (x, weight, acc(eps), y, rstd, np.int32(n)))


def _rms_norm_backward(rt, dy, x, rstd, weight, dx, dweight) -> None:
    rows, n, _ = _checked(x, (dy, dx), (rstd,), (weight, dweight))
    if rows > 0:
        config = launch_config("rms_norm_bwd", rows, n, x.dtype)
        rt.launch("rms_norm", x.dtype, config, (dy, x, rstd, weight, dx, np.int32(n)))
    _param_grads(rt, "rms_norm", dy, x, None, rstd, None, dweight, None)


def bind(runtime: Runtime) -> SimpleNamespace:
    """The four kernel-contract functions running on `runtime` (the emulator tests use this)."""

    def layer_norm_forward(x, weight, bias, eps, y, mean, rstd):
        _layer_norm_forward(runtime, x, weight, bias, eps, y, mean, rstd)

    def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
        _layer_norm_backward(runtime, dy, x, mean, rstd, weight, dx, dweight, dbias)

    def rms_norm_forward(x, weight, eps, y, rstd):
        _rms_norm_forward(runtime, x, weight, eps, y, rstd)

    def rms_norm_backward(dy, x, rstd, weight, dx, dweight):
        _rms_norm_backward(runtime, dy, x, rstd, weight, dx, dweight)

    return SimpleNamespace(
        layer_norm_forward=layer_norm_forward,
        layer_norm_backward=layer_norm_backward,
        rms_norm_forward=rms_norm_forward,
        rms_norm_backward=rms_norm_backward,
    )


# ---- CuPy ---------------------------------------------------------------------------------------


class _CupyRuntime:
    """Compiles each (source, dtype, device) module once and launches on the current stream.

    Every launcher module (channel_launch, reparam_launch, optim_launch) uses this class; they
    differ only in what is compiled: `module_source(source)`, the text of a source, and
    `kernel_names(source, dtype)`, its instantiations for a dtype (by default this module's own),
    compiled with `options`.
    """

    def __init__(
        self,
        module_source: Callable[[str], str] = module_source,
        kernel_names: Callable[[str, Any], tuple[str, ...]] = kernel_names,
        options: tuple[str, ...] = COMPILE_OPTIONS,
    ) -> None:
        import cupy  # the one place CuPy is imported

        self._cupy = cupy
        self._module_source, self._kernel_names = module_source, kernel_names
        self._options = options
        self._functions: dict[tuple[str, str, int, str], Any] = {}
        self._modules: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._cupy.empty(shape, dtype=dtype)

    def _function(self, source: str, dtype: Any, name: str) -> Any:
        key = (source, np.dtype(dtype).name, self._cupy.cuda.runtime.getDevice())
        function = self._functions.get(key + (name,))
        if function is None:
            with self._lock:
                module = self._modules.get(key)
                if module is None:
                    module = self._modules[key] = self._cupy.RawModule(
                        code=self._module_source(source),
                        options=self._options,
                        name_expressions=self._kernel_names(source, dtype),
                    )
                function = self._functions[key + (name,)] = module.get_function(name)
        return function

    def launch(self, source: str, dtype: Any, config: LaunchConfig, args: tuple) -> None:
        with args[0].device:  # the arrays' device, whatever device is current
            self._function(source, dtype, config.kernel)(config.grid, config.block, args)


@functools.cache
def _runtime() -> _CupyRuntime:
    """Made on the first launch, so that importing this module does not import CuPy."""
    return _CupyRuntime()


def layer_norm_forward(x, weight, bias, eps, y, mean, rstd) -> None:
    """Shifted two-pass LayerNorm of each row of x (rows, n) into y, mean and rstd (rows,).

    weight, bias: (n,) in the accumulation dtype, or None; y: x's dtype; mean, rstd: accumulation
    dtype (float32 for float16 x).
    """
    _layer_norm_forward(_runtime(), x, weight, bias, eps, y, mean, rstd)


def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias) -> None:
    """dx (rows, n) of LayerNorm; dweight, dbias (n,) when not None (accumulation dtype)."""
    _layer_norm_backward(_runtime(), dy, x, mean, rstd, weight, dx, dweight, dbias)


def rms_norm_forward(x, weight, eps, y, rstd) -> None:
    """RMSNorm of each row of x (rows, n) into y and rstd (rows,)."""
    _rms_norm_forward(_runtime(), x, weight, eps, y, rstd)


def rms_norm_backward(dy, x, rstd, weight, dx, dweight) -> None:
    """dx (rows, n) of RMSNorm; dweight (n,) when not None (accumulation dtype)."""
    _rms_norm_backward(_runtime(), dy, x, rstd, weight, dx, dweight)


def entry(name: str, rows: int, n: int, dtype: Any) -> Callable[..., None]:
    """The function that does what `name` does on (rows, n) arrays of `dtype`: `name` itself, as
    each launch works out its geometry from its arrays."""
    return _ENTRY_POINTS[name]


_ENTRY_POINTS = {
    f.__name__: f
    for f in (layer_norm_forward, layer_norm_backward, rms_norm_forward, rms_norm_backward)
}
