"""Exact conversions between float32 and the 16-bit float formats, for Numba kernels over 16-bit
arrays viewed as uint16 (Numba has no float16 type on the CPU): `f16_to_f32`, `f32_to_f16`,
`bf16_to_f32`, `f32_to_bf16`; and `load(a, at)` / `store(a, at, value)` / `zero(a)`, which read
and write an element of a float array or of a 16-bit array's bits (`as_bits`: float16 as uint16,
bfloat16 as int16), and give a zero, in the accumulation dtype (float32 for the 16-bit formats);
`holds_floats(a)` tells the two kinds of array apart.

Every float16 and bfloat16 value is a float32, so widening is exact; narrowing rounds to nearest
even, as NumPy's astype, ml_dtypes and the GPU do. float16 goes through the CPU's own conversion
instructions where LLVM has them (x86 F16C, every aarch64): LLVM's fpext/fptrunc to `half`, which
vectorize (10M values in 3 ms). Elsewhere, and always for bfloat16, the conversions are done on
the bits, branch by branch (exact, but scalar). Both give the same bits for every value: a test
runs both over all 65,536 float16 values and float32 values around every rounding tie.
"""

from __future__ import annotations

import platform

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = [
    "as_bits",
    "zero",
    "HARDWARE_F16",
    "bf16_to_f32",
    "holds_floats",
    "f16_to_f32",
    "f32_to_bf16",
    "f32_to_f16",
    "load",
    "store",
]


def _has_hardware_f16() -> bool:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    return machine in ("x86_64", "amd64") and bool(llvm.get_host_cpu_features().get("f16c"))


# Whether f16_to_f32 / f32_to_f16 use the CPU's instructions (decided once, for this machine; the
# kernels compiled with it are cached per machine by Numba).
HARDWARE_F16 = _has_hardware_f16()


@intrinsic
def _f16_to_f32_hw(typingctx, bits):
    """binary16 bits -> float32 by LLVM's fpext (x86: VCVTPH2PS)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _f32_to_f16_hw(typingctx, value):
    """float32 -> binary16 bits by LLVM's fptrunc, rounding to nearest even (x86: VCVTPS2PH)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE bits of a float32 as an int64 in [0, 2**32): int64, since Numba types a mix of
    signed and unsigned 64-bit integers as float64."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, u):
    """The float32 whose IEEE bits are the low 32 bits of the int64 `u`."""
    if u != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return types.float32(types.int64), codegen


@njit(cache=True)
def _f16_to_f32_bits(h):
    """binary16 bits -> float32, exact (every float16 is a float32)."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0x1F:  # inf, or NaN with its payload
        return _bits_f32(sign | 0x7F800000 | (mantissa << 13))
    if exponent == 0:  # zero or subnormal: mantissa * 2**-24, exact in float32
        magnitude = np.float32(mantissa) * np.float32(2.0**-24)
        return -magnitude if sign else magnitude
    return _bits_f32(sign | ((exponent + 112) << 23) | (mantissa << 13))


@njit(cache=True)
def _f32_to_f16_bits(f):
    """float32 -> binary16 bits, rounded to nearest even (as NumPy's astype and the GPU's)."""
    u = _f32_bits(f)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a > 0x7F800000:  # NaN: stays NaN, quiet, with the top of its payload
        return np.uint16(sign | 0x7E00 | ((a >> 13) & 0x3FF))
    if a >= 0x477FF000:  # >= 65520 (halfway past 65504, ties to even) and inf: inf
        return np.uint16(sign | 0x7C00)
    if a < 0x38800000:  # below 2**-14: a subnormal half, m * 2**-24
        if a <= 0x33000000:  # <= 2**-25: rounds to zero (2**-25 itself ties to even 0)
            return np.uint16(sign)
        mantissa = (a & 0x7FFFFF) | 0x800000  # the value is mantissa * 2**(exponent - 150)
        shift = 126 - (a >> 23)
        m = mantissa >> shift
        rest = mantissa & ((1 << shift) - 1)
        half_way = 1 << (shift - 1)
        if rest > half_way or (rest == half_way and (m & 1) == 1):
            m += 1  # may carry into the smallest normal, which is then right
        return np.uint16(sign | m)
    # normal: rebias the exponent (127 -> 15), keep 10 mantissa bits, round the 13 dropped ones
    # to nearest even; a carry out of the mantissa bumps the exponent, correctly
    h = (a >> 13) - (112 << 10)
    rest = a & 0x1FFF
    if rest > 0x1000 or (rest == 0x1000 and (h & 1) == 1):
        h += 1
    return np.uint16(sign | h)


@njit(cache=True)
def bf16_to_f32(b):
    """bfloat16 bits -> float32, exact: bfloat16 is the top half of a float32."""
    return _bits_f32(np.int64(b) << 16)


@njit(cache=True)
def f32_to_bf16(f):
    """float32 -> bfloat16 bits, rounded to nearest even (as ml_dtypes and torch)."""
    u = _f32_bits(f)
    if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep it NaN (quiet), whatever its low payload
        return np.uint16((u >> 16) | 0x40)
    # adding 0x7fff, plus 1 when the kept part is odd, carries exactly when the dropped half is
    # above one half, or one half with an odd kept part; overflow correctly gives inf
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


def as_bits(a):
    """An array as the kernels take it (Python, for the kernels' entry points): float16 as a uint16
    view of its bits, bfloat16 (ml_dtypes') as an int16 view, any other as it is. The two 16-bit
    formats get two integer types so that `load` and `store`, compiled per storage type, know which
    one they convert. (`dtype.name` builds a string, 1.4 us a call, as long as a small kernel's
    arithmetic: the common dtypes are told apart without it.)"""
    dtype = a.dtype
    if dtype.kind == "f":  # NumPy's floats (float16 is the one of two bytes)
        return a.view(np.uint16) if dtype.itemsize == 2 else a
    if dtype.name == "bfloat16":  # ml_dtypes' extension dtype, of kind "V"
        return a.view(np.int16)
    return a


f16_to_f32 = _f16_to_f32_hw if HARDWARE_F16 else _f16_to_f32_bits
f32_to_f16 = _f32_to_f16_hw if HARDWARE_F16 else _f32_to_f16_bits


# load(a, at) -> a[at] in the accumulation dtype; store(a, at, value): a[at] = value rounded to a's
# storage. Overloaded on a's dtype (float arrays as they are, uint16 as float16 bits, int16 as
# bfloat16 bits), and inlined at Numba IR level: a call that takes an array costs a reference-count
# update per element.


def load(a, at):  # pragma: no cover - replaced by the overload inside compiled code
    raise NotImplementedError


def store(a, at, value):  # pragma: no cover
    raise NotImplementedError


def zero(a):  # pragma: no cover
    raise NotImplementedError


def holds_floats(a):  # pragma: no cover
    raise NotImplementedError


@overload(load, inline="always")
def _load_impl(a, at):
    if isinstance(a.dtype, types.Float):
        return lambda a, at: a[at]
    if a.dtype == types.uint16:
        return lambda a, at: f16_to_f32(a[at])
    if a.dtype == types.int16:
        return lambda a, at: bf16_to_f32(np.uint16(a[at]))
    return None


@overload(store, inline="always")
def _store_impl(a, at, value):
    if isinstance(a.dtype, types.Float):

        def store_float(a, at, value):
            a[at] = value

        return store_float
    if a.dtype == types.uint16:

        def store_bits(a, at, value):
            a[at] = f32_to_f16(value)

        return store_bits
    if a.dtype == types.int16:

        def store_bfloat16_bits(a, at, value):
            a[at] = np.int16(f32_to_bf16(value))

        return store_bfloat16_bits
    return None


@overload(zero, inline="always")
def _zero_impl(a):
    """0 in the accumulation dtype of `a`'s elements: a's own float dtype, float32 for the 16-bit
    formats."""
    if isinstance(a.dtype, types.Float):
        return lambda a: a.dtype.type(0)
    if a.dtype in (types.uint16, types.int16):
        return lambda a: np.float32(0)
    return None


@overload(holds_floats, inline="always")
def _holds_floats_impl(a):
    """Whether `a` stores values as they are computed (a float array), not as 16-bit bits that
    `store` rounds: a constant of the array's type, which LLVM folds away."""
    floats = isinstance(a.dtype, types.Float)
    return lambda a: floats
