"""Argument validation shared by every op (design.md §9).

Each check raises an exception that names the op, the argument, what was expected and what came, and
runs before any work is done, so a failing call never leaves a half-written output behind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "axis",
    "decay_rate",
    "flag",
    "finite",
    "floating",
    "integer",
    "min_ndim",
    "nonnegative",
    "normalized_shape",
    "output",
    "positive",
    "same_dtype",
    "same_shape",
    "shape_is",
    "unit_interval",
]


def floating(op: str, name: str, x: Any, xp: Any) -> None:
    """`x` must be an array of a real floating-point dtype (NumPy's bfloat16 included)."""
    dtype = getattr(x, "dtype", None)
    if type(x) is np.ndarray:  # the common case, without isdtype's microseconds
        # ml_dtypes' bfloat16 (JAX's NumPy bfloat16) is an extension dtype of kind "V" that
        # np.isdtype refuses; it is known by its name, so normref need not import ml_dtypes.
        # Like float16 it is computed in float32 (_xp.accumulation_dtype) and rounded once.
        ok = dtype.kind == "f" or dtype.name == "bfloat16"
    else:
        ok = dtype is not None and xp.isdtype(dtype, "real floating")
    if not ok:
        got = f"dtype {dtype}" if dtype is not None else type(x).__name__
        raise TypeError(f"{op}: {name} must be a real floating-point array, got {got}")


def shape_is(op: str, name: str, x: Any, expected: tuple[int, ...], why: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape {tuple(expected)} ({why}), got {tuple(x.shape)}"
        )


def same_shape(op: str, name: str, x: Any, like_name: str, like: Any) -> None:
    if tuple(x.shape) != tuple(like.shape):  # the message is built only for the error
        shape_is(op, name, x, tuple(like.shape), f"the shape of {like_name}")


def normalized_shape(op: str, x_shape: tuple[int, ...], given: Any, weight: Any) -> tuple[int, ...]:
    """Resolve PyTorch's `normalized_shape`: the trailing dimensions a norm reduces over.

    None means weight.shape when a weight is given, else the last dimension of x.
    """
    if given is None:
        shape = tuple(weight.shape) if weight is not None else tuple(x_shape[-1:])
    elif isinstance(given, int):
        shape = (given,)
    else:
        shape = tuple(int(d) for d in given)
    k = len(shape)
    if k == 0 or k > len(x_shape) or tuple(x_shape[len(x_shape) - k :]) != shape:
        if given is None and weight is not None:
            raise ValueError(
                f"{op}: weight of shape {shape} must match the trailing dimensions of x.shape "
                f"{tuple(x_shape)} (normalized_shape defaults to weight.shape)"
            )
        raise ValueError(
            f"{op}: normalized_shape {shape} must be a non-empty suffix of x.shape {tuple(x_shape)}"
        )
    if weight is not None and tuple(weight.shape) != shape:
        raise ValueError(
            f"{op}: weight must have shape {shape} (normalized_shape), got {tuple(weight.shape)}"
        )
    return shape


def same_dtype(op: str, name: str, x: Any, like_name: str, like: Any) -> None:
    if x.dtype != like.dtype:
        raise TypeError(
            f"{op}: {name} must have the dtype of {like_name} ({like.dtype}), got {x.dtype}"
        )


def output(op: str, name: str, out: Any, like: Any) -> None:
    """A caller-provided output buffer must match the result's shape and dtype exactly, and be
    writable: a read-only array would fail only after the work was done (in a Numba kernel, as a
    typing error that names neither the op nor the argument)."""
    if out is None:
        return
    if (
        tuple(getattr(out, "shape", ())) != tuple(like.shape)
        or getattr(out, "dtype", None) != like.dtype
    ):
        raise ValueError(
            f"{op}: {name} must be an array of shape {tuple(like.shape)} and dtype {like.dtype}, "
            f"got {getattr(out, 'shape', type(out).__name__)} {getattr(out, 'dtype', '')}".rstrip()
        )
    flags = getattr(out, "flags", None)  # NumPy and CuPy arrays; CuPy's have no `writeable`
    if flags is not None and not getattr(flags, "writeable", True):
        raise ValueError(f"{op}: {name} must be a writable array, got a read-only one")


def flag(op: str, name: str, value: Any) -> bool:
    """A boolean switch (training, use_input_stats): True or False, NumPy's bools included.

    Anything else is refused rather than read for its truth value, so `training="False"` fails.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{op}: {name} must be True or False, got {value!r}")


def integer(op: str, name: str, value: Any, minimum: int) -> int:
    """An integer >= minimum (a count, a number of groups): Python, NumPy or 0-d tensor integers."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r}")
    # operator.index's rule, without an import: integers and integer scalars, never floats.
    try:
        v = int(type(value).__index__(value))
    except (AttributeError, TypeError):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{op}: {name} must be an integer >= {minimum}, got {v}")
    return v


def min_ndim(op: str, name: str, x: Any, ndim: int, layout: str) -> None:
    """`x` must have at least `ndim` dimensions; `layout` names them, e.g. "(N, C, *spatial)"."""
    if x.ndim < ndim:
        raise ValueError(
            f"{op}: {name} must have at least {ndim} dimensions {layout}, "
            f"got shape {tuple(x.shape)}"
        )


def _real(op: str, name: str, value: Any, expected: str) -> float:
    """`value` as a Python float; booleans and strings are refused rather than converted."""
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{op}: {name} must be {expected}, got {value!r}")


def positive(op: str, name: str, value: Any) -> float:
    """A finite real number > 0 (an eps); returns it as a Python float."""
    v = _real(op, name, value, "a real number > 0")
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
    return v


def nonnegative(op: str, name: str, value: Any) -> float:
    """A finite real number >= 0 (a learning rate, a weight decay); returns it as a Python float."""
    v = _real(op, name, value, "a real number >= 0")
    if not (v >= 0 and math.isfinite(v)):  # also refuses NaN
        raise ValueError(f"{op}: {name} must be a finite number >= 0, got {value!r}")
    return v


def unit_interval(op: str, name: str, value: Any) -> float:
    """A real number in [0, 1] (a momentum, a mixing weight); returns it as a Python float."""
    v = _real(op, name, value, "a real number in [0, 1]")
    if not 0.0 <= v <= 1.0:  # also refuses NaN
        raise ValueError(f"{op}: {name} must be in [0, 1], got {value!r}")
    return v


def decay_rate(op: str, name: str, value: Any) -> float:
    """A real number in [0, 1) (the decay of a moving average, Adam's betas): 1 would freeze the
    average at its initial value forever; returns it as a Python float."""
    v = _real(op, name, value, "a real number in [0, 1)")
    if not 0.0 <= v < 1.0:  # also refuses NaN
        raise ValueError(f"{op}: {name} must be in [0, 1), got {value!r}")
    return v


def axis(op: str, name: str, value: Any, ndim: int, *, negative: bool = True) -> int:
    """A dimension of an array with `ndim` dimensions (a `dim` argument), returned in [0, ndim).

    Negative values count from the end when `negative` is True; otherwise they are refused (for
    ops where a peer gives -1 another meaning, so that no call silently means something else).
    """
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an integer dimension, got {value!r}")
    try:
        v = int(type(value).__index__(value))
    except (AttributeError, TypeError):
        raise TypeError(f"{op}: {name} must be an integer dimension, got {value!r}") from None
    low = -ndim if negative else 0
    if not low <= v < ndim:
        raise ValueError(
            f"{op}: {name} must be in [{low}, {ndim - 1}] for an array of {ndim} dimensions, "
            f"got {v}"
        )
    return v % ndim


def finite(op: str, name: str, value: Any) -> float:
    """Any finite real number (a gain constant, a scale); returns it as a Python float."""
    v = _real(op, name, value, "a real number")
    if not math.isfinite(v):
        raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    return v
