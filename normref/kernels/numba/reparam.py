"""Numba CPU kernels for weight normalization and weight standardization, forward and backward.

The op wrappers (normref/reparam/weight_norm.py, weight_standardization.py) validate, lay the
weight out as a C-contiguous (rows, n) array, one row per slice the statistics run over (an output
channel: n is its fan-in), allocate the outputs and call the four functions at the bottom:

    weight_norm_forward(v, g, w, norm) -> None
        v: (rows, n) input dtype; g: (rows,) accumulation dtype
        w: (rows, n) v's dtype (written); norm: (rows,) accumulation dtype (written)
    weight_norm_backward(dw, v, g, norm, dv, dg) -> None
        dw, v, dv: (rows, n) input dtype; g, norm: (rows,) accumulation dtype
        dg: (rows,) accumulation dtype (written)
    weight_standardization_forward(weight, eps, w, mean, std) -> None
        weight, w: (rows, n) input dtype, n >= 2; mean, std: (rows,) accumulation dtype (written)
    weight_standardization_backward(dw, weight, mean, std, eps, dweight) -> None
        dw, weight, dweight: (rows, n) input dtype; mean, std: (rows,) accumulation dtype

The numerics are the reference's, step for step (the modules' docstrings and specs/):

    weight_norm:  norm = sqrt(sum(v^2)), w = v * (g / norm);
                  dg = sum(dw * v) / norm, dv = (g / norm) * (dw - v * (dg / norm)).
    weight_standardization: shifted two-pass statistics, K = weight[0], d = weight - K,
                  mean_d = sum(d) / n, c = d - mean_d, std = sqrt(sum(c^2) / (n - 1)),
                  w = c / (std + eps), saved mean = K + mean_d; the backward recomputes
                  c' = weight - mean and re-centres it, c = c' - mean(c'), then
                  k = sum(dw * y) * (1 / std) / (n - 1) with y = c / (std + eps), 1 / std taken
                  as 0 where std == 0, and dweight = ((dw - mean(dw)) - c * k) / (std + eps):
                  the reference's (dw - mean(dw)) / (std + eps) - y * k over one denominator
                  (one division an element, not two).

Built like norms.py (its docstring says why in more detail):

- Parallel only across rows (``prange``), each row reduced by one thread in an order fixed at
  compile time: results do not depend on the number of threads. Every output of a row depends on
  that row alone (g, norm, dg, mean and std are per row), so there are no cross-row sums here.
- ``fastmath={'reassoc'}`` and nothing else: it lets LLVM vectorize the row sums, while NaN/Inf
  stay IEEE and no multiply-add is fused.
- Row sums are blocked (partial sums of ``_BLOCK`` elements), which keeps float32 rounding small on
  long rows at no cost in speed.
- Every subtraction that must not be reassociated goes through ``_minus``, compiled without
  fastmath: under ``reassoc`` LLVM may rewrite ``t + (x - K)`` as ``(t + x) - K`` or
  ``(x - K) - mean_d`` as ``x - (K + mean_d)``, and round away exactly what the shift and the
  re-centring keep.
- ``error_model="numpy"``: a zero slice of v divides by a zero norm, which must give the
  reference's NaN/Inf, not Numba's ZeroDivisionError (and the division needs no check branch).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "weight_norm_forward",
    "weight_norm_backward",
    "weight_standardization_forward",
    "weight_standardization_backward",
]

_FASTMATH = {"reassoc"}
_BLOCK = 256  # elements per partial sum in a row reduction


def _kernel(fn):
    return njit(cache=True, parallel=True, fastmath=_FASTMATH, error_model="numpy")(fn)


@njit(cache=True)  # strict IEEE on purpose: see the module docstring
def _minus(a, b):
    return a - b


@_kernel
def _wn_forward(v, g, w, norm):
    acc = norm.dtype.type
    rows, n = v.shape
    for i in prange(rows):
        vi = v[i]
        wi = w[i]
        s = acc(0)
        for b in range(0, n, _BLOCK):
            vb = vi[b : b + _BLOCK]
            t = acc(0)
            for j in range(vb.shape[0]):
                x = acc(vb[j])
                t += x * x
            s += t
        nrm = np.sqrt(s)
        scale = g[i] / nrm  # the reference's v * (g / norm): one quotient per row
        norm[i] = nrm
        for j in range(n):
            wi[j] = acc(vi[j]) * scale


@_kernel
def _wn_backward(dw, v, g, norm, dv, dg):
    acc = norm.dtype.type
    rows, n = v.shape
    for i in prange(rows):
        vi = v[i]
        dwi = dw[i]
        dvi = dv[i]
        s = acc(0)
        for b in range(0, n, _BLOCK):
            vb = vi[b : b + _BLOCK]
            dwb = dwi[b : b + _BLOCK]
            t = acc(0)
            for j in range(vb.shape[0]):
                t += acc(dwb[j]) * acc(vb[j])
            s += t
        nrm = norm[i]
        d = s / nrm
        dg[i] = d
        a = g[i] / nrm
        b_ = d / nrm
        for j in range(n):
            dvi[j] = a * (acc(dwi[j]) - acc(vi[j]) * b_)


@_kernel
def _ws_forward(x, eps, y, mean, std):
    acc = mean.dtype.type
    rows, n = x.shape
    nf = acc(n)
    dof = acc(n - 1)  # the unbiased estimate (torch.std's default, the authors' code)
    eps_ = acc(eps)
    for i in prange(rows):
        xi = x[i]
        yi = y[i]
        k = acc(xi[0])  # the shift K: x - K is exact for a channel with a large offset
        s = acc(0)
        for b in range(0, n, _BLOCK):
            xb = xi[b : b + _BLOCK]
            t = acc(0)
            for j in range(xb.shape[0]):
                t += _minus(acc(xb[j]), k)
            s += t
        m = s / nf
        q = acc(0)
        for b in range(0, n, _BLOCK):
            xb = xi[b : b + _BLOCK]
            t = acc(0)
            for j in range(xb.shape[0]):
                c = _minus(_minus(acc(xb[j]), k), m)
                t += c * c
            q += t
        sd = np.sqrt(q / dof)
        denom = sd + eps_  # eps outside the square root, on the std
        mean[i] = k + m
        std[i] = sd
        for j in range(n):
            yi[j] = _minus(_minus(acc(xi[j]), k), m) / denom


@_kernel
def _ws_backward(dy, x, mean, std, eps, dx):
    acc = mean.dtype.type
    rows, n = x.shape
    nf = acc(n)
    dof = acc(n - 1)
    eps_ = acc(eps)
    for i in prange(rows):
        xi = x[i]
        dyi = dy[i]
        dxi = dx[i]
        mu = mean[i]
        sd = std[i]
        denom = sd + eps_
        # One pass: sum(g), sum(g * c'), sum(c') with c' = x - mean. The exact c has zero mean, so
        # c = c' - mean(c') cancels the rounding of the saved mean, and
        # sum(g * c) = sum(g * c') - mean(c') * sum(g).
        sg = acc(0)
        sgc = acc(0)
        sc = acc(0)
        for b in range(0, n, _BLOCK):
            xb = xi[b : b + _BLOCK]
            dyb = dyi[b : b + _BLOCK]
            tg = acc(0)
            tgc = acc(0)
            tc = acc(0)
            for j in range(xb.shape[0]):
                c = _minus(acc(xb[j]), mu)
                g = acc(dyb[j])
                tg += g
                tgc += g * c
                tc += c
            sg += tg
            sgc += tgc
            sc += tc
        mg = sg / nf
        centre = sc / nf
        gy = (sgc - centre * sg) / denom  # sum(g * y)
        # d std / d weight has 1 / std: no derivative at std == 0 (a constant channel, c == 0),
        # where that term is taken as 0. A NaN std keeps 1 / std = NaN, as in the reference.
        inv_std = acc(0) if sd == 0 else acc(1) / sd
        k = gy * inv_std / dof
        for j in range(n):
            c = _minus(_minus(acc(xi[j]), mu), centre)
            dxi[j] = _minus(acc(dyi[j]) - mg, c * k) / denom


# The contract's entry points. eps becomes a Python float so that a NumPy scalar eps does not
# compile a second specialisation.


def weight_norm_forward(v, g, w, norm):
    """w, norm <- weight normalization of each row of v with magnitudes g (module docstring)."""
    _wn_forward(v, g, w, norm)


def weight_norm_backward(dw, v, g, norm, dv, dg):
    """dv, dg <- the gradients of weight normalization from the upstream dw (module docstring)."""
    _wn_backward(dw, v, g, norm, dv, dg)


def weight_standardization_forward(weight, eps, w, mean, std):
    """w, mean, std <- weight standardization of each row of weight (module docstring)."""
    _ws_forward(weight, float(eps), w, mean, std)


def weight_standardization_backward(dw, weight, mean, std, eps, dweight):
    """dweight <- the gradient of weight standardization from the upstream dw."""
    _ws_backward(dw, weight, mean, std, float(eps), dweight)
