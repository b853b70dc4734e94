"""Inputs, float64 reference results and comparisons for the CUDA kernel tests.

Shared by the emulator tests (NumPy arrays, tests/kernels/test_cuda_emulated.py) and the GPU tests
(CuPy arrays, tests/kernels/test_cuda_gpu.py): both call the four kernel-contract functions
through `run_layer_norm` / `run_rms_norm` and compare with `normref`'s array-API reference run in
float64 on the very same (already rounded) inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import normref

DTYPES = (np.float32, np.float16, np.float64)

# Largest error allowed, as max |got - want| / max |want| over an output (details: `compare`).
# float16 outputs are rounded once to 11 significant bits (2^-11 ~ 4.9e-4 of the value); float32
# accumulates in float32 over up to ~10^4 elements.
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5, np.float16: 2e-3}

# (rows, n) covering every kernel variant launch_config picks: n below a warp (1, 5, 31), values
# per thread 1, 2, 4 and 8, a row longer than the block (1500), the long-row kernel (9001 > 8192)
# and enough rows (70) for several row chunks in the parameter-gradient sums.
SHAPES = ((3, 1), (4, 5), (3, 31), (70, 33), (5, 100), (3, 1500), (2, 5000), (2, 9001))


def accumulation(dtype: Any) -> type:
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def make_inputs(
    rng: np.random.Generator,
    rows: int,
    n: int,
    dtype: Any,
    *,
    weight: bool = True,
    bias: bool = True,
    offset: float = 0.0,
    scale: float = 1.0,
) -> dict[str, np.ndarray | None]:
    """x = offset + scale * N(0, 1) in `dtype`, a random upstream gradient dy (never ones), and
    weight/bias in the accumulation dtype (what the op wrappers hand to kernels), or None."""
    acc = accumulation(dtype)
    signed_weight = rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n)
    return {
        "x": (offset + scale * rng.standard_normal((rows, n))).astype(dtype),
        "weight": signed_weight.astype(acc) if weight else None,
        "bias": rng.standard_normal(n).astype(acc) if bias else None,
        "dy": rng.standard_normal((rows, n)).astype(dtype),
    }


def _host(a: Any) -> Any:
    return a.get() if hasattr(a, "get") else a  # CuPy -> NumPy; NumPy and None pass through


def _device(xp: Any, a: Any) -> Any:
    return None if a is None else xp.asarray(a)


def run_layer_norm(kernels: Any, xp: Any, inputs: dict, eps: float) -> dict[str, np.ndarray]:
    """Forward, then backward from the forward's own mean/rstd, through `kernels` (launch.py or
    launch.bind(runtime)) on arrays of `xp`. Outputs start as NaN, so an unwritten one shows."""
    x, weight, bias, dy = (_device(xp, inputs[k]) for k in ("x", "weight", "bias", "dy"))
    rows, n = x.shape
    acc = accumulation(x.dtype)
    y, dx = xp.full((rows, n), np.nan, x.dtype), xp.full((rows, n), np.nan, x.dtype)
    mean, rstd = xp.full(rows, np.nan, acc), xp.full(rows, np.nan, acc)
    dweight = None if weight is None else xp.full(n, np.nan, acc)
    dbias = None if bias is None else xp.full(n, np.nan, acc)
    kernels.layer_norm_forward(x, weight, bias, eps, y, mean, rstd)
    kernels.layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias)
    out = {"y": y, "mean": mean, "rstd": rstd, "dx": dx, "dweight": dweight, "dbias": dbias}
    return {k: _host(v) for k, v in out.items()}


def run_rms_norm(kernels: Any, xp: Any, inputs: dict, eps: float) -> dict[str, np.ndarray]:
    x, weight, dy = (_device(xp, inputs[k]) for k in ("x", "weight", "dy"))
    rows, n = x.shape
    acc = accumulation(x.dtype)
    y, dx = xp.full((rows, n), np.nan, x.dtype), xp.full((rows, n), np.nan, x.dtype)
    rstd = xp.full(rows, np.nan, acc)
    dweight = None if weight is None else xp.full(n, np.nan, acc)
    kernels.rms_norm_forward(x, weight, eps, y, rstd)
    kernels.rms_norm_backward(dy, x, rstd, weight, dx, dweight)
    out = {"y": y, "rstd": rstd, "dx": dx, "dweight": dweight}
    return {k: _host(v) for k, v in out.items()}


def _f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def reference_layer_norm(inputs: dict, eps: float) -> dict[str, np.ndarray]:
    """normref's array-API reference in float64 on the same inputs."""
    x, weight, bias, dy = (_f64(inputs[k]) for k in ("x", "weight", "bias", "dy"))
    with np.errstate(invalid="ignore"):
        y, saved = normref.layer_norm_forward(x, weight, bias, eps=eps, backend="reference")
        dx, dweight, dbias = normref.layer_norm_backward(dy, saved, backend="reference")
    x_hat = (x - saved.mean.reshape(-1, 1)) * saved.rstd.reshape(-1, 1)
    return {
        "y": y,
        "mean": saved.mean.reshape(-1),
        "rstd": saved.rstd.reshape(-1),
        "dx": dx,
        "dweight": dweight,
        "dbias": dbias,
        "scale": _gradient_scales(x_hat, saved.rstd.reshape(-1, 1), weight, dy),
    }


def reference_rms_norm(inputs: dict, eps: float) -> dict[str, np.ndarray]:
    x, weight, dy = (_f64(inputs[k]) for k in ("x", "weight", "dy"))
    with np.errstate(invalid="ignore"):
        y, saved = normref.rms_norm_forward(x, weight, eps=eps, backend="reference")
        dx, dweight = normref.rms_norm_backward(dy, saved, backend="reference")
    rstd = saved.rstd.reshape(-1, 1)
    scale = _gradient_scales(x * rstd, rstd, weight, dy)
    return {"y": y, "rstd": rstd.reshape(-1), "dx": dx, "dweight": dweight, "scale": scale}


def _gradient_scales(x_hat, rstd, weight, dy) -> dict[str, float]:
    """The size of the terms each gradient sums, which is what its rounding error scales with:
    dx = rstd * (g - ...) can cancel to almost nothing (n = 1 gives exactly 0 in exact math)."""
    g = dy if weight is None else dy * weight
    with np.errstate(invalid="ignore"):
        return {
            "dx": float(np.nanmax(np.abs(rstd * g), initial=0)),
            "dweight": float(np.nanmax(np.abs(dy * x_hat).sum(axis=0), initial=0)),
            "dbias": float(np.nanmax(np.abs(dy).sum(axis=0), initial=0)),
        }


def compare(got: dict, want: dict, dtype: Any) -> dict[str, float]:
    """Error of every output in units of TOLERANCE[dtype] (<= 1 passes): max |got - want| over
    the largest of max |want| and the size of the terms it sums (want["scale"]). NaN must sit
    exactly where the reference has NaN; only the finite entries enter the error."""
    errors = {}
    scales = want.get("scale", {})
    for name, w in want.items():
        if name == "scale":
            continue
        g = got[name]
        if w is None or g is None:
            assert g is None and w is None, f"{name}: got {g is not None}, want {w is not None}"
            continue
        g = np.asarray(g, dtype=np.float64)
        nan_want, nan_got = np.isnan(w), np.isnan(g)
        where = np.flatnonzero((nan_want != nan_got).ravel())
        assert where.size == 0, f"{name}: NaN differs from the reference at flat index {where[:5]}"
        ok = ~nan_want
        if not ok.any():
            errors[name] = 0.0
            continue
        tolerance = TOLERANCE[np.dtype(dtype).type]
        if name == "mean":
            # What matters is the error relative to the row's spread (1 / rstd), plus the rounding
            # of storing the mean itself (large for a large offset: that is why the backward
            # re-centres x_hat).
            stored = np.spacing(np.abs(w[ok]).astype(accumulation(dtype))).astype(np.float64)
            err = np.max(np.abs(g[ok] - w[ok]) / (tolerance / want["rstd"][ok] + stored))
        else:
            scale = max(np.max(np.abs(w[ok])), scales.get(name, 0.0), np.finfo(float).tiny)
            err = np.max(np.abs(g[ok] - w[ok])) / scale / tolerance
            if np.dtype(dtype) == np.float16 and np.dtype(got[name].dtype) == np.float16:
                errors[f"{name} rounding"] = _rounding_error(g[ok], w[ok], scale)
        errors[name] = float(err)
    return errors


def _rounding_error(got: np.ndarray, want: np.ndarray, scale: float) -> float:
    """A float16 output computed in float32 and rounded once to nearest is within half a float16
    ulp of the exact value, plus float32's own error (a fraction of TOLERANCE[float32] * scale).
    In units of that bound: truncating, or rounding twice, exceeds 1."""
    with np.errstate(over="ignore"):
        half_ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64) / 2
    bound = half_ulp + TOLERANCE[np.float32] * scale
    return float(np.max(np.abs(got - want) / bound))


def assert_close(got: dict, want: dict, dtype: Any, context: str) -> None:
    errors = compare(got, want, dtype)
    bad = {k: v for k, v in errors.items() if v > 1}
    assert not bad, f"{context}: error in units of the tolerance {bad} (all: {errors})"
