"""RMSNorm's reference: finite differences, PyTorch autograd, numerics, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

import normref

torch = pytest.importorskip(
    "torch", reason="PyTorch is the independent implementation checked against"
)

# (x shape, normalized_shape, with weight)
SHAPES = [
    ((3, 7), None, True),
    ((2, 3, 5), (3, 5), True),
    ((4, 1), None, True),
    ((5, 6), None, False),
    ((6,), 6, True),
]


def make(shape, normalized_shape, with_weight, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    k = (
        1
        if normalized_shape is None or isinstance(normalized_shape, int)
        else len(normalized_shape)
    )
    x = rng.normal(size=shape).astype(dtype)
    w = (1 + 0.3 * rng.normal(size=shape[len(shape) - k :])).astype(dtype) if with_weight else None
    return x, w, rng.normal(size=shape).astype(dtype), shape[len(shape) - k :]


@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("shape, normalized_shape, with_weight", SHAPES)
def test_backward_matches_finite_differences(shape, normalized_shape, with_weight, eps):
    x, w, dy, nshape = make(shape, normalized_shape, with_weight)

    def f(x, w):
        return normref.rms_norm(x, w, normalized_shape=nshape, eps=eps, backend="reference")

    _, saved = normref.rms_norm_forward(x, w, normalized_shape=nshape, eps=eps, backend="reference")
    analytic = normref.rms_norm_backward(dy, saved, backend="reference")
    assert_gradients_match(analytic, numerical_vjp(f, [x, w], dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 2e-5, 2e-5)]
)
@pytest.mark.parametrize("shape, normalized_shape, with_weight", SHAPES)
def test_matches_pytorch_autograd(shape, normalized_shape, with_weight, dtype, rtol, atol, eps):
    x, w, dy, nshape = make(shape, normalized_shape, with_weight, dtype, seed=1)
    tx = torch.tensor(x, requires_grad=True)
    tw = None if w is None else torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.rms_norm(tx, nshape, tw, eps=eps)
    ty.backward(torch.tensor(dy))

    y, saved = normref.rms_norm_forward(x, w, normalized_shape=nshape, eps=eps, backend="reference")
    dx, dw = normref.rms_norm_backward(dy, saved, backend="reference")
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol * 10)
    assert (dw is None) == (tw is None)
    if dw is not None:
        np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=rtol, atol=atol * 10)


def test_default_eps_is_the_machine_epsilon_of_the_compute_dtype():
    x = np.full((1, 4), 1e-4)
    for dtype, eps in (
        (np.float64, np.finfo(np.float64).eps),
        (np.float32, np.finfo(np.float32).eps),
    ):
        y = normref.rms_norm(x.astype(dtype), backend="reference")
        np.testing.assert_allclose(y, 1e-4 / np.sqrt(1e-8 + eps), rtol=1e-6)
    # float16 computes in float32, so it takes float32's epsilon, not float16's (PyTorch's rule).
    y16 = normref.rms_norm(x.astype(np.float16), backend="reference")
    expected = np.float16(x.astype(np.float16)[0, 0]) / np.sqrt(
        np.float64(np.float16(1e-4)) ** 2 + np.finfo(np.float32).eps
    )
    np.testing.assert_allclose(y16.astype(np.float64), expected, rtol=2**-10)


def test_zero_rows_give_zero_and_finite_gradients():
    x = np.zeros((2, 5), np.float32)
    y, saved = normref.rms_norm_forward(x, np.ones(5, np.float32), backend="reference")
    np.testing.assert_array_equal(y, 0.0)
    dx, dw = normref.rms_norm_backward(np.ones_like(x), saved, backend="reference")
    assert np.all(np.isfinite(dx)) and np.all(dw == 0.0)


def test_large_values_float32_match_float64():
    rng = np.random.default_rng(2)
    x = (1e4 + 1e-3 * rng.normal(size=(4, 300))).astype(np.float32)
    dy = rng.normal(size=(4, 300)).astype(np.float32)
    y32, s32 = normref.rms_norm_forward(x, eps=1e-6, backend="reference")
    y64, s64 = normref.rms_norm_forward(x.astype(np.float64), eps=1e-6, backend="reference")
    np.testing.assert_allclose(y32, y64, rtol=1e-5)
    dx32, _ = normref.rms_norm_backward(dy, s32, backend="reference")
    dx64, _ = normref.rms_norm_backward(dy.astype(np.float64), s64, backend="reference")
    np.testing.assert_allclose(dx32, dx64, rtol=1e-3, atol=1e-3 * np.max(np.abs(dx64)))


def test_nan_propagates_to_its_row_only():
    x = np.random.default_rng(3).normal(size=(3, 6))
    x[2, 0] = np.nan
    y, saved = normref.rms_norm_forward(x, np.ones(6), backend="reference")
    assert np.all(np.isnan(y[2])) and np.all(np.isfinite(y[:2]))
    dx, dw = normref.rms_norm_backward(np.ones_like(x), saved, backend="reference")
    assert np.all(np.isnan(dx[2])) and np.all(np.isfinite(dx[:2])) and np.all(np.isnan(dw))


def test_a_row_of_a_million_elements():
    x = np.random.default_rng(4).normal(size=(1, 1_000_000)).astype(np.float32)
    y = normref.rms_norm(x, backend="reference")
    xd = x.astype(np.float64)
    np.testing.assert_allclose(
        y, xd / np.sqrt(np.mean(xd * xd) + np.finfo(np.float32).eps), rtol=1e-4
    )


def test_float16_weight_multiplies_before_the_single_rounding():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 40)).astype(np.float16)
    w = (1 + 0.2 * rng.normal(size=40)).astype(np.float16)
    y, saved = normref.rms_norm_forward(x, w, backend="reference")
    assert y.dtype == np.float16 and saved.rstd.dtype == np.float32
    exact = normref.rms_norm(
        x.astype(np.float64), w.astype(np.float64), eps=float(np.finfo(np.float32).eps)
    )
    np.testing.assert_allclose(y, exact, rtol=2**-10, atol=2**-14)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.ones((2, 3), np.int32)}, TypeError, "x must be a real floating-point array"),
        ({"weight": np.ones(4)}, ValueError, r"weight of shape \(4,\) must match the trailing"),
        ({"eps": 0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": "small"}, TypeError, "eps must be a real number"),
        ({"normalized_shape": (2, 2)}, ValueError, "normalized_shape"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, match):
    args = {"x": np.ones((2, 3)), "weight": None} | kwargs
    x, w = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=match):
        normref.rms_norm(x, w, **args)
