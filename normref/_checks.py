"""Argument validation shared by every op (design.md §9).

Each check raises an exception that names the op, the argument, what was expected and what came, and
runs before any work is done, so a failing call never leaves a half-written output behind.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "floating",
    "same_shape",
    "same_dtype",
    "shape_is",
    "positive",
    "normalized_shape",
    "output",
]


def floating(op: str, name: str, x: Any, xp: Any) -> None:
    """`x` must be an array of a real floating-point dtype."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not xp.isdtype(dtype, "real floating"):
        got = f"dtype {dtype}" if dtype is not None else type(x).__name__
        raise TypeError(f"{op}: {name} must be a real floating-point array, got {got}")


def shape_is(op: str, name: str, x: Any, expected: tuple[int, ...], why: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape {tuple(expected)} ({why}), got {tuple(x.shape)}"
        )


def same_shape(op: str, name: str, x: Any, like_name: str, like: Any) -> None:
    shape_is(op, name, x, tuple(like.shape), f"the shape of {like_name}")


def positive(op: str, name: str, value: Any) -> float:
    """A finite float > 0 (eps, learning rates' relatives); returns it as a Python float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
    return v


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
    """A caller-provided output buffer must match the result's shape and dtype exactly."""
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
