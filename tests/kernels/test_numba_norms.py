"""The Numba LayerNorm / RMSNorm kernels against the float64 array-API reference.

Every comparison runs the kernel on its own dtype and the reference in float64 on the *same* values
(the low-precision inputs cast up), so the difference is the kernel's own rounding only.
"""

import numpy as np
import pytest

try:  # bfloat16 (JAX's NumPy dtype), when installed
    import ml_dtypes
except ImportError:
    ml_dtypes = None

numba = pytest.importorskip("numba")

import normref  # noqa: E402
from normref import _plans  # noqa: E402
from normref.kernels.numba import norms as kernels  # noqa: E402

# Worst error allowed, in units of the largest reference value of that output. The 16-bit formats
# are computed in float32 and rounded once: half an ulp (float16: 2**-11 relative, bfloat16: 2**-8)
# plus float32's error.
TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2.0**-11 + 2e-6}
DTYPES = [np.float32, np.float64, np.float16]
if ml_dtypes is not None:
    TOL[ml_dtypes.bfloat16] = 2.0**-8 + 2e-6
    DTYPES.append(ml_dtypes.bfloat16)
SIZES = [1, 3, 17, 1023, 1500]  # n: 1, small primes, sizes around and off powers of two


def _ln(x, w, b, dy, backend, eps=1e-5):
    y, saved = normref.layer_norm_forward(x, w, b, eps=eps, backend=backend)
    return (y, *normref.layer_norm_backward(dy, saved, backend=backend)), saved.rstd


def _rms(x, w, b, dy, backend, eps=1e-6):
    y, saved = normref.rms_norm_forward(x, w, eps=eps, backend=backend)
    return (y, *normref.rms_norm_backward(dy, saved, backend=backend)), saved.rstd


OPS = {"layer_norm": _ln, "rms_norm": _rms}


@pytest.fixture(autouse=True, params=["short", "streaming"])
def blocking(request, monkeypatch):
    """Every test runs both ways the kernels can run (see the kernel module's docstring): as short
    rows in cache (rows up to _SHORT_ROW long, whatever the problem's size) and streaming. Call
    plans keep the kernel chosen for their calls (normref/_plans.py): none outlives the switch."""
    _plans.clear()
    monkeypatch.setattr(kernels, "_STREAM_BYTES", 0 if request.param == "streaming" else 1 << 62)
    yield request.param
    _plans.clear()


def _up(a):
    return None if a is None else a.astype(np.float64)


def run_both(op, x, w, b, dy, **kw):
    """(numba outputs, float64 reference outputs on the same values, scales): outputs are
    y, dx, dweight[, dbias]; scales the size each output's error is measured against."""
    fast, _ = OPS[op](x, w, b, dy, "numba", **kw)
    ref, rstd = OPS[op](_up(x), _up(w), _up(b), _up(dy), "reference", **kw)
    # dx = rstd * (g - ...) cancels terms of size rstd * |g|: that, not |dx| (which can be ~0, as
    # for RMSNorm rows of one element), is what the kernel's rounding is relative to.
    g = _up(dy) if w is None else _up(dy) * _up(w)
    return fast, ref, [None, np.max(np.abs(rstd * g), initial=0.0)]


def assert_close(fast, ref, tol, scales=(), mask=None):
    names = ["y", "dx", "dweight", "dbias"]
    scales = list(scales) + [None] * 4
    for name, got, want, scale in zip(names, fast, ref, scales):
        if want is None:
            assert got is None, name
            continue
        got = np.asarray(got, dtype=np.float64)
        if mask is not None and got.shape == mask.shape:
            got, want = got[mask], want[mask]
        scale = max(float(np.max(np.abs(want), initial=0.0)), scale or 0.0, 1e-30)
        err = float(np.max(np.abs(got - want), initial=0.0)) / scale
        assert err <= tol, f"{name}: error {err:.3g} x max|ref| > {tol:.1g}"


def make(shape, dtype, weight=True, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    n = shape[-1]
    x = rng.normal(0.5, 2.0, size=shape).astype(dtype)
    w = (1 + 0.5 * rng.normal(size=n)).astype(dtype) if weight else None
    b = rng.normal(size=n).astype(dtype) if bias else None
    dy = rng.normal(size=shape).astype(dtype)  # random, never all ones
    return x, w, b, dy


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows", [1, 3, 17])
@pytest.mark.parametrize("n", SIZES)
def test_random_shapes_match_the_reference(op, dtype, rows, n):
    x, w, b, dy = make((rows, n), dtype, seed=rows * 7919 + n)
    fast, ref, scales = run_both(op, x, w, b, dy)
    assert fast[0].dtype == dtype and fast[1].dtype == dtype
    assert_close(fast, ref, TOL[dtype], scales)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "op, weight, bias",  # RMSNorm has no bias
    [
        (op, w, b)
        for op in OPS
        for w, b in [(False, False), (True, False), (False, True)]
        if op == "layer_norm" or not b
    ],
)
def test_absent_weight_or_bias(op, dtype, weight, bias):
    x, w, b, dy = make((5, 33), dtype, weight, bias, seed=3)
    fast, ref, scales = run_both(op, x, w, b, dy)
    assert_close(fast, ref, TOL[dtype], scales)


@pytest.mark.parametrize("op", OPS)
def test_batched_strided_and_multi_dim_inputs(op):
    x, w, _, dy = make((4, 3, 40), np.float32, seed=5)
    x = x[:, :, ::2]  # non-contiguous: the wrapper copies, the kernel sees C order
    dy = np.ascontiguousarray(dy[:, :, ::2])
    w = np.ones((3, 20), np.float32) + 0.1 * np.arange(60, dtype=np.float32).reshape(3, 20)
    fast, ref, scales = run_both(op, x, w, None, dy)
    assert fast[0].shape == x.shape and fast[2].shape == w.shape
    assert_close(fast, ref, TOL[np.float32], scales)


@pytest.mark.parametrize("op", OPS)
def test_a_row_of_a_million_elements(op):
    x, w, b, dy = make((1, 1_000_000), np.float32, seed=7)
    fast, ref, scales = run_both(op, x, w, b, dy)
    assert_close(fast, ref, 1e-5, scales)


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_large_offset_float32_layer_norm(eps):
    # mean 1e4, std 1e-3: float32's spacing at 1e4 is ~1e-3, so a naive E[x^2] - E[x]^2 or an
    # unshifted sum loses everything; the shifted two-pass forward and re-centred backward do not.
    rng = np.random.default_rng(11)
    x = (1e4 + 1e-3 * rng.normal(size=(8, 1500))).astype(np.float32)
    w = (1 + 0.5 * rng.normal(size=1500)).astype(np.float32)
    b = rng.normal(size=1500).astype(np.float32)
    dy = rng.normal(size=(8, 1500)).astype(np.float32)
    fast, ref, scales = run_both("layer_norm", x, w, b, dy, eps=eps)
    assert_close(fast, ref, 1e-5, scales)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_values_float32_rms_norm(dtype):
    x, w, _, dy = make((6, 1023), dtype, seed=13)
    fast, ref, scales = run_both("rms_norm", x * dtype(1e4) + dtype(3e4), w, None, dy)
    assert_close(fast, ref, TOL[dtype], scales)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight, bias", [(True, True), (False, False)])
def test_constant_rows_normalize_to_exactly_zero(dtype, weight, bias):
    x, w, b, dy = make((4, 1500), dtype, weight, bias, seed=17)
    x[1] = dtype(3.7)
    x[2] = dtype(1e4)
    y, saved = normref.layer_norm_forward(x, w, b, backend="numba")
    expected = b if bias else np.zeros(1500, dtype)
    assert np.array_equal(y[1], expected) and np.array_equal(y[2], expected)
    fast, ref, scales = run_both("layer_norm", x, w, b, dy)
    assert all(np.all(np.isfinite(a)) for a in fast if a is not None)
    assert_close(fast, ref, TOL[dtype], scales)


def test_zero_rows_rms_norm_give_zero():
    x, w, _, dy = make((3, 17), np.float32, seed=19)
    x[0] = 0
    fast, ref, scales = run_both("rms_norm", x, w, None, dy)
    assert np.array_equal(fast[0][0], np.zeros(17, np.float32))
    assert_close(fast, ref, TOL[np.float32], scales)


@pytest.mark.parametrize("op", OPS)
def test_nan_in_x_stays_in_its_row(op):
    x, w, b, dy = make((5, 17), np.float32, bias=op == "layer_norm", seed=23)
    x[2, 6] = np.nan
    fast, ref, scales = run_both(op, x, w, b, dy)
    y, dx, dw = fast[:3]
    assert np.all(np.isnan(y[2])) and np.all(np.isnan(dx[2]))
    others = np.arange(5) != 2
    assert np.all(np.isfinite(y[others])) and np.all(np.isfinite(dx[others]))
    assert np.all(np.isnan(dw))  # every column's sum takes row 2's x_hat
    if op == "layer_norm":
        assert np.all(np.isfinite(fast[3]))  # dbias = sum(dy) does not see x
    mask = np.broadcast_to(others[:, None], x.shape)
    assert_close(fast[:2], ref[:2], TOL[np.float32], mask=mask)


@pytest.mark.parametrize("op", OPS)
def test_nan_in_dy_stays_in_its_row_and_column(op):
    x, w, b, dy = make((5, 17), np.float32, bias=op == "layer_norm", seed=29)
    dy[3, 4] = np.nan
    dx, dw = OPS[op](x, w, b, dy, "numba")[0][1:3]
    assert np.all(np.isnan(dx[3])) and np.all(np.isfinite(np.delete(dx, 3, axis=0)))
    assert np.isnan(dw[4]) and np.all(np.isfinite(np.delete(dw, 4)))


def _kernel_outputs(op, x, w, b, dy):
    """Every output of the raw kernels (docs/contracts.md, Kernel contract) on fresh buffers."""
    rows, n = x.shape
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, rstd = np.empty(rows, x.dtype), np.empty(rows, x.dtype)
    dw = np.empty(n, x.dtype)
    if op == "layer_norm":
        db = np.empty(n, x.dtype)
        kernels.layer_norm_forward(x, w, b, 1e-5, y, mean, rstd)
        kernels.layer_norm_backward(dy, x, mean, rstd, w, dx, dw, db)
        return y, mean, rstd, dx, dw, db
    kernels.rms_norm_forward(x, w, 1e-6, y, rstd)
    kernels.rms_norm_backward(dy, x, rstd, w, dx, dw)
    return y, rstd, dx, dw


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(37, 1500), (300, 1000), (5, 1023)])  # 2, 16, 1 row chunks
def test_bitwise_identical_with_one_and_two_threads(op, shape):
    x, w, b, dy = make(shape, np.float32, seed=31)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _kernel_outputs(op, x, w, b, dy)
        numba.set_num_threads(2)
        two = _kernel_outputs(op, x, w, b, dy)
        again = _kernel_outputs(op, x, w, b, dy)
    finally:
        numba.set_num_threads(before)
    for a, c, d in zip(one, two, again):
        assert a.tobytes() == c.tobytes() == d.tobytes()


def test_no_rows_gives_zero_parameter_gradients():
    x = np.empty((0, 7), np.float32)
    w = np.ones(7, np.float32)
    stat = np.empty(0, np.float32)
    dw, db = np.full(7, np.nan, np.float32), np.full(7, np.nan, np.float32)
    kernels.layer_norm_backward(x, x, stat, stat, w, x, dw, db)
    assert np.array_equal(dw, np.zeros(7)) and np.array_equal(db, np.zeros(7))
    kernels.rms_norm_backward(x, x, stat, w, x, dw)
    assert np.array_equal(dw, np.zeros(7))


def test_rows_of_no_elements_have_nan_statistics():
    x = np.empty((3, 0), np.float32)
    mean, rstd = np.zeros(3, np.float32), np.zeros(3, np.float32)
    kernels.layer_norm_forward(x, None, None, 1e-5, x, mean, rstd)
    assert np.all(np.isnan(mean)) and np.all(np.isnan(rstd))


def test_calls_run_the_kernel_the_fixture_asks_for(blocking):
    """A call's plan keeps its kernel: the one _short chose when the plan was made."""
    from normref.norms import layer_norm

    normref.layer_norm(np.ones((4, 8), np.float32), backend="numba")
    want = kernels._ln_forward if blocking == "streaming" else kernels._ln_forward_short
    assert kernels.entry("layer_norm_forward", 4, 8, np.float32) is want
    assert [plan.kernel for plan in layer_norm._FORWARD_PLANS._plans.values()] == [want]
