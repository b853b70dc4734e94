"""What the row norms (layer_norm, rms_norm) share: the checks of a call and what they conclude, its
plan (normref/_plans.py), which the wrapper finds by the call's signature and then only follows.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for
from normref.norms._common import backward_inputs

__all__ = ["RowPlan", "backward_plan", "forward_plan"]


class RowPlan(NamedTuple):
    """All a row norm's wrapper needs to know besides the arrays themselves."""

    xp: Any
    kernel: Any  # what runs the call on its kernel backend (see _kernel), or None: the reference
    eps: float | None  # checked, as a Python float (None in a backward plan)
    batch: tuple[int, ...]  # x.shape without the normalized dims
    rows: int  # prod(batch)
    n: int  # elements per row: prod(normalized_shape)
    k: int  # how many trailing dims are normalized
    stats_shape: tuple[int, ...]  # of the saved statistics: batch + (1,) * k
    acc: Any  # the accumulation dtype
    # The arrays are already laid out as the kernel takes them (row arrays 2-D C-contiguous,
    # parameters 1-D contiguous in the accumulation dtype): passed on without reshape, copy or cast.
    direct: bool


def forward_plan(op, x, weight, bias, normalized_shape, eps, out, backend):
    """The checks of a forward call (bias None for rms_norm; eps None: the machine epsilon of the
    accumulation dtype, PyTorch's RMSNorm default), and what follows from them."""
    xp = _xp.namespace(x, weight, bias, out)
    _checks.floating(op, "x", x, xp)
    for name, arr in (("weight", weight), ("bias", bias)):
        if arr is not None:
            _checks.floating(op, name, arr, xp)
    shape = _checks.normalized_shape(op, tuple(x.shape), normalized_shape, weight)
    if bias is not None:
        _checks.shape_is(op, "bias", bias, shape, "normalized_shape")
    acc = _xp.accumulation_dtype(xp, x.dtype)
    eps = float(xp.finfo(acc).eps) if eps is None else _checks.positive(op, "eps", eps)
    _checks.output(op, "out", out, x)
    k = len(shape)
    batch = tuple(x.shape[: x.ndim - k])
    rows, n = math.prod(batch), math.prod(shape)
    kernel = _kernel(op, "forward", x, rows, n, backend)
    direct = kernel is not None and _laid_out(rows, n, (x, out), (weight, bias), acc)
    return RowPlan(xp, kernel, eps, batch, rows, n, k, batch + (1,) * k, acc, direct)


def backward_plan(op, dy, x, weight, bias_dtype, stats, k, out, backend):
    """The checks of a backward call (`bias_dtype`: None without a bias; `stats`: a saved
    statistic, in the accumulation dtype; k: the number of normalized dims), and what follows from
    them. `direct` here also means the parameter gradients need no cast."""
    xp = backward_inputs(op, dy, x, out)
    batch = tuple(x.shape[: x.ndim - k])
    rows, n = math.prod(batch), math.prod(x.shape[x.ndim - k :])
    kernel = _kernel(op, "backward", x, rows, n, backend)
    acc = stats.dtype
    direct = (
        kernel is not None
        and bias_dtype in (None, acc)
        and _laid_out(rows, n, (dy, x, out), (weight,), acc)
    )
    return RowPlan(xp, kernel, None, batch, rows, n, k, batch + (1,) * k, acc, direct)


def _kernel(op, pass_, x, rows, n, backend):
    """The kernel-contract function of `op`'s `pass_` (docs/contracts.md) as x's kernel module
    specialises it to x's rows (its `entry`); None when the call runs on the array-API reference."""
    kernels = kernels_for(registry.OPS[op], x, backend)
    return None if kernels is None else kernels.entry(f"{op}_{pass_}", rows, n, x.dtype)


def _laid_out(rows, n, row_arrays, params, acc):
    """Whether kernel-backend arrays (NumPy, CuPy) need no reshape, copy or cast (None: absent)."""
    return all(a is None or _xp.is_rows(a, rows, n) for a in row_arrays) and all(
        p is None or _xp.is_param_vector(p, acc) for p in params
    )
