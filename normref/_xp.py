"""The one place that resolves array namespaces and the dtype rules (design.md §6).

Every op asks this module which namespace its arrays live in and in which dtype to accumulate:
float64 stays float64, float32 accumulates in float32, and the 16-bit floats (float16, bfloat16)
are computed in float32 and rounded once at the end, as PyTorch and Apex do.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import numpy as _compat_numpy

from normref import _buffers

__all__ = [
    "namespace",
    "accumulation_dtype",
    "is_numpy",
    "is_cupy",
    "dtype_name",
    "as_rows",
    "is_param_vector",
    "is_rows",
    "reshape",
    "param_vector",
    "rows_buffer",
    "deliver",
]


def _numpy_namespace() -> Any:
    """array_api_compat's NumPy namespace with the three wrappers every op calls (empty, astype,
    reshape) replaced by direct NumPy calls of the same meaning: the wrappers cost 0.5-0.7 us each,
    several times per call, which at (64, 768) is as long as the LayerNorm kernel. Any argument the
    direct call does not cover (a device, an explicit copy rule) goes to the wrapper."""

    def empty(shape, *, dtype=None, device=None):
        if device is not None:
            return _compat_numpy.empty(shape, dtype=dtype, device=device)
        return np.empty(shape, dtype)

    def astype(x, dtype, /, *, copy=True, device=None):
        if device is not None or type(x) is not np.ndarray:
            return _compat_numpy.astype(x, dtype, copy=copy, device=device)
        return x.astype(dtype, copy=copy)

    def reshape(x, /, shape, *, copy=None):
        if copy is not None or type(x) is not np.ndarray:
            return _compat_numpy.reshape(x, shape, copy=copy)
        return x.reshape(shape)

    fast = {"empty": empty, "astype": astype, "reshape": reshape}
    return types.SimpleNamespace(**{**vars(_compat_numpy), **fast})


NUMPY = _numpy_namespace()


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by `arrays` (None entries are ignored)."""
    for a in arrays:  # the common case, all NumPy, without the generic lookup
        if a is not None and type(a) is not np.ndarray:
            return array_api_compat.array_namespace(*(a for a in arrays if a is not None))
    return NUMPY


def is_numpy(x: Any) -> bool:
    return type(x) is np.ndarray


def is_cupy(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


# Keyed by (type, dtype) so that dtypes of different libraries are never compared with each other.
_DTYPE_NAMES: dict[tuple[type, Any], str] = {}


def dtype_name(dtype: Any) -> str:
    """'float32', 'float16', 'bfloat16', ... for a dtype of any array library (memoized: str() of a
    NumPy dtype costs microseconds, which matters on every call of a small op)."""
    key = (type(dtype), dtype)
    name = _DTYPE_NAMES.get(key)
    if name is None:
        name = _DTYPE_NAMES[key] = str(dtype).rpartition(".")[2]
    return name


def accumulation_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype statistics are computed in: float64 for float64, float32 for narrower ones."""
    return xp.float64 if dtype == xp.float64 else xp.float32


def reshape(xp: Any, x: Any, shape: tuple[int, ...]) -> Any:
    """xp.reshape, through the array's own method for NumPy and CuPy: np.reshape's function
    wrapper costs about a microsecond a call, several times per call of a small op."""
    if is_numpy(x) or is_cupy(x):
        return x.reshape(shape)
    return xp.reshape(x, shape)


def is_rows(a: Any, rows: int, n: int) -> bool:
    """Whether a NumPy or CuPy array already is the C-contiguous (rows, n) array kernels take."""
    return tuple(a.shape) == (rows, n) and a.flags.c_contiguous


def is_param_vector(param: Any, acc: Any) -> bool:
    """Whether a NumPy or CuPy parameter already is the contiguous 1-D accumulation-dtype array
    kernels take."""
    return param.ndim == 1 and param.dtype == acc and param.flags.c_contiguous


def as_rows(xp: Any, x: Any, rows: int, n: int) -> Any:
    """`x` as a C-contiguous (rows, n) array: a view when it can be, a copy when it must be.

    Only for NumPy and CuPy arrays (the kernel backends), which carry `flags` and a module-level
    `ascontiguousarray` (a strided view such as x[..., ::2] reshapes to another strided view).
    """
    if is_rows(x, rows, n):
        return x
    x2 = reshape(xp, x, (rows, n))
    if not x2.flags.c_contiguous:
        x2 = sys.modules[type(x2).__module__.partition(".")[0]].ascontiguousarray(x2)
    return x2


def param_vector(xp: Any, param: Any, acc: Any) -> Any:
    """A parameter (weight, bias) as the contiguous 1-D accumulation-dtype array kernels take."""
    if param is None or is_param_vector(param, acc):  # the usual case, as it is
        return param
    if param.dtype != acc:
        param = xp.astype(param, acc)
    if param.ndim == 1 and param.flags.c_contiguous:
        return param
    return as_rows(xp, param, 1, math.prod(param.shape))[0]


def rows_buffer(xp: Any, out: Any, rows: int, n: int, dtype: Any) -> Any:
    """Where a kernel writes a (rows, n) result: the caller's `out` itself when it is C-contiguous
    (the whole point of `out=` is to skip the allocation), else a new array; for NumPy, one whose
    memory is reused from outputs the caller has dropped (normref/_buffers.py)."""
    if out is not None and out.flags.c_contiguous:
        return out if out.shape == (rows, n) else reshape(xp, out, (rows, n))
    if xp is NUMPY:
        return _buffers.empty((rows, n), dtype)
    return xp.empty((rows, n), dtype=dtype)


def deliver(xp: Any, result: Any, out: Any, shape: tuple[int, ...]) -> Any:
    """`result` reshaped to `shape`; when the caller gave `out`, written into it (a kernel that
    wrote into `out` directly through `rows_buffer` costs no copy here)."""
    if result is out:
        return out
    if out is None:
        return reshape(xp, result, shape)
    if not _same_memory(result, out):
        out[...] = reshape(xp, result, shape)
    return out


def _same_memory(a: Any, b: Any) -> bool:
    """Whether `a` is a view of all of `b` (what `rows_buffer` makes of a C-contiguous `out`
    that needs reshaping)."""
    if not (is_numpy(b) or is_cupy(b)) or not b.flags.c_contiguous:
        return False
    if b.base is None:
        # b owns exactly b.nbytes of memory, so a C-contiguous view of all those bytes starts where
        # b does: no need to read the data pointers (a dict built per call, ~1 us each).
        return a.base is b and a.nbytes == b.nbytes and a.flags.c_contiguous
    return a.base is b.base and a.size == b.size and _data(a) == _data(b)


def _data(a: Any) -> int:
    return a.__array_interface__["data"][0] if is_numpy(a) else a.data.ptr
