"""Fused Numba CPU kernels for the in-place optimizer updates: SGD, Adam/AdamW and Lion.

`Optimizer.update_` (normref/optim/base.py) finds this module through the registry entry's
`kernels` and calls, once per parameter, after every check has passed::

    sgd_update_(p, g, momentum_buffer, k)     # momentum_buffer: None when momentum is 0
    adam_update_(p, g, mu, nu, nu_max, k)     # adam and adamw; nu_max: None without amsgrad
    lion_update_(p, g, mu, k)

`k` is the optimizer's per-step coefficients NamedTuple (Python floats and flags, the very object
the reference `_math` reads). Each kernel is one pass over memory: it reads p, g and the state once
and writes p and the state once, in place (params in, params out). On 10M float32 params an AdamW
step runs at ~89% of a streaming kernel moving the same 28 bytes per element (benchmarks/optim.py).

Exactness, and why there is no fastmath here: each kernel computes the reference `_math`'s
per-element expression in the same operation order, in the accumulation dtype (float32 for
float32 and 16-bit params), with every coefficient rounded once to that dtype, which is what
NumPy does with a Python float operand (NEP 50). Without fastmath LLVM neither reassociates nor
contracts `a * b + c` into a fused multiply-add, and np.sqrt and `/` are IEEE-rounded on both
sides, so the results are bitwise the reference's (NaN payloads aside). These loops are
memory-bound: fastmath would buy no speed, only different bits.

16-bit params (float16, and bfloat16 as ml_dtypes defines it): as in the reference (base.py
`_one`), the 16-bit param itself is the master copy: it is widened to float32 (exactly), updated
against the float32 state, and rounded once to its dtype, to nearest even. No float32 master
param is kept, so the kernels' numbers and the state's format are the reference's. Numba has no
float16 type, so 16-bit arrays are viewed as uint16 and converted exactly by _half.py.

Loops and compile count: each optimizer has one per-element function (`_adam_at`, inlined at
Numba IR level: a call taking arrays would cost a reference-count update per element) and two
loops over it, parallel (prange) for tensors of PARALLEL_MIN elements or more, serial below.
Each loop compiles for two storage types only (float32, uint16 = 16-bit bits): the options
(maximize, weight decay, amsgrad, nesterov, the first SGD step, float16 or bfloat16) are
run-time values, and absent state (no momentum buffer, no nu_max) is a 0-length array, not None,
which would be another specialisation. Their branches are loop-invariant and perfectly predicted.

Layouts: the kernels run over 1-D views of C-contiguous, aligned, native-byte-order arrays. Any
other array (a strided view, Fortran order, ...) is handled, not refused: it is copied to such an
array, updated there, and copied back, which gives the same numbers at the cost of extra passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from normref.kernels.numba._half import bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16

__all__ = ["sgd_update_", "adam_update_", "lion_update_"]

# How a 16-bit storage element (uint16 bits) is converted: a run-time argument of the kernels.
_FLOAT16, _BFLOAT16 = 0, 1
_ABSENT = np.empty(0, np.float32)  # stands in for absent state: one specialisation, not two


# Below this many elements a tensor is updated by one thread: waking the pool costs more than it
# saves (microseconds when idle, milliseconds on a loaded machine), and a model has many small
# tensors (biases, norm weights).
PARALLEL_MIN = 1 << 14


def _parallel(fn):
    # cache: CI compiles once per machine; parallel: elementwise, so any split of the iterations
    # gives the same bits; no fastmath (module docstring).
    return njit(cache=True, parallel=True)(fn)


def _serial(fn):
    return njit(cache=True)(fn)


@njit(cache=True)
def _widen(bits, half):
    return bf16_to_f32(bits) if half == _BFLOAT16 else f16_to_f32(bits)


@njit(cache=True)
def _narrow(value, half):
    return f32_to_bf16(value) if half == _BFLOAT16 else f32_to_f16(value)


# _load(x, at, half) -> x[at] in the accumulation dtype; _store(x, at, value, half): x[at] = value
# rounded to x's storage. Overloaded on x's dtype: each loop is compiled once per storage type,
# with no conversion at all for float arrays.


def _load(x, at, half):  # pragma: no cover - replaced by the overload inside compiled code
    raise NotImplementedError


def _store(x, at, value, half):  # pragma: no cover
    raise NotImplementedError


# Inlined into the loops at Numba IR level: a call that takes an array costs a reference-count
# update per element (10x slower). Branch-free bodies: Numba's parfor pass refuses an inlined
# conditional expression here ("Overwrite of parallel loop index").


@overload(_load, inline="always")
def _load_impl(x, at, half):
    if isinstance(x.dtype, types.Float):
        return lambda x, at, half: x[at]
    if x.dtype == types.uint16:
        return lambda x, at, half: _widen(x[at], half)
    return None


@overload(_store, inline="always")
def _store_impl(x, at, value, half):
    if isinstance(x.dtype, types.Float):

        def store_float(x, at, value, half):
            x[at] = value

        return store_float
    if x.dtype == types.uint16:

        def store_bits(x, at, value, half):
            x[at] = _narrow(value, half)

        return store_bits
    return None


# ---- the kernels: each the reference `_math` of its optimizer, element by element ---------------
# `_<opt>_at(i, ..., half, k)` updates element i, k being the tuple of scalars its entry point
# builds; `_<opt>_parallel` and `_<opt>_serial` loop it over every element (separate functions,
# not one compiled twice: Numba's cache is keyed by function).


@njit(cache=True, inline="always")
def _sgd_at(i, p, g, buf, half, k):
    # normref/optim/sgd.py SGD._math
    maximize, decay, weight_decay, momentum_on, first, momentum, one_minus_dampening = k[:7]
    nesterov, lr = k[7:]
    pi = _load(p, i, half)
    gi = _load(g, i, half)
    if maximize:
        gi = -gi
    if decay:
        gi = gi + weight_decay * pi
    if momentum_on:  # a buffer exists and momentum != 0 this step
        b = gi if first else buf[i] * momentum + one_minus_dampening * gi
        buf[i] = b
        gi = gi + momentum * b if nesterov else b
    _store(p, i, pi - lr * gi, half)


@njit(cache=True, inline="always")
def _adam_at(i, p, g, mu, nu, nu_max, half, k):
    # normref/optim/adam.py Adam._math; decay_mode 0: none, 1: decoupled, 2: L2
    maximize, decay_mode, weight_decay, decay, lerp_low, weight, one_minus_weight = k[:7]
    b2, one_minus_b2, amsgrad, bc2_sqrt, eps, neg_step_size = k[7:]
    pi = _load(p, i, half)
    gi = _load(g, i, half)
    if maximize:
        gi = -gi
    if decay_mode == 1:
        pi = pi * decay
    elif decay_mode == 2:
        gi = gi + weight_decay * pi
    m = mu[i]
    # adam._lerp(mu, g, weight = 1 - b1) in PyTorch's two forms (lerp_low: weight < 0.5);
    # one_minus_weight is 1 - (1 - b1) computed in double, as the reference computes it
    m = m + weight * (gi - m) if lerp_low else gi - (gi - m) * one_minus_weight
    v = nu[i] * b2 + one_minus_b2 * gi * gi
    mu[i] = m
    nu[i] = v
    if amsgrad:
        v_max = nu_max[i]
        if v > v_max or v != v:  # np.maximum: NaN when either is NaN
            v_max = v
        nu_max[i] = v_max
        v = v_max
    denom = np.sqrt(v) / bc2_sqrt + eps
    _store(p, i, pi + neg_step_size * m / denom, half)


@njit(cache=True, inline="always")
def _lion_at(i, p, g, mu, half, k):
    # normref/optim/lion.py Lion._math
    b1, one_minus_b1, decay, weight_decay, lr, b2, one_minus_b2 = k
    acc = mu.dtype.type
    pi = _load(p, i, half)
    gi = _load(g, i, half)
    m = mu[i]
    c = b1 * m + one_minus_b1 * gi
    # np.sign: 1, -1, +0 for either zero, NaN for NaN
    if c > 0:
        u = acc(1)
    elif c < 0:
        u = acc(-1)
    elif c == 0:
        u = acc(0)
    else:
        u = c
    if decay:
        u = u + weight_decay * pi
    _store(p, i, pi - lr * u, half)
    mu[i] = b2 * m + one_minus_b2 * gi


@_parallel
def _sgd_parallel(p, g, buf, half, k):
    for i in prange(p.shape[0]):
        _sgd_at(i, p, g, buf, half, k)


@_serial
def _sgd_serial(p, g, buf, half, k):
    for i in range(p.shape[0]):
        _sgd_at(i, p, g, buf, half, k)


@_parallel
def _adam_parallel(p, g, mu, nu, nu_max, half, k):
    for i in prange(p.shape[0]):
        _adam_at(i, p, g, mu, nu, nu_max, half, k)


@_serial
def _adam_serial(p, g, mu, nu, nu_max, half, k):
    for i in range(p.shape[0]):
        _adam_at(i, p, g, mu, nu, nu_max, half, k)


@_parallel
def _lion_parallel(p, g, mu, half, k):
    for i in prange(p.shape[0]):
        _lion_at(i, p, g, mu, half, k)


@_serial
def _lion_serial(p, g, mu, half, k):
    for i in range(p.shape[0]):
        _lion_at(i, p, g, mu, half, k)


_LOOPS = {
    "sgd": (_sgd_serial, _sgd_parallel),
    "adam": (_adam_serial, _adam_parallel),
    "lion": (_lion_serial, _lion_parallel),
}


# ---- the entry points: Optimizer.update_ calls these ---------------------------------------------


_FLOAT16_DTYPE, _FLOAT64_DTYPE = np.dtype(np.float16), np.dtype(np.float64)


def _flat(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """(a as a 1-D array the loops can index, whether that is a copy). A view when `a` is
    C-contiguous, aligned and native-endian; else a C-ordered copy, the only layout compiled."""
    flags = a.flags
    if flags.c_contiguous and flags.aligned and a.dtype.isnative:
        return a.reshape(-1), False
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")).reshape(-1), True


def _acc(p: Any) -> type:
    """The accumulation dtype's scalar type: each coefficient is rounded to it once, as NumPy
    rounds a Python float operand of a float32 array (NEP 50)."""
    return np.float64 if p.dtype == _FLOAT64_DTYPE else np.float32


def _run(name: str, p: Any, g: Any, slots: tuple[Any, ...], scalars: tuple[Any, ...]) -> None:
    """`name`'s loop over (p, g, *slots, half, scalars): flat arrays, 16-bit ones as their uint16
    bits, absent slots as `_ABSENT`. A param or slot that had to be copied (`_flat`) is written
    back, so the update stays in place. (Lean: it runs once per tensor per step.)"""
    n, acc = p.size, np.dtype(_acc(p))
    flat_p, p_copied = _flat(p)
    flat_g, _ = _flat(g)
    dtype = flat_p.dtype  # native byte order, as flat_g's
    if flat_g.size != n or flat_g.dtype != dtype:  # the loops index g with p's indices
        raise ValueError(f"grad: expected {n} {dtype} values, got {flat_g.size} {flat_g.dtype}")
    arrays, copies = [], [(p, flat_p)] if p_copied else []
    for s in slots:
        if s is None:
            arrays.append(_ABSENT)
            continue
        flat, copied = _flat(s)
        if flat.size != n or flat.dtype != acc:  # ... and every state array
            raise ValueError(f"state: expected {n} {acc} values, got {flat.size} {flat.dtype}")
        arrays.append(flat)
        if copied:
            copies.append((s, flat))
    half = _FLOAT16  # read for 16-bit params only
    if dtype.itemsize == 2:  # float16, bfloat16: the loops convert the bits themselves
        half = _FLOAT16 if dtype == _FLOAT16_DTYPE else _BFLOAT16
        flat_p, flat_g = flat_p.view(np.uint16), flat_g.view(np.uint16)
    _LOOPS[name][n >= PARALLEL_MIN](flat_p, flat_g, *arrays, half, scalars)
    for a, flat in copies:
        a[...] = flat.reshape(a.shape)


def sgd_update_(p, g, momentum_buffer, k) -> None:
    """One SGD step of one parameter in place (normref/optim/sgd.py; k: its _Coefficients)."""
    acc = _acc(p)
    momentum_on = momentum_buffer is not None and k.momentum != 0
    scalars = (k.maximize, k.weight_decay != 0, acc(k.weight_decay), momentum_on, k.first)
    scalars += (acc(k.momentum), acc(k.one_minus_dampening), k.nesterov, acc(k.lr))
    _run("sgd", p, g, (momentum_buffer,), scalars)


def adam_update_(p, g, mu, nu, nu_max, k) -> None:
    """One Adam / AdamW step of one parameter in place (normref/optim/adam.py; k: its
    _Coefficients). nu_max: the amsgrad running max, or None."""
    acc = _acc(p)
    decay_mode = 0 if k.weight_decay == 0 else (1 if k.decoupled else 2)
    w = k.one_minus_b1  # adam._lerp's weight: its form and 1 - w, in double, as there
    scalars = (k.maximize, decay_mode, acc(k.weight_decay), acc(k.decay))
    scalars += (abs(w) < 0.5, acc(w), acc(1 - w), acc(k.b2), acc(k.one_minus_b2))
    scalars += (nu_max is not None, acc(k.bc2_sqrt), acc(k.eps), acc(-k.step_size))
    _run("adam", p, g, (mu, nu, nu_max), scalars)


def lion_update_(p, g, mu, k) -> None:
    """One Lion step of one parameter in place (normref/optim/lion.py; k: its _Coefficients)."""
    acc = _acc(p)
    scalars = (acc(k.b1), acc(k.one_minus_b1), k.weight_decay != 0, acc(k.weight_decay))
    scalars += (acc(k.lr), acc(k.b2), acc(k.one_minus_b2))
    _run("lion", p, g, (mu,), scalars)
