"""The one tolerance table for golden cases, and the error measure of every comparison (§7).

A result passes when, for every element,

    |got - expected| <= atol + rtol * |expected|

where `expected` is the float64 reference computed from the exact stored (already rounded) inputs.
The error of a whole array is reported "in units of the tolerance":

    max over elements of |got - expected| / (atol + rtol * |expected|)

so 1.0 is the pass/fail line whatever the dtype, and 0.01 means "a hundred times inside it".

How the numbers were chosen (worst errors measured on the shipped cases with the reference and the
Numba kernels, in units of these tolerances):

- float64 (worst 0.003): the kernels sum in another order than NumPy's pairwise sums, a few ulp;
  rtol 1e-12 leaves room for longer rows and for the cancellation in
  dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)).
- float32 (worst 0.044): normref's shifted statistics stay within ~1e-6 relative, but the table
  asks for float32 accuracy, not for normref's algorithm: a plain two-pass float32 LayerNorm (a
  NumPy user's, PyTorch's) rounds the row mean, which on the offset probe (mean 100, std 1) costs
  ~2e-5 relative; rtol 1e-4 admits it and still fails a one-pass E[x^2] - E[x]^2 variance there
  (~1e-3). atol covers elements near zero, whose error is absolute (an ulp of the row's scale).
- float16 (worst 0.246): computed in float32 and rounded once to float16 (10 stored mantissa bits),
  so the error is that one rounding: at most half an ulp, which is at most 2^-11 relative, i.e. 0.25
  of rtol = 2^-9. atol covers float16's subnormal range and the float32 error near zero.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Tolerance", "TOLERANCES", "tolerance", "scaled_error"]


class Tolerance(NamedTuple):
    rtol: float
    atol: float


# dtype name -> {"forward": ..., "backward": ...}. The only place tolerances are written down.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "float64": {
        "forward": Tolerance(rtol=1e-12, atol=1e-13),
        "backward": Tolerance(rtol=1e-12, atol=1e-13),
    },
    "float32": {
        "forward": Tolerance(rtol=1e-4, atol=1e-5),
        "backward": Tolerance(rtol=1e-4, atol=1e-5),
    },
    "float16": {
        "forward": Tolerance(rtol=2.0**-9, atol=1e-5),
        "backward": Tolerance(rtol=2.0**-9, atol=1e-5),
    },
}


def tolerance(dtype: str, direction: str) -> Tolerance:
    """The tolerance for `dtype` ("float32", ...) and `direction` ("forward" or "backward")."""
    try:
        return TOLERANCES[dtype][direction]
    except KeyError:
        raise KeyError(
            f"no golden tolerance for dtype {dtype!r} / {direction!r}; "
            f"the table (normref/golden/tolerances.py) has {', '.join(TOLERANCES)}"
        ) from None


def scaled_error(got: np.ndarray, expected: np.ndarray, tol: Tolerance) -> float:
    """Worst |got - expected| / (atol + rtol * |expected|), in units of the tolerance.

    NaN where NaN is expected, and an infinity equal to the expected one, count as exact matches; a
    NaN or infinity anywhere else, or a shape mismatch, is an infinite error. Empty arrays: 0.
    """
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        # inf - inf and x / inf give NaN below; those elements are decided by `same` or become inf.
        err = np.abs(got - expected) / (tol.atol + tol.rtol * np.abs(expected))
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    err = np.where(same, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    return float(err.max())
