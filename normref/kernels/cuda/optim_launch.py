"""Launchers for the fused optimizer kernels (optim.cu): SGD, Adam/AdamW and Lion on CuPy arrays.

`Optimizer.update_` (normref/optim/base.py) finds this module through the registry and calls,
once per parameter, the same three functions as the Numba module (normref/kernels/numba/optim.py)::

    sgd_update_(p, g, momentum_buffer, k)   adam_update_(p, g, mu, nu, nu_max, k)
    lion_update_(p, g, mu, k)

Built like launch.py (the norm kernels), whose pieces it reuses:

- CuPy is imported on the first launch, never at import time. optim.cu is compiled once per
  (dtype, device) by ``cupy.RawModule`` with that dtype's instantiations, local includes inlined
  by `launch.module_source`'s machinery, and with ``--fmad=false`` (`COMPILE_OPTIONS`): the kernels
  must round ``a * b + c`` twice, as NumPy does, to give the reference's bits.
- Scalars go with explicit NumPy types (np.int64 for ``long long``, np.int32 for ``int``,
  np.float32 for ``float``): CuPy would send a bare Python int as 64 bits, a float as double.
- The geometry comes from the pure function `launch_config`, and the launch sequence is written
  against launch.py's small `Runtime` interface, so that the CPU emulator of the tests runs this
  module's own code on NumPy arrays: `bind(runtime)` gives the three functions on any runtime.
- Arrays that are not C-contiguous are handled, not refused: copied to C order, updated, copied
  back (the kernels index flat memory). Same numbers, extra passes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from normref.kernels.cuda import launch

__all__ = [
    "COMPILE_OPTIONS",
    "SOURCE",
    "LaunchConfig",
    "bind",
    "kernel_names",
    "launch_config",
    "module_source",
    "sgd_update_",
    "adam_update_",
    "lion_update_",
]

SOURCE = "optim.cu"
COMPILE_OPTIONS = launch.COMPILE_OPTIONS + ("--fmad=false",)
KERNELS = ("sgd_update", "adam_update", "lion_update")
THREADS = 256  # kThreads in optim.cu
MAX_BLOCKS = 8192  # enough to fill any current GPU; the grid-stride loop covers the rest

# Param dtype name -> the C++ storage type of the template instantiation (the state is float).
_STORAGE = {"float32": "float", "float16": "__half", "bfloat16": "normref::bf16_bits"}

# The `flags` bits of optim.cu (kMaximize, kDecay, ...).
MAXIMIZE, DECAY, DECOUPLED, MOMENTUM = 1, 2, 4, 8
FIRST, NESTEROV, AMSGRAD, LERP_LOW = 16, 32, 64, 128

LaunchConfig = launch.LaunchConfig


class _Storage(NamedTuple):
    name: str
    ctype: str


def _storage(dtype: Any) -> _Storage:
    name = np.dtype(dtype).name
    if name not in _STORAGE:
        raise TypeError(f"CUDA optimizer kernels take {', '.join(_STORAGE)} params, got {name}")
    return _Storage(name, _STORAGE[name])


def launch_config(kernel: str, n: int, dtype: Any) -> LaunchConfig:
    """Kernel name, grid and block of one launch over n elements; pure (no CuPy)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    if n < 1:
        raise ValueError(f"a launch needs n >= 1 elements, got {n}")
    blocks = min(-(-n // THREADS), MAX_BLOCKS)
    return LaunchConfig(
        f"normref::{kernel}<{_storage(dtype).ctype}>", (blocks, 1, 1), (THREADS, 1, 1)
    )


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """Every name expression `launch_config` can return for `dtype`: what its module is
    compiled with."""
    ctype = _storage(dtype).ctype
    return tuple(f"normref::{kernel}<{ctype}>" for kernel in KERNELS)


def module_source(directory: Path = launch.KERNEL_DIR) -> str:
    """optim.cu as the compiler gets it (in `directory`): local includes inlined, with #line
    directives so that diagnostics name the real files (launch.module_source's machinery)."""
    return launch._expand(Path(directory) / SOURCE)


# ---- the launch sequence, on any runtime (launch.Runtime: CuPy here, the emulator in tests) ----


def _flat(a: Any) -> tuple[Any, bool]:
    """(a as a flat C-ordered array, whether that is a copy to write back)."""
    if a.flags.c_contiguous:
        return a.reshape(-1), False
    return a.ravel(), True  # NumPy and CuPy: a C-ordered copy of a non-contiguous array


def _run(rt: Any, kernel: str, p: Any, g: Any, slots: tuple[Any, ...], flags: int, *scalars):
    """One launch of `kernel` over p, g and the slots (None: absent, passed as a null pointer)."""
    _storage(p.dtype)  # refuses a dtype without an instantiation before anything runs
    n = int(p.size)
    arrays = [(a, *_flat(a)) if a is not None else (None, None, False) for a in (p, g, *slots)]
    for name, (_, flat, _) in zip(("grad", *("state",) * len(slots)), arrays[1:]):
        dtype = p.dtype if name == "grad" else np.float32
        if flat is not None and (flat.size != n or flat.dtype != dtype):
            raise ValueError(
                f"CUDA optimizer kernels: {name} must hold {n} {np.dtype(dtype).name} values like "
                f"the param, got {flat.size} {flat.dtype}"
            )
    if n == 0:
        return
    config = launch_config(kernel, n, p.dtype)
    f32 = np.float32
    args = (*(flat for _, flat, _ in arrays), np.int64(n), np.int32(flags), *map(f32, scalars))
    rt.launch("optim", p.dtype, config, args)
    for i, (a, flat, copied) in enumerate(arrays):
        if copied and i != 1:  # the grad is only read
            a[...] = flat.reshape(a.shape)


def _sgd(rt, p, g, momentum_buffer, k) -> None:
    on = momentum_buffer is not None and k.momentum != 0
    flags = (
        MAXIMIZE * k.maximize
        | DECAY * (k.weight_decay != 0)
        | MOMENTUM * on
        | FIRST * k.first
        | NESTEROV * k.nesterov
    )
    scalars = (k.weight_decay, k.momentum, k.one_minus_dampening, k.lr)
    _run(rt, "sgd_update", p, g, (momentum_buffer if on else None,), flags, *scalars)


def _adam(rt, p, g, mu, nu, nu_max, k) -> None:
    w = k.one_minus_b1  # adam._lerp's weight: its form and 1 - w, in double, as there
    flags = (
        MAXIMIZE * k.maximize
        | DECAY * (k.weight_decay != 0)
        | DECOUPLED * k.decoupled
        | AMSGRAD * (nu_max is not None)
        | LERP_LOW * (abs(w) < 0.5)
    )
    scalars = (k.weight_decay, k.decay, w, 1 - w, k.b2, k.one_minus_b2, k.bc2_sqrt, k.eps)
    _run(rt, "adam_update", p, g, (mu, nu, nu_max), flags, *scalars, -k.step_size)


def _lion(rt, p, g, mu, k) -> None:
    flags = DECAY * (k.weight_decay != 0)
    scalars = (k.b1, k.one_minus_b1, k.weight_decay, k.lr, k.b2, k.one_minus_b2)
    _run(rt, "lion_update", p, g, (mu,), flags, *scalars)


def bind(runtime: Any) -> SimpleNamespace:
    """The three update functions running on `runtime` (the emulator tests use this)."""
    return SimpleNamespace(
        sgd_update_=lambda p, g, momentum_buffer, k: _sgd(runtime, p, g, momentum_buffer, k),
        adam_update_=lambda p, g, mu, nu, nu_max, k: _adam(runtime, p, g, mu, nu, nu_max, k),
        lion_update_=lambda p, g, mu, k: _lion(runtime, p, g, mu, k),
    )


# ---- CuPy ---------------------------------------------------------------------------------------


@functools.cache
def _runtime() -> launch._CupyRuntime:
    """launch.py's CuPy runtime compiling optim.cu, made on the first launch. There is one source,
    so the runtime's source argument ("optim", from `_run`) only names the module."""
    return launch._CupyRuntime(
        lambda _source: module_source(),
        lambda _source, dtype: kernel_names(dtype),
        COMPILE_OPTIONS,
    )


def sgd_update_(p, g, momentum_buffer, k) -> None:
    """One SGD step of one CuPy parameter in place (normref/optim/sgd.py; k: its _Coefficients)."""
    _sgd(_runtime(), p, g, momentum_buffer, k)


def adam_update_(p, g, mu, nu, nu_max, k) -> None:
    """One Adam / AdamW step of one CuPy parameter in place; nu_max: None without amsgrad."""
    _adam(_runtime(), p, g, mu, nu, nu_max, k)


def lion_update_(p, g, mu, k) -> None:
    """One Lion step of one CuPy parameter in place (normref/optim/lion.py)."""
    _lion(_runtime(), p, g, mu, k)
