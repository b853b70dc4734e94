"""Software prefetch for the Numba kernels: `prefetch_block(a, i, b, block, write)` asks for the
cache lines of a[i, b : b + block] of a 2-D array.

A kernel whose rows are read from memory once and then worked on from cache leaves the memory bus
idle during its cache-resident passes; prefetches of the next row, issued a block at a time inside
those passes, overlap its memory traffic with that arithmetic (LayerNorm at (8192, 1024): 0.6 ->
0.9 of the bandwidth floor). A block at a time, not a row at once: a burst of hundreds of
prefetches waits for fill buffers like loads do. They are hints only and never change a result.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from normref._buffers import LINE

__all__ = ["LINE", "prefetch_block"]


def _make_prefetch(write):
    """An intrinsic `prefetch(a, i, j)`: LLVM's prefetch of a[i, j]'s cache line into L1, for
    reading or (write=True, x86 PREFETCHW) for writing. It takes the 2-D array and a row index, not
    a row view, so that a kernel makes no view of a row it only prefetches."""

    @intrinsic
    def prefetch(typingctx, a, i, j):
        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(
                context, builder, aryty, ary, [args[1], args[2]], wraparound=False
            )
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            # The i8* form: native before LLVM 15's opaque pointers, auto-upgraded after.
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            # (address, rw, locality 3 = keep in all cache levels, cache type 1 = data)
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(int(write)), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(a, i, j), codegen

    return prefetch


_prefetch = _make_prefetch(write=False)
_prefetch_w = _make_prefetch(write=True)


@njit(cache=True)
def prefetch_block(a, i, b, block, write):
    """Prefetch the cache lines of a[i, b : b + block], for writing when `write`."""
    step = max(1, LINE // a.itemsize)
    for p in range(b, min(b + block, a.shape[1]), step):
        if write:
            _prefetch_w(a, i, p)
        else:
            _prefetch(a, i, p)
