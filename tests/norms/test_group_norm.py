"""GroupNorm's reference: finite differences, PyTorch autograd, the one-group (layer norm) and
C-group (instance norm) special cases, numerics, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

from normref.norms.group_norm import group_norm, group_norm_backward, group_norm_forward
from normref.norms.instance_norm import instance_norm_backward, instance_norm_forward
from normref.norms.layer_norm import layer_norm_backward, layer_norm_forward

torch = pytest.importorskip(
    "torch", reason="PyTorch is the independent implementation checked against"
)
F = torch.nn.functional

# (x shape, num_groups): every spatial rank, one group, C groups and in between, odd sizes
SHAPES = [
    ((3, 6), 2),
    ((2, 6, 5), 3),
    ((2, 4, 3, 3), 1),
    ((2, 4, 3, 3), 4),
    ((2, 6, 2, 3, 2), 2),
    ((1, 3, 7), 3),
]


def make(shape, affine=True, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (0.7 + 1.8 * rng.normal(size=shape)).astype(dtype)
    w = (1 + 0.3 * rng.normal(size=c)).astype(dtype) if affine else None
    b = rng.normal(size=c).astype(dtype) if affine else None
    return x, w, b, rng.normal(size=shape).astype(dtype)


def per_channel(p, ndim):
    """A (C,) parameter shaped to broadcast against (N, C, *spatial)."""
    return p.reshape((-1,) + (1,) * (ndim - 2))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_backward_matches_finite_differences(shape, groups, affine):
    x, w, b, dy = make(shape, affine)

    def f(x, w, b):
        return group_norm(x, w, b, num_groups=groups, backend="reference")

    _, saved = group_norm_forward(x, w, b, num_groups=groups, backend="reference")
    analytic = group_norm_backward(dy, saved, backend="reference")
    assert_gradients_match(analytic, numerical_vjp(f, [x, w, b], dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 2e-5, 2e-5)]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_matches_pytorch_autograd(shape, groups, affine, dtype, rtol, atol):
    x, w, b, dy = make(shape, affine, dtype, seed=1)
    tx = torch.tensor(x, requires_grad=True)
    tw = None if w is None else torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    ty = F.group_norm(tx, groups, tw, tb, eps=1e-5)
    ty.backward(torch.tensor(dy))

    y, saved = group_norm_forward(x, w, b, num_groups=groups, backend="reference")
    dx, dw, db = group_norm_backward(dy, saved, backend="reference")
    assert y.dtype == dx.dtype == dtype
    assert saved.mean.shape == saved.rstd.shape == (shape[0], groups)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol * 10)
    for ours, theirs in ((dw, tw), (db, tb)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6), (2, 3, 4, 5)])
def test_one_group_is_layer_norm_over_channels_and_space(shape):
    x, w, b, dy = make(shape, seed=2)
    y, saved = group_norm_forward(x, w, b, num_groups=1)
    dx, dw, db = group_norm_backward(dy, saved)
    # layer norm over (C, *spatial) with the per-channel affine spread over the spatial positions
    W = np.broadcast_to(per_channel(w, len(shape)), shape[1:]).copy()
    B = np.broadcast_to(per_channel(b, len(shape)), shape[1:]).copy()
    y_ln, saved_ln = layer_norm_forward(x, W, B, normalized_shape=shape[1:])
    dx_ln, dW, dB = layer_norm_backward(dy, saved_ln)
    space = tuple(range(1, len(shape) - 1))  # spatial axes of the parameter gradients
    np.testing.assert_allclose(y, y_ln, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dx, dx_ln, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dw, dW.sum(axis=space), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db, dB.sum(axis=space), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (2, 2, 3, 2, 2)])
def test_one_group_per_channel_is_instance_norm(shape):
    x, w, b, dy = make(shape, seed=3)
    y, saved = group_norm_forward(x, w, b, num_groups=shape[1])
    y_in, _, _, saved_in = instance_norm_forward(x, w, b)
    np.testing.assert_allclose(y, y_in, rtol=1e-14, atol=1e-14)
    for ours, theirs in zip(group_norm_backward(dy, saved), instance_norm_backward(dy, saved_in)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-13)


def test_strided_inputs_give_the_contiguous_result():
    x, w, b, dy = make((4, 6, 9), seed=9)
    xs, dys = x[::2, :, ::4], dy[::2, :, ::4]
    y, saved = group_norm_forward(xs, w, b, num_groups=3)
    y_c, saved_c = group_norm_forward(xs.copy(), w, b, num_groups=3)
    np.testing.assert_array_equal(y, y_c)
    grads = group_norm_backward(dys, saved)
    for a, c in zip(grads, group_norm_backward(dys.copy(), saved_c)):
        np.testing.assert_array_equal(a, c)


def test_groups_are_consecutive_channels():
    # channels 0-1 are one group and 2-3 another: changing channel 3 moves channel 2, not 0-1,
    # and an affine change of a whole group changes nothing (up to eps, here negligible)
    x, _, _, _ = make((2, 4, 5), affine=False, seed=4)
    y = group_norm(x, num_groups=2, eps=1e-12)
    moved = x.copy()
    moved[:, 3] += 1.0
    y_moved = group_norm(moved, num_groups=2, eps=1e-12)
    np.testing.assert_array_equal(y_moved[:, :2], y[:, :2])
    assert np.all(y_moved[:, 2] != y[:, 2])
    scaled = x.copy()
    scaled[:, 2:] = 100 * scaled[:, 2:] + 3
    np.testing.assert_allclose(group_norm(scaled, num_groups=2, eps=1e-12), y, rtol=1e-9, atol=1e-9)


def test_large_offset_float32():
    rng = np.random.default_rng(5)
    shape = (3, 4, 16, 16)
    x = (1e4 + 1e-3 * rng.normal(size=shape)).astype(np.float32)
    w = (1 + 0.1 * rng.normal(size=4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y32, s32 = group_norm_forward(x, w, b, num_groups=2, backend="reference")
    g32 = group_norm_backward(dy, s32, backend="reference")
    y64, s64 = group_norm_forward(*(a.astype(np.float64) for a in (x, w, b)), num_groups=2)
    g64 = group_norm_backward(dy.astype(np.float64), s64)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    for ours, exact in zip(g32, g64):
        scale = np.max(np.abs(exact))
        np.testing.assert_allclose(ours, exact, rtol=1e-3, atol=1e-4 * scale)


def test_constant_groups_give_exactly_the_bias_and_finite_gradients():
    x = np.full((2, 4, 3, 3), 7.25, dtype=np.float32)
    x[:, 2:] = -1e4
    b = np.arange(4, dtype=np.float32)
    y, saved = group_norm_forward(x, np.ones(4, np.float32), b, num_groups=2)
    np.testing.assert_array_equal(y, np.broadcast_to(per_channel(b, 4), y.shape))
    dy = np.random.default_rng(6).normal(size=x.shape).astype(np.float32)
    assert all(np.all(np.isfinite(g)) for g in group_norm_backward(dy, saved))


def test_one_value_per_group_gives_the_bias():
    # PyTorch refuses N = 1 with one value per group; normref, like layer norm with n = 1, does not
    x = np.array([[3.0, -1.0, 2.0]])
    y, saved = group_norm_forward(x, np.array([2.0, 3.0, 4.0]), np.array([0.5, 1, 2]), num_groups=3)
    np.testing.assert_array_equal(y, [[0.5, 1.0, 2.0]])
    dx, dw, db = group_norm_backward(np.array([[1.5, 2.0, -1.0]]), saved)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, [1.5, 2.0, -1.0])


def test_nan_propagates_to_its_sample_and_group_only():
    x, w, b, dy = make((3, 4, 5), seed=7)
    x[1, 2, 3] = np.nan  # sample 1, group 1 (channels 2-3)
    y, saved = group_norm_forward(x, w, b, num_groups=2)
    nan = np.isnan(y)
    assert np.all(nan[1, 2:]) and nan.sum() == 10
    dx, dw, db = group_norm_backward(dy, saved)
    assert np.all(np.isnan(dx[1, 2:])) and np.isnan(dx).sum() == 10
    assert np.all(np.isnan(dw[2:])) and np.all(np.isfinite(dw[:2])) and np.all(np.isfinite(db))


def test_float16_computes_in_float32_and_rounds_once():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 6, 10)).astype(np.float16)
    w = (1 + 0.1 * rng.normal(size=6)).astype(np.float16)
    b = rng.normal(size=6).astype(np.float16)
    y, saved = group_norm_forward(x, w, b, num_groups=3, backend="reference")
    assert y.dtype == np.float16 and saved.mean.dtype == saved.rstd.dtype == np.float32
    exact = group_norm(*(a.astype(np.float64) for a in (x, w, b)), num_groups=3)
    np.testing.assert_allclose(y, exact, rtol=2**-10, atol=2**-14)
    dx, dw, db = group_norm_backward(rng.normal(size=x.shape).astype(np.float16), saved)
    assert dx.dtype == dw.dtype == db.dtype == np.float16


def test_empty_batch_gives_empty_outputs_and_zero_parameter_gradients():
    x = np.empty((0, 4, 3))
    y, saved = group_norm_forward(x, np.ones(4), np.zeros(4), num_groups=2)
    dx, dw, db = group_norm_backward(np.empty_like(x), saved)
    assert y.shape == dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, 0.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.ones((2, 6), np.int64)}, TypeError, "x must be a real floating-point array"),
        ({"x": np.ones(6)}, ValueError, r"x must have at least 2 dimensions"),
        ({"x": np.ones((2, 6, 0))}, ValueError, "every group must hold at least one value"),
        ({"num_groups": None}, TypeError, "num_groups is required"),
        ({"num_groups": 4}, ValueError, r"num_groups must divide the number of channels C = 6"),
        ({"num_groups": 12}, ValueError, r"num_groups must divide"),
        ({"num_groups": 0}, ValueError, "num_groups must be an integer >= 1"),
        ({"num_groups": 2.0}, TypeError, "num_groups must be an integer"),
        ({"weight": np.ones(3)}, ValueError, r"weight must have shape \(6,\)"),
        ({"bias": np.ones((6, 1))}, ValueError, r"bias must have shape \(6,\)"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": float("inf")}, ValueError, "eps must be a finite number > 0"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"out": np.empty((2, 6), np.float32)}, ValueError, "out must be an array of shape"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, match):
    args = {"x": np.ones((2, 6)), "weight": None, "bias": None, "num_groups": 3} | kwargs
    x, w, b = args.pop("x"), args.pop("weight"), args.pop("bias")
    with pytest.raises(error, match=match):
        group_norm(x, w, b, **args)


def test_backward_refuses_a_mismatched_gradient():
    _, saved = group_norm_forward(np.ones((2, 4)), num_groups=2)
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4\)"):
        group_norm_backward(np.ones((4, 2)), saved)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        group_norm_backward(np.ones((2, 4), np.float32), saved)
