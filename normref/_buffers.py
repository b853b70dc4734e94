"""Reuse of the large NumPy output buffers that the fast paths allocate when no `out=` is given.

A fresh 32 MiB array costs more to fault in than a LayerNorm kernel takes to fill it (2.5 ms
against 1.5 ms on the benchmark machine), and a training loop asks for an array of the same size
every step, right after dropping last step's. So the kernels' outputs come from here: memory whose
last array has died goes to a small free list, and the next request of the same size takes it back
instead of faulting in new pages. CuPy's memory pool does the same on the GPU.

Safety rests on CPython's reference counting, not on guesses about it: every array handed out is
a view of a `_Block`, which holds the memory; NumPy keeps the block alive from every view made of
that array (a view's base chain stops at the first non-array owner). The block's `__del__` runs
only when no array can reach the memory any more, and only then does the memory go back on the
free list.

The free list holds at most `FREE_PER_SIZE` buffers of one byte size and `FREE_BYTES` in all;
memory beyond that is released as usual. `release()` empties it.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

__all__ = ["LINE", "MIN_BYTES", "FREE_BYTES", "FREE_PER_SIZE", "empty", "on_line", "release"]

MIN_BYTES = 1 << 20  # below this the allocator's own reuse (no page faults) is as good
FREE_BYTES = 512 << 20  # free memory kept in all
FREE_PER_SIZE = 4  # free buffers kept per byte size (a step's outputs: y, dx, ...)
LINE = 64  # bytes in a cache line

_lock = threading.Lock()
_free: dict[int, list[np.ndarray]] = {}  # byte size -> raw uint8 buffers no array uses
_free_bytes = 0


class _Block:
    """Owner of one raw buffer while arrays use it; returns it to the free list when they die."""

    __slots__ = ("raw", "__array_interface__")

    def __init__(self, raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.raw = raw
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "descr": dtype.descr,
            "data": (raw.ctypes.data, False),
            "version": 3,
        }

    def __del__(self) -> None:
        _give_back(self.raw)


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array, from the free list when one fits."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes < MIN_BYTES or dtype.hasobject:
        return np.empty(shape, dtype=dtype)
    raw = _take(nbytes)
    if raw is None:
        raw = on_line((nbytes,), np.uint8)
    # The array's base is the block (NumPy keeps an __array_interface__ exporter as the base). The
    # interface carries only a type string, which for an extension dtype such as ml_dtypes'
    # bfloat16 reads back as raw bytes ('|V2'): a view restores the dtype, and keeps the block.
    array = np.asarray(_Block(raw, tuple(shape), dtype))
    return array if array.dtype == dtype else array.view(dtype)


def on_line(shape: tuple[int, ...], dtype: Any, offset: int = 0) -> np.ndarray:
    """A new uninitialised C-contiguous array whose data starts `offset` bytes past a cache line
    (0: on one, as PyTorch places its tensors). NumPy promises 16 bytes, and a large allocation
    lands 16 bytes past a page, so that every second 32-byte vector load straddles two lines and
    costs two."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * math.prod(shape)
    whole = np.empty(nbytes + LINE + offset, dtype=np.uint8)
    start = -whole.ctypes.data % LINE + offset
    return whole[start : start + nbytes].view(dtype).reshape(shape)


def release() -> None:
    """Drop every free buffer (memory in use by arrays is not affected)."""
    global _free_bytes
    with _lock:
        _free.clear()
        _free_bytes = 0


def _take(nbytes: int) -> np.ndarray | None:
    global _free_bytes
    with _lock:
        buffers = _free.get(nbytes)
        if not buffers:
            return None
        _free_bytes -= nbytes
        return buffers.pop()


def _give_back(raw: np.ndarray) -> None:
    global _free_bytes
    nbytes = raw.nbytes
    with _lock:
        buffers = _free.setdefault(nbytes, [])
        if len(buffers) < FREE_PER_SIZE and _free_bytes + nbytes <= FREE_BYTES:
            buffers.append(raw)
            _free_bytes += nbytes
