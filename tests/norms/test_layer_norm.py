"""LayerNorm's reference: finite differences, PyTorch autograd, numerics, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

import normref

torch = pytest.importorskip(
    "torch", reason="PyTorch is the independent implementation checked against"
)

# (x shape, normalized_shape, with weight, with bias)
SHAPES = [
    ((3, 7), None, True, True),
    ((2, 3, 5), (3, 5), True, True),
    ((4, 1), None, True, True),
    ((5, 6), None, False, False),
    ((2, 2, 9), 9, True, False),
    ((6,), None, False, True),
]


def make(shape, normalized_shape, with_weight, with_bias, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    k = (
        1
        if normalized_shape is None or isinstance(normalized_shape, int)
        else len(normalized_shape)
    )
    pshape = shape[len(shape) - k :]
    x = rng.normal(size=shape).astype(dtype)
    w = (1 + 0.3 * rng.normal(size=pshape)).astype(dtype) if with_weight else None
    b = rng.normal(size=pshape).astype(dtype) if with_bias else None
    dy = rng.normal(size=shape).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("shape, normalized_shape, with_weight, with_bias", SHAPES)
def test_backward_matches_finite_differences(shape, normalized_shape, with_weight, with_bias):
    x, w, b, dy = make(shape, normalized_shape, with_weight, with_bias)
    hyper = {"normalized_shape": normalized_shape if with_weight or normalized_shape else None}

    def f(x, w, b):
        return normref.layer_norm(x, w, b, **hyper, backend="reference")

    _, saved = normref.layer_norm_forward(x, w, b, **hyper, backend="reference")
    analytic = normref.layer_norm_backward(dy, saved, backend="reference")
    assert_gradients_match(analytic, numerical_vjp(f, [x, w, b], dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 2e-5, 2e-5)]
)
@pytest.mark.parametrize("shape, normalized_shape, with_weight, with_bias", SHAPES)
def test_matches_pytorch_autograd(
    shape, normalized_shape, with_weight, with_bias, dtype, rtol, atol
):
    x, w, b, dy = make(shape, normalized_shape, with_weight, with_bias, dtype, seed=1)
    k = (
        1
        if normalized_shape is None or isinstance(normalized_shape, int)
        else len(normalized_shape)
    )
    tx, tdy = torch.tensor(x, requires_grad=True), torch.tensor(dy)
    tw = None if w is None else torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.layer_norm(tx, shape[len(shape) - k :], tw, tb, eps=1e-5)
    ty.backward(tdy)

    y, saved = normref.layer_norm_forward(
        x, w, b, normalized_shape=shape[len(shape) - k :], backend="reference"
    )
    dx, dw, db = normref.layer_norm_backward(dy, saved, backend="reference")
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol * 10)
    for ours, theirs in ((dw, tw), (db, tb)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=rtol, atol=atol * 10)


def test_large_offset_float32_forward_and_backward():
    # mean 1e4, std 1e-3: float32 keeps ~3 significant digits of the deviation, and a naive
    # E[x^2] - E[x]^2 or an un-recentred backward loses all of them.
    rng = np.random.default_rng(2)
    x = (1e4 + 1e-3 * rng.normal(size=(8, 257))).astype(np.float32)
    w = (1 + 0.1 * rng.normal(size=257)).astype(np.float32)
    b = rng.normal(size=257).astype(np.float32)
    dy = rng.normal(size=(8, 257)).astype(np.float32)
    y32, s32 = normref.layer_norm_forward(x, w, b, backend="reference")
    g32 = normref.layer_norm_backward(dy, s32, backend="reference")
    y64, s64 = normref.layer_norm_forward(
        *(a.astype(np.float64) for a in (x, w, b)), backend="reference"
    )
    g64 = normref.layer_norm_backward(dy.astype(np.float64), s64, backend="reference")
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    for ours, exact in zip(g32, g64):
        scale = np.max(np.abs(exact))
        np.testing.assert_allclose(ours, exact, rtol=1e-3, atol=1e-4 * scale)


def test_constant_rows_give_exactly_the_bias_and_finite_gradients():
    x = np.full((3, 10), 7.25, dtype=np.float32)
    b = np.arange(10, dtype=np.float32)
    y, saved = normref.layer_norm_forward(x, np.ones(10, np.float32), b, backend="reference")
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))
    grads = normref.layer_norm_backward(
        np.ones_like(x) * np.arange(10, dtype=np.float32), saved, backend="reference"
    )
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_single_element_rows():
    x = np.array([[3.0], [-1.0]])
    y, saved = normref.layer_norm_forward(x, np.array([2.0]), np.array([0.5]), backend="reference")
    np.testing.assert_array_equal(y, [[0.5], [0.5]])
    dx, dw, db = normref.layer_norm_backward(np.array([[1.5], [2.0]]), saved, backend="reference")
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, [3.5])


def test_a_row_of_a_million_elements():
    rng = np.random.default_rng(3)
    x = (5 + 2 * rng.normal(size=(1, 1_000_000))).astype(np.float32)
    y = normref.layer_norm(x, backend="reference")
    exact = (x.astype(np.float64) - x.mean(dtype=np.float64)) / np.sqrt(
        x.astype(np.float64).var() + 1e-5
    )
    np.testing.assert_allclose(y, exact, rtol=1e-4, atol=1e-4)


def test_nan_propagates_to_its_row_only():
    x = np.random.default_rng(4).normal(size=(3, 6))
    x[1, 2] = np.nan
    y, saved = normref.layer_norm_forward(x, np.ones(6), np.zeros(6), backend="reference")
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))
    dx, dw, db = normref.layer_norm_backward(np.ones_like(x), saved, backend="reference")
    assert np.all(np.isnan(dx[1])) and np.all(np.isfinite(dx[[0, 2]]))
    assert np.all(np.isnan(dw)) and np.all(np.isfinite(db))


def test_float16_computes_in_float32_and_rounds_once():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 50)).astype(np.float16)
    w = (1 + 0.1 * rng.normal(size=50)).astype(np.float16)
    y, saved = normref.layer_norm_forward(x, w, None, backend="reference")
    assert y.dtype == np.float16 and saved.mean.dtype == saved.rstd.dtype == np.float32
    exact = normref.layer_norm(x.astype(np.float64), w.astype(np.float64), backend="reference")
    # One rounding of a float32 result to float16: within one float16 ulp.
    np.testing.assert_allclose(y, exact, rtol=2**-10, atol=2**-14)
    dx, dw, _ = normref.layer_norm_backward(rng.normal(size=(4, 50)).astype(np.float16), saved)
    assert dx.dtype == dw.dtype == np.float16


def test_default_normalized_shape_is_the_weight_shape_or_last_dim():
    x = np.random.default_rng(6).normal(size=(2, 3, 4))
    w = np.ones((3, 4))
    np.testing.assert_allclose(
        normref.layer_norm(x, w, backend="reference"),
        normref.layer_norm(x, normalized_shape=(3, 4), backend="reference"),
    )
    y = normref.layer_norm(x, backend="reference")
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.ones((2, 3), np.int64)}, TypeError, "x must be a real floating-point array"),
        ({"weight": np.ones(4)}, ValueError, r"weight of shape \(4,\) must match the trailing"),
        (
            {"weight": np.ones(2), "normalized_shape": 3},
            ValueError,
            r"weight must have shape \(3,\)",
        ),
        ({"bias": np.ones((1, 3))}, ValueError, r"bias must have shape \(3,\)"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": -1e-5}, ValueError, "eps must be a finite number > 0"),
        ({"normalized_shape": (4,)}, ValueError, "normalized_shape"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"out": np.empty((2, 3), np.float32)}, ValueError, "out must be an array of shape"),
        ({"out": np.broadcast_to(np.empty(3), (2, 3))}, ValueError, "out must be a writable"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, match):
    args = {"x": np.ones((2, 3)), "weight": None, "bias": None} | kwargs
    x, w, b = args.pop("x"), args.pop("weight"), args.pop("bias")
    with pytest.raises(error, match=match):
        normref.layer_norm(x, w, b, **args)


def test_backward_refuses_a_mismatched_gradient():
    _, saved = normref.layer_norm_forward(np.ones((2, 3)), backend="reference")
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\)"):
        normref.layer_norm_backward(np.ones((3, 2)), saved)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        normref.layer_norm_backward(np.ones((2, 3), np.float32), saved)
