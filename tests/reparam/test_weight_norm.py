"""Weight normalization: finite differences, PyTorch's parametrization, numerics, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

from normref.reparam.weight_norm import (
    weight_norm,
    weight_norm_backward,
    weight_norm_forward,
    weight_norm_init,
    weight_norm_variant,
)

torch = pytest.importorskip("torch", reason="PyTorch is the independent implementation")

# (v shape, dim, g shape)
LAYOUTS = [
    ((4, 6), 0, (4, 1)),
    ((3, 2, 3, 3), 0, (3, 1, 1, 1)),
    ((2, 5, 3), 1, (1, 5, 1)),
    ((2, 5, 3), 2, (3,)),  # the flat form of g
    ((3, 4), None, ()),
    ((7,), 0, (7,)),  # a 1-D v: every element its own slice
]


def make(v_shape, g_shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=v_shape).astype(dtype)
    g = (0.5 + rng.random(g_shape)).astype(dtype) * rng.choice([-1.0, 1.0], g_shape)
    dw = rng.normal(size=v_shape).astype(dtype)
    return g.astype(dtype), v, dw


@pytest.mark.parametrize("v_shape, dim, g_shape", LAYOUTS)
def test_backward_matches_finite_differences(v_shape, dim, g_shape):
    g, v, dw = make(v_shape, g_shape)
    _, saved = weight_norm_forward(g, v, dim=dim)
    analytic = weight_norm_backward(dw, saved)
    numeric = numerical_vjp(lambda g, v: weight_norm(g, v, dim=dim), [g, v], dw)
    assert_gradients_match(analytic, numeric, rtol=1e-6, atol=1e-9)


def _torch_keep(g, v_shape, dim):
    if dim is None:
        return g.reshape(())
    return g.reshape(tuple(n if i == dim else 1 for i, n in enumerate(v_shape)))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("v_shape, dim, g_shape", LAYOUTS[:5])
def test_matches_torch_weight_norm_interface(v_shape, dim, g_shape, dtype, tol):
    g, v, dw = make(v_shape, g_shape, dtype, seed=1)
    tg = torch.tensor(_torch_keep(g, v_shape, dim), requires_grad=True)
    tv = torch.tensor(v, requires_grad=True)
    tw = torch._weight_norm(tv, tg, -1 if dim is None else dim)
    tw.backward(torch.tensor(dw))
    w, saved = weight_norm_forward(g, v, dim=dim)
    dg, dv = weight_norm_backward(dw, saved)
    assert w.dtype == dg.dtype == dv.dtype == dtype and dg.shape == g.shape
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dv, tv.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dg, tg.grad.numpy().reshape(g.shape), rtol=tol, atol=tol)


@pytest.mark.parametrize("dim", [0, None])
def test_matches_torch_parametrization_on_a_conv_layer(dim):
    """torch.nn.utils.parametrizations.weight_norm itself: its g (original0) is our init's g,
    its weight our forward, the gradients of original0 / original1 our backward."""
    conv = torch.nn.Conv2d(3, 4, 3).double()
    w0 = conv.weight.detach().numpy().copy()
    torch.nn.utils.parametrizations.weight_norm(conv, dim=dim)
    params = conv.parametrizations.weight
    g, v = weight_norm_init(w0, dim)
    np.testing.assert_allclose(g, params.original0.detach().numpy(), rtol=1e-14)
    np.testing.assert_array_equal(v, params.original1.detach().numpy())

    dw = np.random.default_rng(2).normal(size=w0.shape)
    conv.weight.backward(torch.tensor(dw))
    w, saved = weight_norm_forward(g, v, dim=dim)
    dg, dv = weight_norm_backward(dw, saved)
    np.testing.assert_allclose(w, conv.weight.detach().numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dg, params.original0.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, params.original1.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_init_round_trips_and_copies():
    w = np.random.default_rng(3).normal(size=(5, 2, 3))
    for dim in (0, 1, 2, None):
        g, v = weight_norm_init(w, dim)
        assert v is not w and not np.shares_memory(v, w)
        np.testing.assert_allclose(weight_norm(g, v, dim=dim), w, rtol=1e-14, atol=1e-15)


def test_scaling_v_changes_nothing_and_its_gradient_is_orthogonal_to_v():
    g, v, dw = make((4, 6), (4, 1), seed=4)
    np.testing.assert_allclose(weight_norm(g, 7.5 * v), weight_norm(g, v), rtol=1e-14)
    _, dv = weight_norm_backward(dw, weight_norm_forward(g, v)[1])
    np.testing.assert_allclose(np.sum(dv * v, axis=1), 0.0, atol=1e-13)


def test_a_zero_slice_is_nan_as_in_pytorch_and_the_others_are_untouched():
    g, v, dw = make((3, 4), (3, 1), seed=5)
    v[1] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        w, saved = weight_norm_forward(g, v)
        dg, dv = weight_norm_backward(dw, saved)
    assert np.all(np.isnan(w[1])) and np.isnan(dg[1, 0]) and np.all(np.isnan(dv[1]))
    rows = [0, 2]
    assert np.all(np.isfinite(w[rows])) and np.all(np.isfinite(dg[rows]))
    np.testing.assert_allclose(w[rows], weight_norm(g[rows], v[rows]), rtol=1e-15)
    # Flax's eps inside the square root makes the zero slice zero instead
    np.testing.assert_array_equal(weight_norm_variant(g, v, flax_eps=True)[1], 0.0)


def test_nan_propagates_to_its_slice_only():
    g, v, dw = make((3, 4), (3, 1), seed=6)
    v[2, 1] = np.nan
    w, saved = weight_norm_forward(g, v)
    dg, dv = weight_norm_backward(dw, saved)
    assert np.all(np.isnan(w[2])) and np.all(np.isfinite(w[:2]))
    assert np.all(np.isnan(dv[2])) and np.all(np.isfinite(dv[:2])) and np.isnan(dg[2, 0])


def test_float16_computes_in_float32_and_rounds_once():
    g, v, dw = make((6, 40), (6, 1), np.float16, seed=7)
    w, saved = weight_norm_forward(g, v)
    assert w.dtype == np.float16 and saved.norm.dtype == np.float32
    exact = weight_norm(g.astype(np.float64), v.astype(np.float64))
    np.testing.assert_allclose(w, exact, rtol=2**-10, atol=2**-14)
    dg, dv = weight_norm_backward(dw, saved)
    assert dg.dtype == dv.dtype == np.float16
    exact_dg, exact_dv = weight_norm_backward(
        dw.astype(np.float64), weight_norm_forward(g.astype(np.float64), v.astype(np.float64))[1]
    )
    np.testing.assert_allclose(dv, exact_dv, rtol=2**-10, atol=2**-14)
    np.testing.assert_allclose(dg, exact_dg, rtol=2**-10, atol=2**-14)


def test_float32_keeps_float32_and_large_weights_do_not_overflow():
    g, v, _ = make((3, 8), (3, 1), np.float32, seed=8)
    w = weight_norm(g, v * np.float32(1e15))  # sum of squares ~1e31, inside float32
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, weight_norm(g, v), rtol=2e-6)


@pytest.mark.parametrize(
    "g_shape, v_args, kwargs, error, match",
    [
        ((4, 1), {"dtype": np.int64}, {}, TypeError, "v must be a real floating-point"),
        ((4, 1), {}, {"dim": -1}, ValueError, r"dim must be in \[0, 1\]"),
        ((4, 1), {}, {"dim": 2}, ValueError, r"dim must be in \[0, 1\]"),
        ((4, 1), {}, {"dim": 0.0}, TypeError, "dim must be an integer"),
        ((1, 6), {}, {}, ValueError, r"g must have shape \(4, 1\) or \(4,\)"),
        ((4,), {}, {"dim": None}, ValueError, r"g must have shape \(\)"),
        ((4, 1), {}, {"backend": "gpu"}, ValueError, "unknown backend"),
    ],
)
def test_bad_input_is_refused_clearly(g_shape, v_args, kwargs, error, match):
    v = np.ones((4, 6), **v_args)
    with pytest.raises(error, match=match):
        weight_norm(np.ones(g_shape), v, **kwargs)


def test_a_non_float_g_and_a_mismatched_gradient_are_refused():
    with pytest.raises(TypeError, match="g must be a real floating-point"):
        weight_norm(np.ones((4, 1), np.int32), np.ones((4, 6)))
    _, saved = weight_norm_forward(np.ones((4, 1)), np.ones((4, 6)))
    with pytest.raises(ValueError, match=r"dw must have shape \(4, 6\)"):
        weight_norm_backward(np.ones((6, 4)), saved)
    with pytest.raises(TypeError, match="dw must have the dtype of v"):
        weight_norm_backward(np.ones((4, 6), np.float32), saved)
