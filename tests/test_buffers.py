"""The output-buffer reuse of the NumPy fast paths (normref/_buffers.py): memory comes back only
after every array that can reach it has died, within the free list's limits."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import normref
from normref import _buffers

BIG = (512, 1024)  # 2 MiB of float32: above MIN_BYTES


@pytest.fixture(autouse=True)
def empty_free_list():
    _buffers.release()
    yield
    _buffers.release()


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_dropped_memory_is_reused_for_the_next_request_of_its_size():
    a = _buffers.empty(BIG, np.float32)
    where = _address(a)
    del a
    b = _buffers.empty((1024, 512), np.float32)  # same bytes, another shape
    assert _address(b) == where and b.shape == (1024, 512) and b.dtype == np.float32
    assert b.flags.c_contiguous and b.flags.writeable


def test_fresh_memory_starts_on_a_cache_line():
    arrays = [_buffers.empty(BIG, np.float32) for _ in range(3)]  # kept: each one fresh
    assert len({_address(a) for a in arrays}) == 3
    assert all(_address(a) % 64 == 0 for a in arrays)


def test_an_extension_dtype_keeps_its_dtype_and_its_memory():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = _buffers.empty(BIG, ml_dtypes.bfloat16)  # the array interface alone gives '|V2'
    assert a.dtype == np.dtype(ml_dtypes.bfloat16) and a.shape == BIG
    where = _address(a)
    a[...] = 1.5
    tail = a[3:]
    del a
    gc.collect()
    assert _address(_buffers.empty(BIG, np.float16)) != where  # `tail` still reaches the memory
    assert np.all(tail.astype(np.float32) == 1.5)
    del tail
    assert _address(_buffers.empty(BIG, np.float16)) == where


def test_memory_a_view_still_reaches_is_never_handed_out():
    a = _buffers.empty(BIG, np.float32)
    a[...] = 1.0
    tail = a.reshape(-1)[7:]  # a view of a view: keeps the memory alive without `a`
    del a
    gc.collect()
    b = _buffers.empty(BIG, np.float32)
    b[...] = 2.0
    assert np.all(tail == 1.0)
    assert not np.shares_memory(b, tail)


def test_small_arrays_and_the_limits():
    small = _buffers.empty((4, 4), np.float32)
    assert small.base is None  # a plain array, not from the free list
    nbytes = 4 * BIG[0] * BIG[1]
    arrays = [_buffers.empty(BIG, np.float32) for _ in range(_buffers.FREE_PER_SIZE + 2)]
    del arrays
    assert len(_buffers._free[nbytes]) == _buffers.FREE_PER_SIZE  # the rest were released
    assert _buffers._free_bytes == _buffers.FREE_PER_SIZE * nbytes
    _buffers.release()
    assert _buffers._free_bytes == 0 and not any(_buffers._free.values())


def test_layer_norm_outputs_reuse_memory_only_once_dropped():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(BIG).astype(np.float32)
    y1 = normref.layer_norm(x)
    expected = y1.copy()
    y2 = normref.layer_norm(2 * x)  # y1 is alive: new memory
    assert not np.shares_memory(y1, y2)
    where = _address(y1)
    del y1
    y3 = normref.layer_norm(x)  # y1's memory, rewritten in full
    assert _address(y3) == where
    np.testing.assert_array_equal(y3, expected)
