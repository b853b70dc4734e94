"""The Numba BatchNorm / GroupNorm kernels (normref/kernels/numba/channel_norms.py), through the
public ops with backend="numba", against the float64 array-API reference.

Every comparison runs the kernel on its own dtype and the reference in float64 on the *same* values
(the float32 inputs cast up), so the difference is the kernel's own rounding only. Errors are
measured against the size of the terms each output sums (`_scales`), not only against the output's
own size: a parameter gradient over N * S values can cancel to far less than its terms.
"""

import numpy as np
import pytest

try:  # bfloat16 (JAX's NumPy dtype), when installed
    import ml_dtypes
except ImportError:
    ml_dtypes = None

numba = pytest.importorskip("numba")

import normref  # noqa: E402
from normref.kernels.numba import channel_norms as kernels  # noqa: E402

# The 16-bit formats are computed in float32 and rounded once: half an ulp of each output (float16:
# 2**-11 relative, bfloat16: 2**-8), plus float32's error. Their mean and rstd are float32 (the
# accumulation dtype), well inside.
TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2.0**-11 + 2e-6}
DTYPES = [np.float32, np.float64, np.float16]
if ml_dtypes is not None:
    TOL[ml_dtypes.bfloat16] = 2.0**-8 + 2e-6
    DTYPES.append(ml_dtypes.bfloat16)

# (shape, groups). BatchNorm's plane layout: N = 1 with a plane longer than a unit (cut into
# segments); odd sizes; short planes grouped 27 samples to a unit (8192 // 300), so 33 samples
# make two units per channel. Its column layout (planes under 200 values): (N, C); C = 1; three
# spatial dims; odd sizes; 600 samples in three blocks of at most 256.
SHAPES = [
    ((1, 4, 9001), 2),
    ((5, 6, 13, 19), 6),
    ((33, 5, 300), 5),
    ((37, 6), 3),
    ((3, 1, 7, 5), 1),
    ((2, 4, 3, 2, 3), 1),
    ((600, 3), 3),
]
MODES = ["train", "eval", "group"]  # batch_norm with batch / running statistics, group_norm


def make(shape, dtype, weight=True, bias=True, seed=0, offset=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return {
        "x": (offset + scale * rng.normal(size=shape)).astype(dtype),
        "weight": (1 + 0.5 * rng.normal(size=c)).astype(dtype) if weight else None,
        "bias": rng.normal(size=c).astype(dtype) if bias else None,
        "running_mean": rng.normal(size=c).astype(dtype),
        "running_var": rng.uniform(0.5, 1.5, size=c).astype(dtype),
        "dy": rng.normal(size=shape).astype(dtype),
    }


def run(mode, inputs, backend, groups=1, eps=1e-5, out=None, dx_out=None):
    """Every output of the op: y, the saved statistics, the running statistics (batch_norm) and
    the gradients, by name."""
    x, w, b, dy = (inputs[k] for k in ("x", "weight", "bias", "dy"))
    if mode == "group":
        y, saved = normref.group_norm_forward(
            x, w, b, num_groups=groups, eps=eps, out=out, backend=backend
        )
        new = {}
        grads = normref.group_norm_backward(dy, saved, out=dx_out, backend=backend)
    else:
        rm, rv = inputs["running_mean"], inputs["running_var"]
        hyper = {"training": mode == "train", "eps": eps, "num_batches_tracked": 3}
        y, rm, rv, count, saved = normref.batch_norm_forward(
            x, w, b, rm, rv, **hyper, out=out, backend=backend
        )
        new = {"running_mean": rm, "running_var": rv, "count": count}
        grads = normref.batch_norm_backward(dy, saved, out=dx_out, backend=backend)
    grads = dict(zip(("dx", "dweight", "dbias"), grads))
    return {"y": y, "mean": saved.mean, "rstd": saved.rstd, **new, **grads}


def _up(inputs):
    return {k: None if v is None else v.astype(np.float64) for k, v in inputs.items()}


def _scales(mode, inputs, ref, groups):
    """The size of the terms each gradient is made of: dx = rstd * (g - ...) can cancel to almost
    nothing, dweight and dbias are sums of N * S terms that can cancel too."""
    x, w, dy = (_up(inputs)[k] for k in ("x", "weight", "dy"))
    n, c = x.shape[:2]
    x3, dy3 = x.reshape(n, c, -1), dy.reshape(n, c, -1)
    if mode == "group":
        mean = np.repeat(ref["mean"], c // groups, axis=1)[:, :, None]
        rstd = np.repeat(ref["rstd"], c // groups, axis=1)[:, :, None]
    else:
        mean, rstd = ref["mean"][None, :, None], ref["rstd"][None, :, None]
    g = dy3 if w is None else dy3 * w[None, :, None]
    return {  # NaN entries (NaN tests) are left out
        "dx": np.nanmax(np.abs(rstd * g)),
        "dweight": np.nanmax(np.sum(np.abs(dy3 * (x3 - mean) * rstd), axis=(0, 2))),
        "dbias": np.nanmax(np.sum(np.abs(dy3), axis=(0, 2))),
    }


def _dtype_of(name, inputs):
    """The dtype output `name` comes in: the running statistics' own; the saved mean and rstd in
    the accumulation dtype (float32 for the 16-bit formats); the rest x's."""
    if name.startswith("running"):
        return inputs[name].dtype
    if name in ("mean", "rstd") and inputs["x"].dtype.itemsize == 2:
        return np.dtype(np.float32)
    return inputs["x"].dtype


def assert_close(mode, inputs, groups=1, tol=None, eps=1e-5):
    """The numba outputs against the float64 reference on the same values; returns both. NaN must
    sit exactly where the reference has NaN; only the finite entries enter the error."""
    dtype = inputs["x"].dtype.type
    tol = TOL[dtype] if tol is None else tol
    fast = run(mode, inputs, "numba", groups, eps)
    with np.errstate(invalid="ignore"):
        ref = run(mode, _up(inputs), "reference", groups, eps)
        scales = _scales(mode, inputs, ref, groups)
    for name, want in ref.items():
        got = fast[name]
        if want is None or np.isscalar(want):
            assert got == want, name
            continue
        assert got.dtype == _dtype_of(name, inputs), name
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{mode} {name}: NaN differs"
        got, want = got[~np.isnan(want)], want[~np.isnan(want)]
        scale = max(np.max(np.abs(want), initial=0.0), scales.get(name, 0.0), 1e-300)
        err = np.max(np.abs(got - want), initial=0.0) / scale
        assert err <= tol, f"{mode} {name}: error {err:.3g} x scale > {tol:.1g}"
    return fast, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, groups", SHAPES, ids=lambda v: str(v))
def test_random_shapes_match_the_reference(shape, groups, mode, dtype):
    inputs = make(shape, dtype, seed=len(shape) * 7919 + shape[-1])
    fast, _ = assert_close(mode, inputs, groups)
    assert fast["y"].shape == shape and fast["dx"].shape == shape


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight, bias", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (2, 6, 15, 16)], ids=["columns", "planes"])
def test_absent_weight_or_bias(shape, mode, weight, bias, dtype):
    inputs = make(shape, dtype, weight, bias, seed=3)
    fast, _ = assert_close(mode, inputs, groups=3)
    assert (fast["dweight"] is None) == (not weight) and (fast["dbias"] is None) == (not bias)


@pytest.mark.parametrize("mode", MODES)
def test_strided_input_and_out_buffers(mode):
    inputs = make((4, 6, 9, 10), np.float32, seed=5)
    inputs["x"] = inputs["x"][:, :, :, ::2]  # non-contiguous: the wrapper copies it to C order
    inputs["dy"] = inputs["dy"][:, :, :, ::2]
    fast, _ = assert_close(mode, inputs, groups=2)
    shape = inputs["x"].shape
    for out in (np.empty(shape, np.float32), np.empty(shape[::-1], np.float32).T):
        dx_out = np.empty(shape, np.float32)
        got = run(mode, inputs, "numba", 2, out=out, dx_out=dx_out)
        assert got["y"] is out and got["dx"] is dx_out
        np.testing.assert_array_equal(out, fast["y"])
        np.testing.assert_array_equal(dx_out, fast["dx"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(6, 4, 37, 29), (300, 4, 5)], ids=str)  # planes, columns
def test_large_offset_float32(mode, shape):
    """mean 1e4, std 1e-3 per channel over batch and space (design.md §6): float32's spacing at 1e4
    is ~1e-3, so an unshifted sum or E[x^2] - E[x]^2 loses everything; the shifted statistics and
    the re-centred backward keep full accuracy. The running statistics match the data's."""
    inputs = make(shape, np.float32, seed=11, offset=1e4, scale=1e-3)
    axes = (0, *range(2, len(shape)))
    inputs["running_mean"] = inputs["x"].mean(axis=axes, dtype=np.float64).astype(np.float32)
    inputs["running_var"] = np.full(4, 1e-6, np.float32)
    assert_close(mode, inputs, groups=2, tol=1e-5, eps=1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mode", ["train", "group"])
@pytest.mark.parametrize("s", [50, 250], ids=["columns", "planes"])
def test_constant_channels_normalize_to_exactly_the_bias(s, mode, dtype):
    inputs = make((3, 4, s), dtype, seed=17)
    inputs["x"][:, 1] = dtype(3.7)  # a constant channel (batch_norm)
    inputs["x"][:, 2:] = dtype(1e4)  # channels 2 and 3, group 1 of 2: a constant large value
    fast, _ = assert_close(mode, inputs, groups=2)
    expected = np.broadcast_to(inputs["bias"][None, 2:, None], (3, 2, s))
    assert np.array_equal(fast["y"][:, 2:], expected)
    if mode == "train":
        assert np.array_equal(fast["y"][:, 1], np.broadcast_to(inputs["bias"][1], (3, s)))
    assert all(np.all(np.isfinite(v)) for v in fast.values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 4, 15, 16)], ids=["columns", "planes"])
def test_nan_in_x_stays_in_its_channel_or_group(shape):
    inputs = make(shape, np.float32, seed=23)
    inputs["x"][1, 2, 3, 4] = np.nan
    # batch_norm, training: channel 2 in every sample
    got = run("train", inputs, "numba")
    bad = np.zeros(shape, bool)
    bad[:, 2] = True
    for name in ("y", "dx"):
        assert np.all(np.isnan(got[name][bad])) and np.all(np.isfinite(got[name][~bad])), name
    assert np.isnan(got["dweight"][2]) and np.isfinite(np.delete(got["dweight"], 2)).all()
    assert np.isfinite(got["dbias"]).all()  # dbias = sum(dy) does not see x
    assert_close("train", inputs)
    # eval: y at that element only; dx = dy * weight * rstd does not see x at all
    got = run("eval", inputs, "numba")
    assert np.isnan(got["y"][1, 2, 3, 4]) and np.isfinite(got["y"]).sum() == got["y"].size - 1
    assert np.all(np.isfinite(got["dx"])) and np.isnan(got["dweight"][2])
    # group_norm with 2 groups: sample 1, channels 2 and 3
    got = run("group", inputs, "numba", groups=2)
    bad[:] = False
    bad[1, 2:] = True
    for name in ("y", "dx"):
        assert np.all(np.isnan(got[name][bad])) and np.all(np.isfinite(got[name][~bad])), name
    assert np.isnan(got["dweight"][2:]).all() and np.isfinite(got["dweight"][:2]).all()
    assert_close("group", inputs, groups=2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 4, 15, 16)], ids=["columns", "planes"])
def test_nan_in_dy_reaches_what_depends_on_it(shape, mode):
    inputs = make(shape, np.float32, seed=29)
    inputs["dy"][1, 2, 3, 4] = np.nan
    got, _ = assert_close(mode, inputs, groups=2)
    dx_nan = np.isnan(got["dx"])
    if mode == "train":
        assert dx_nan[:, 2].all() and dx_nan.sum() == dx_nan[:, 2].size  # channel 2
    elif mode == "eval":
        assert dx_nan[1, 2, 3, 4] and dx_nan.sum() == 1  # its element
    else:
        assert dx_nan[1, 2:].all() and dx_nan.sum() == dx_nan[1, 2:].size  # its sample's group
    for name in ("dweight", "dbias"):
        assert np.isnan(got[name][2]) and np.isfinite(np.delete(got[name], 2)).all(), name


def test_running_statistics_follow_the_reference_over_steps():
    """Training steps through the kernels: new running statistics and count as the reference's
    (the unbiased variance from the kernel's sum of squares), momentum and cumulative average."""
    rng = np.random.default_rng(31)
    for momentum in (0.1, None):
        state = {"numba": None, "reference": None}
        for key in state:
            state[key] = (np.zeros(5, np.float32), np.ones(5, np.float32), 0)
        for step in range(4):
            x = (rng.normal(size=(7, 5, 11)) * (step + 1) + step).astype(np.float32)
            for backend in state:
                rm, rv, count = state[backend]
                xb = x if backend == "numba" else x.astype(np.float64)
                hyper = {"momentum": momentum, "num_batches_tracked": count, "backend": backend}
                _, rm, rv, count, _ = normref.batch_norm_forward(xb, None, None, rm, rv, **hyper)
                state[backend] = (rm, rv, count)
        (rm, rv, count), (rm_ref, rv_ref, count_ref) = state["numba"], state["reference"]
        assert count == count_ref == 4 and rm.dtype == rv.dtype == np.float32
        np.testing.assert_allclose(rm, rm_ref, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(rv, rv_ref, rtol=2e-6)


@pytest.mark.parametrize("mode", MODES)
def test_backward_of_a_reference_forward(mode):
    """The saved tensors of one backend feed the other's backward (same contract)."""
    inputs = make((3, 4, 7), np.float32, seed=37)
    x, w, b, dy = (inputs[k] for k in ("x", "weight", "bias", "dy"))
    if mode == "group":
        saved = normref.group_norm_forward(x, w, b, num_groups=2, backend="reference")[1]
        backward = normref.group_norm_backward
    else:
        rm, rv = inputs["running_mean"], inputs["running_var"]
        saved = normref.batch_norm_forward(
            x, w, b, rm, rv, training=mode == "train", backend="reference"
        )[-1]
        backward = normref.batch_norm_backward
    for got, want in zip(backward(dy, saved, backend="numba"), backward(dy, saved)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 20000), (33, 5, 300), (8, 4, 200), (3, 2, 8192)])
def test_plane_units_cover_every_value_once(shape):
    """BatchNorm's plane units (a shape-only geometry) tile each channel's N x S values exactly."""
    n, c, s = shape
    rows, seg = kernels.batch_norm_units(n, c, s)
    per = kernels._per_channel(n, s, rows, seg)
    segments = -(-s // seg)
    seen = np.zeros((n, c, s), np.int64)
    for u in range(per * c):
        ch, p, n0, n1, s0, s1 = kernels._unit(u, n, c, s, rows, seg)
        assert 0 < (n1 - n0) * (s1 - s0) <= kernels._UNIT and 0 <= p < per
        assert kernels._unit_index(ch, p, c, segments) == u  # how a channel finds its units
        seen[n0:n1, ch, s0:s1] += 1
    assert np.all(seen == 1)


def test_short_planes_use_column_blocks():
    assert kernels.batch_norm_units(1000, 64, 1) == (256, 0)  # 256 samples to a block
    assert kernels.batch_norm_units(1000, 64, 199)[1] == 0
    assert kernels.batch_norm_units(1000, 64, 200)[1] == 200
    assert kernels.batch_norm_units(10, 8192, 16) == (2, 0)  # the block stays in L2


def _kernel_outputs(x, w, b, dy, groups):
    """Every output of the raw kernels (the module's contract) on fresh buffers."""
    n, c, _ = x.shape
    out = {}
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, rstd, sumsq, dw, db = (np.empty(c, x.dtype) for _ in range(5))
    kernels.batch_norm_forward(x, w, b, 1e-5, y, mean, rstd, sumsq)
    kernels.batch_norm_backward(dy, x, mean, rstd, w, True, dx, dw, db)
    out["bn"] = [a.copy() for a in (y, mean, rstd, sumsq, dx, dw, db)]
    kernels.batch_norm_apply(x, mean, rstd, w, b, y)
    kernels.batch_norm_backward(dy, x, mean, rstd, w, False, dx, dw, db)
    out["bn eval"] = [a.copy() for a in (y, dx, dw, db)]
    gmean, grstd = np.empty((n, groups), x.dtype), np.empty((n, groups), x.dtype)
    kernels.group_norm_forward(x, w, b, 1e-5, y, gmean, grstd)
    kernels.group_norm_backward(dy, x, gmean, grstd, w, dx, dw, db)
    out["gn"] = [a.copy() for a in (y, gmean, grstd, dx, dw, db)]
    return out


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("shape", [(33, 5, 300), (2, 3, 20000), (600, 8, 3)])
def test_bitwise_identical_with_one_and_two_threads(shape):
    inputs = make(shape, np.float32, seed=41)
    args = (inputs["x"], inputs["weight"], inputs["bias"], inputs["dy"], 4 if shape[1] == 8 else 1)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _kernel_outputs(*args)
        numba.set_num_threads(2)
        two = _kernel_outputs(*args)
        again = _kernel_outputs(*args)
    finally:
        numba.set_num_threads(before)
    for key in one:
        for a, c, d in zip(one[key], two[key], again[key]):
            assert a.tobytes() == c.tobytes() == d.tobytes(), key
