"""bfloat16 NumPy arrays (ml_dtypes' dtype, JAX's) through every op: computed in float32 and
rounded once (normref/_xp.py), so the result is the float32 computation on the same values,
rounded to bfloat16, to the bit."""

from __future__ import annotations

import numpy as np
import pytest

from normref import registry
from normref.golden import load_index

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

CASES = [c for c in load_index() if c.dtype == "float32" and c.index == 0]


def _cast(a, dtype):
    return None if a is None or a.dtype.kind not in "fV" else a.astype(dtype)


def _rounded(values):
    values = values if isinstance(values, (tuple, list)) else (values,)
    return [None if v is None else np.asarray(v).astype(BF16) for v in values]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.op)
def test_bfloat16_is_float32_rounded_once(case):
    arrays = case.arrays()
    hyper = case.hyper  # rms_norm's eps=None is float32's epsilon for both: the compute dtype's
    inputs = [arrays.get(f"input.{n}") for n in case.info.inputs]
    bf16 = [_cast(a, BF16) for a in inputs]
    f32 = [_cast(a, np.float32) for a in bf16]
    dy = arrays["input.dy"].astype(BF16)

    got, pull = registry.vjp(case.op, *bf16, **hyper)
    want, pull32 = registry.vjp(case.op, *f32, **hyper)
    got, want = _rounded(got)[: len(case.outputs)], _rounded(want)[: len(case.outputs)]
    for name, g, w in zip(case.outputs, got, want):
        if g is not None and arrays[f"output.{name}"].dtype.kind == "f":
            assert g.dtype == BF16, name
            np.testing.assert_array_equal(g.astype(np.float32), w.astype(np.float32), name)

    grads = pull(dy)
    grads32 = pull32(dy.astype(np.float32))
    for name, g, w in zip(case.info.differentiable, grads, grads32):
        if g is not None:
            assert g.dtype == BF16, name
            np.testing.assert_array_equal(
                g.astype(np.float32), np.asarray(w).astype(BF16).astype(np.float32), name
            )
