"""The Numba weight_norm / weight_standardization kernels (normref/kernels/numba/reparam.py),
through the public ops with backend="numba", against the float64 array-API reference.

Every comparison runs the kernel on its own dtype and the reference in float64 on the *same* values
(the float32 inputs cast up), so the difference is the kernel's own rounding only. Errors are
measured against the size of the terms each output is computed from (a gradient can cancel to far
less than its terms), as tests/kernels/test_numba_norms.py does.

Compile count: each of the four kernels compiles once per dtype (float32, float64): every call
hands them C-contiguous arrays, whatever the layout of the user's input.
"""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import normref  # noqa: E402
from normref.kernels.numba import reparam as kernels  # noqa: E402

DTYPES = [np.float32, np.float64]
# Worst error allowed, in units of the output's scale (below). float32 sums run over fan-ins of
# up to ~10^4 values in blocks of 256.
TOL = {np.float64: 1e-12, np.float32: 2e-6}


def _up(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _err(got, want, scale):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), "NaN where the reference has none"
    ok = ~np.isnan(want)
    scale = max(float(np.max(np.abs(want[ok]), initial=0.0)), scale, 1e-300)
    return float(np.max(np.abs(got[ok] - want[ok]), initial=0.0)) / scale


# ---- weight_norm --------------------------------------------------------------------------------


def _wn(g, v, dw, dim, backend):
    w, saved = normref.weight_norm_forward(g, v, dim=dim, backend=backend)
    dg, dv = normref.weight_norm_backward(dw, saved, backend=backend)
    return w, dg, dv, saved


def check_weight_norm(g, v, dw, dim, tol):
    """Numba against the float64 reference; returns the numba outputs (w, dg, dv, saved)."""
    fast = _wn(g, v, dw, dim, "numba")
    w, dg, dv, saved = _wn(_up(g), _up(v), _up(dw), dim, "reference")
    assert fast[0].dtype == v.dtype and fast[2].dtype == v.dtype and fast[1].dtype == g.dtype
    assert fast[0].shape == v.shape and fast[1].shape == g.shape and fast[2].shape == v.shape
    assert fast[0].flags.c_contiguous and fast[2].flags.c_contiguous
    assert fast[3].norm.shape == saved.norm.shape and fast[3].norm.dtype == _acc(v.dtype)
    # dg and dv are sums and differences of terms of size |dw v| / norm and |g dw| / norm
    with np.errstate(invalid="ignore", divide="ignore"):
        dg_scale = np.nanmax(np.sum(np.abs(_up(dw) * _up(v)), axis=saved.axes) / saved.norm.ravel())
        dv_scale = np.nanmax(np.abs(saved.g / saved.norm * _up(dw)))
    errors = {
        "w": _err(fast[0], w, 0.0),
        "dg": _err(fast[1], dg, dg_scale),
        "dv": _err(fast[2], dv, dv_scale),
        "norm": _err(fast[3].norm, saved.norm, 0.0),
    }
    bad = {k: e for k, e in errors.items() if e > tol}
    assert not bad, f"error in units of the scale: {bad} > {tol}"
    return fast


def _acc(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def wn_inputs(shape, dim, dtype, seed, flat_g=False):
    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, 1.5, size=shape).astype(dtype)
    if dim is None:
        g_shape = ()
    elif flat_g:
        g_shape = (shape[dim],)
    else:
        g_shape = tuple(n if i == dim else 1 for i, n in enumerate(shape))
    g = rng.normal(size=g_shape).astype(dtype)  # signed, as the op allows
    dw = rng.normal(size=shape).astype(dtype)
    return g, v, dw


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape",
    [(1, 1), (5, 1), (7, 3), (3, 1023), (17, 1500), (9, 4608), (2, 12289), (6, 5, 3, 3)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_weight_norm_dim0_random_shapes(shape, dtype):
    """dim=0 (one row per output channel): fan-in 1, odd sizes, the conv fan-in 512*3*3 = 4608,
    a fan-in longer than a CUDA block's register-cached row, a 4-D conv weight."""
    g, v, dw = wn_inputs(shape, 0, dtype, seed=sum(shape))
    check_weight_norm(g, v, dw, 0, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape, dim, flat_g",
    [
        ((8, 3, 3), 0, True),  # g given flat, (C_out,)
        ((5,), 0, False),  # 1-D v: every element its own slice, w = g * sign(v)
        ((4, 6, 5), 1, False),  # dim in the middle: v is laid out channel-first (a copy)
        ((3, 7), 1, True),  # the last dim (Flax's layout)
        ((2, 3, 4, 5), 3, False),
        ((6, 11), None, False),  # one norm over the whole tensor, g a scalar
        ((3, 2, 3, 3), None, False),
    ],
)
def test_weight_norm_every_dim_and_g_shape(shape, dim, flat_g, dtype):
    g, v, dw = wn_inputs(shape, dim, dtype, seed=len(shape) * 100 + (dim or 7), flat_g=flat_g)
    check_weight_norm(g, v, dw, dim, TOL[dtype])


def test_weight_norm_non_contiguous_inputs():
    """Strided and transposed inputs: the wrapper copies them to C-contiguous rows."""
    g, v, dw = wn_inputs((12, 4, 10), 0, np.float32, seed=3)
    check_weight_norm(
        g[::2], v[::2, :, ::3], np.asfortranarray(dw[::2, :, ::3]), 0, TOL[np.float32]
    )
    g1 = np.random.default_rng(4).normal(size=(1, 4, 1)).astype(np.float32)
    check_weight_norm(g1, np.swapaxes(v, 0, 2), np.swapaxes(dw, 0, 2), 1, TOL[np.float32])


def test_weight_norm_zero_and_nan_slices_stay_in_their_rows():
    """A zero slice has no direction: NaN w, dg, dv there (the reference's, PyTorch's); a NaN in v
    reaches its own slice only; NaN in dw spreads through dg to its slice's dv."""
    g, v, dw = wn_inputs((6, 9), 0, np.float32, seed=5)
    v[1] = 0
    v[3, 4] = np.nan
    dw[4, 2] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        w, dg, dv, _ = check_weight_norm(g, v, dw, 0, TOL[np.float32])
    for row in (1, 3):
        assert np.isnan(w[row]).all() and np.isnan(dg[row]).all() and np.isnan(dv[row]).all()
    assert np.isfinite(w[4]).all() and np.isnan(dg[4]).all() and np.isnan(dv[4]).all()
    others = [0, 2, 5]
    assert np.isfinite(w[others]).all() and np.isfinite(dv[others]).all()


def test_weight_norm_zero_g_and_huge_scale():
    g, v, dw = wn_inputs((4, 300), 0, np.float32, seed=6)
    g[2] = 0
    v[3] *= np.float32(1e15)  # sum(v^2) ~ 1e34: still below float32's 3.4e38
    w, dg, dv, _ = check_weight_norm(g, v, dw, 0, TOL[np.float32])
    assert np.all(w[2] == 0) and np.all(dv[2] == 0) and np.isfinite(dg[2]).all()


# ---- weight_standardization -----------------------------------------------------------------


def _ws(weight, dw, backend, eps):
    w, saved = normref.weight_standardization_forward(weight, eps=eps, backend=backend)
    (dweight,) = normref.weight_standardization_backward(dw, saved, backend=backend)
    return w, dweight, saved


def check_weight_standardization(weight, dw, tol, eps=1e-5):
    fast = _ws(weight, dw, "numba", eps)
    w, dweight, saved = _ws(_up(weight), _up(dw), "reference", eps)
    assert fast[0].dtype == weight.dtype and fast[1].dtype == weight.dtype
    assert fast[0].shape == weight.shape and fast[1].shape == weight.shape
    assert fast[2].mean.shape == saved.mean.shape and fast[2].std.shape == saved.std.shape
    c, n = weight.shape[0], weight.size // weight.shape[0]
    g = _up(dw).reshape(c, n)
    denom = saved.std + eps
    y = w.reshape(c, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        # dweight = (g - mean(g)) / denom - y * sum(g y) / ((n - 1) std): the terms' sizes
        second = np.abs(y) * np.sum(np.abs(g * y), axis=1, keepdims=True) / ((n - 1) * saved.std)
        first = np.abs(g) / denom
        dweight_scale = np.nanmax(np.where(saved.std > 0, np.maximum(first, second), first))
    errors = {
        "w": _err(fast[0], w, 0.0),
        "dweight": _err(fast[1], dweight, dweight_scale),
        "std": _err(fast[2].std, saved.std, 0.0),
    }
    # The mean's error counts relative to the channel's spread, plus the rounding of storing the
    # mean itself (large for a large offset: why the backward re-centres).
    mean, fast_mean = saved.mean.ravel(), fast[2].mean.ravel().astype(np.float64)
    stored = np.spacing(np.abs(mean).astype(_acc(weight.dtype))).astype(np.float64)
    with np.errstate(invalid="ignore"):
        spread = tol * saved.std.ravel() + stored
        errors["mean"] = np.nanmax(np.abs(fast_mean - mean) / spread) * tol
    bad = {k: e for k, e in errors.items() if e > tol}
    assert not bad, f"error in units of the scale: {bad} > {tol}"
    return fast


def ws_inputs(shape, dtype, seed, offset=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    weight = (offset + scale * rng.normal(size=shape)).astype(dtype)
    dw = rng.normal(size=shape).astype(dtype)
    return weight, dw


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape",
    [(1, 2), (3, 2), (5, 3), (4, 17), (7, 1023), (13, 1500), (6, 4608), (2, 12289), (8, 5, 3, 3)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_weight_standardization_random_shapes(shape, dtype):
    """From the smallest fan-in the op allows (2) to fan-ins longer than a CUDA block's
    register-cached row; a 4-D conv weight flattened per output channel."""
    weight, dw = ws_inputs(shape, dtype, seed=sum(shape) + 1)
    check_weight_standardization(weight, dw, TOL[dtype])


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 1e-12])
def test_weight_standardization_eps(eps):
    weight, dw = ws_inputs((5, 40), np.float64, seed=9, scale=1e-3)  # std ~ eps for eps=1e-3
    check_weight_standardization(weight, dw, TOL[np.float64], eps=eps)


def test_weight_standardization_non_contiguous_input():
    weight, dw = ws_inputs((10, 8, 3, 3), np.float32, seed=10)
    check_weight_standardization(weight[::2, ::2], dw[::2, ::2], TOL[np.float32])
    check_weight_standardization(np.swapaxes(weight, 2, 3), dw, TOL[np.float32])


def test_weight_standardization_large_offset_float32():
    """mean 1e4, std 1e-3 (design.md §6): the shifted forward and the re-centred backward keep
    float32 accuracy, where an unshifted float32 formula loses it (checked, so the case bites)."""
    weight, dw = ws_inputs((6, 1500), np.float32, seed=11, offset=1e4, scale=1e-3)
    check_weight_standardization(weight, dw, TOL[np.float32], eps=1e-10)
    naive_centred = weight - weight.mean(axis=1, keepdims=True, dtype=np.float32)
    w = normref.weight_standardization(_up(weight), eps=1e-10, backend="reference")
    naive = naive_centred / (np.std(naive_centred, axis=1, ddof=1, keepdims=True) + 1e-10)
    assert np.max(np.abs(naive - w)) > 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_weight_standardization_constant_and_nan_channels(dtype):
    """A constant channel gives w = 0 exactly and the finite dweight = (g - mean(g)) / eps; a NaN
    reaches its own channel's w and dweight only."""
    weight, dw = ws_inputs((5, 37), dtype, seed=12)
    weight[1] = dtype(3.25)
    weight[2] = dtype(1e4)
    weight[3, 20] = np.nan
    w, dweight, _ = check_weight_standardization(weight, dw, TOL[dtype])
    assert np.all(w[1] == 0) and np.all(w[2] == 0)
    eps = dtype(1e-5)
    for row in (1, 2):
        g = dw[row].astype(_acc(dtype))
        np.testing.assert_allclose(dweight[row], (g - g.mean()) / eps, rtol=1e-5)
    assert np.isnan(w[3]).all() and np.isnan(dweight[3]).all()
    assert np.isfinite(w[[0, 1, 2, 4]]).all() and np.isfinite(dweight[[0, 1, 2, 4]]).all()


# ---- the kernels themselves ---------------------------------------------------------------


def _kernel_outputs(v, g, dw):
    """Every output of the four contract functions, on fresh buffers."""
    rows = v.shape[0]
    w, dv, y, dx = (np.empty_like(v) for _ in range(4))
    norm, dg, mean, std = (np.empty(rows, v.dtype) for _ in range(4))
    kernels.weight_norm_forward(v, g, w, norm)
    kernels.weight_norm_backward(dw, v, g, norm, dv, dg)
    kernels.weight_standardization_forward(v, 1e-5, y, mean, std)
    kernels.weight_standardization_backward(dw, v, mean, std, 1e-5, dx)
    return w, norm, dv, dg, y, mean, std, dx


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("shape", [(37, 1500), (300, 64), (5, 4608)])
def test_bitwise_identical_with_one_and_two_threads(shape):
    rng = np.random.default_rng(13)
    v = rng.normal(size=shape).astype(np.float32)
    g = rng.normal(size=shape[0]).astype(np.float32)
    dw = rng.normal(size=shape).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _kernel_outputs(v, g, dw)
        numba.set_num_threads(2)
        two = _kernel_outputs(v, g, dw)
        again = _kernel_outputs(v, g, dw)
    finally:
        numba.set_num_threads(before)
    for a, b, c in zip(one, two, again):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_empty_weights_never_reach_a_kernel():
    """No channels (or an empty fan-in for weight_norm): the reference's empty results."""
    v = np.empty((0, 9), np.float32)
    w, saved = normref.weight_norm_forward(np.empty((0, 1), np.float32), v, backend="numba")
    dg, dv = normref.weight_norm_backward(v, saved, backend="numba")
    assert w.shape == dv.shape == (0, 9) and dg.shape == (0, 1)
    w, saved = normref.weight_standardization_forward(v, backend="numba")
    assert w.shape == (0, 9)
