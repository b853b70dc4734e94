"""Backend selection: the one function that decides where an op runs (design.md §5).

`auto` sends NumPy arrays to the Numba kernel and CuPy arrays to the CUDA kernel when the op has one
for that dtype, and everything else to the array-API reference. Naming a backend explicitly either
runs it or raises; it never falls back silently. Kernel modules are imported on first use, so
`import normref` loads neither Numba nor CuPy.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from normref import _xp

__all__ = ["BACKENDS", "use_backend", "current_backend", "kernels_for"]

BACKENDS = ("auto", "reference", "numba", "cuda")
_ARRAYS_OF = {"numba": "NumPy", "cuda": "CuPy"}

_current: ContextVar[str] = ContextVar("normref_backend", default="auto")
_loaded: dict[str, ModuleType] = {}


def _checked(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


@contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Run every normref call in this block on `backend` unless the call names its own."""
    token = _current.set(_checked(backend))
    try:
        yield
    finally:
        _current.reset(token)


def current_backend() -> str:
    return _current.get()


def _kernel_backend_for(x: Any) -> str | None:
    if _xp.is_numpy(x):
        return "numba"
    if _xp.is_cupy(x):
        return "cuda"
    return None


def kernels_for(op: Any, x: Any, backend: str | None) -> ModuleType | None:
    """The kernel module that runs `op` on `x`, or None for the array-API reference.

    `op` is the op's registry entry; its `kernels` maps a backend to a `registry.Kernels` entry
    (the module that holds the op's kernels and the dtype names they take).
    """
    name = _checked(backend) if backend is not None else _current.get()
    if name == "reference" or x.size == 0:  # an empty array has nothing for a kernel to do
        return None
    native = _kernel_backend_for(x)
    dtype = _xp.dtype_name(x.dtype)
    if name == "auto":
        if native is None or native not in op.kernels or dtype not in op.kernels[native].dtypes:
            return None
        name = native
    elif native != name:
        raise TypeError(
            f"{op.name}: backend={name!r} runs on {_ARRAYS_OF[name]} arrays, got {type(x).__name__}"
        )
    elif name not in op.kernels or dtype not in op.kernels[name].dtypes:
        supported = ", ".join(op.kernels[name].dtypes) if name in op.kernels else "no dtype"
        raise TypeError(f"{op.name}: backend={name!r} takes {supported}, got {dtype}")
    path = op.kernels[name].module
    module = _loaded.get(path)
    if module is None:
        module = _loaded[path] = importlib.import_module(path)
    return module
