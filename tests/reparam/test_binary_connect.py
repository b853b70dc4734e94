"""BinaryConnect: deterministic and stochastic binarization, the documented random stream, the
straight-through gradient against finite differences of its surrogate and against a torch STE,
NaN handling, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp
from torch_peers import torch_reparam_ops

from normref.reparam.binary_connect import (
    binary_connect,
    binary_connect_backward,
    binary_connect_forward,
    binary_connect_variant,
)

torch = pytest.importorskip("torch", reason="PyTorch is the independent implementation")
TORCH = torch_reparam_ops(torch)


def test_deterministic_is_the_sign_with_zero_going_up():
    w = np.array([-2.0, -0.3, -0.0, 0.0, 1e-300, 0.4, 3.0])
    np.testing.assert_array_equal(binary_connect(w), [-1, -1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(binary_connect(w, scale=0.25), 0.25 * binary_connect(w))
    # torch.sign's convention is the named variant
    np.testing.assert_array_equal(
        binary_connect_variant(w, sign_zero_is_zero=True), [-1, -1, 0, 0, 1, 1, 1]
    )


def test_stochastic_uses_the_documented_stream_and_is_reproducible():
    w = np.random.default_rng(0).uniform(-1.5, 1.5, size=(20, 30))
    got = binary_connect(w, stochastic=True, seed=7)
    uniforms = np.random.Generator(np.random.PCG64(7)).random(w.shape)
    p = np.clip((w + 1) / 2, 0, 1)
    np.testing.assert_array_equal(got, np.where(uniforms < p, 1.0, -1.0))
    np.testing.assert_array_equal(binary_connect(w, stochastic=True, seed=7), got)
    assert not np.array_equal(binary_connect(w, stochastic=True, seed=8), got)
    # outside [-scale, scale] the draw is certain
    assert np.all(got[w >= 1] == 1) and np.all(got[w <= -1] == -1)


def test_stochastic_frequency_is_the_hard_sigmoid():
    w = np.repeat(np.array([-0.8, -0.2, 0.0, 0.5]), 20000).reshape(4, -1)
    freq = (binary_connect(w, stochastic=True, seed=1, scale=2.0) > 0).mean(axis=1)
    expected = np.clip((w[:, 0] / 2.0 + 1) / 2, 0, 1)
    # 20000 draws: the standard error is at most 0.0036
    np.testing.assert_allclose(freq, expected, atol=0.015)


@pytest.mark.parametrize("mask_gradient", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_straight_through_gradient_is_the_gradient_of_its_surrogate(scale, mask_gradient):
    """The STE treats w_b as the clipped identity clip(w, -scale, scale) (BinaryNet, Larq) or as
    the identity (unmasked): its gradient is the finite-difference gradient of that surrogate
    (away from the clip points, where finite differences straddle the kink)."""
    rng = np.random.default_rng(2)
    w = rng.uniform(-2, 2, size=(5, 6))
    w = w[np.abs(np.abs(w) - scale) > 1e-3].reshape(-1)
    dw_b = rng.normal(size=w.shape)
    _, saved = binary_connect_forward(w, scale=scale, mask_gradient=mask_gradient)
    analytic = binary_connect_backward(dw_b, saved)

    def surrogate(w):
        return np.clip(w, -scale, scale) if mask_gradient else w

    assert_gradients_match(analytic, numerical_vjp(surrogate, [w], dw_b), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "hyper",
    [
        {"stochastic": False, "seed": None, "scale": 1.0, "mask_gradient": True},
        {"stochastic": True, "seed": 3, "scale": 0.5, "mask_gradient": True},
        {"stochastic": False, "seed": None, "scale": 1.0, "mask_gradient": False},
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_matches_a_torch_straight_through_estimator(hyper, dtype):
    rng = np.random.default_rng(4)
    w = rng.uniform(-2, 2, size=(6, 7)).astype(dtype)
    w[0, 0], w[0, 1] = 0.0, hyper["scale"]  # the sign's and the window's edges
    dw_b = rng.normal(size=w.shape).astype(dtype)
    tw = torch.tensor(w, requires_grad=True)
    tb = TORCH["binary_connect"](tw, **hyper)
    tb.backward(torch.tensor(dw_b))
    w_b, saved = binary_connect_forward(w, **hyper)
    (dw,) = binary_connect_backward(dw_b, saved)
    assert w_b.dtype == dw.dtype == dtype
    np.testing.assert_array_equal(w_b, tb.detach().numpy())
    np.testing.assert_array_equal(dw, tw.grad.numpy())


def test_nan_stays_nan_in_both_directions():
    w = np.array([0.5, np.nan, -3.0])
    w_b, saved = binary_connect_forward(w)
    assert np.isnan(w_b[1]) and w_b[0] == 1 and w_b[2] == -1
    (dw,) = binary_connect_backward(np.array([1.0, 2.0, 3.0]), saved)
    np.testing.assert_array_equal(dw[[0, 2]], [1.0, 0.0])
    assert np.isnan(dw[1])
    assert np.isnan(binary_connect(w, stochastic=True, seed=0)[1])


@pytest.mark.parametrize(
    "w, kwargs, error, match",
    [
        (np.ones(3, np.int8), {}, TypeError, "w must be a real floating-point"),
        (np.ones(3), {"stochastic": True}, ValueError, "stochastic=True needs an explicit seed"),
        (np.ones(3), {"stochastic": True, "seed": -1}, ValueError, "seed must be an integer >= 0"),
        (np.ones(3), {"stochastic": True, "seed": 1.5}, TypeError, "seed must be an integer"),
        (np.ones(3), {"stochastic": 1}, TypeError, "stochastic must be True or False"),
        (np.ones(3), {"scale": 0.0}, ValueError, "scale must be a finite number > 0"),
        (np.ones(3), {"mask_gradient": None}, TypeError, "mask_gradient must be True or False"),
    ],
)
def test_bad_input_is_refused_clearly(w, kwargs, error, match):
    with pytest.raises(error, match=match):
        binary_connect(w, **kwargs)


def test_a_mismatched_gradient_is_refused():
    _, saved = binary_connect_forward(np.ones(3))
    with pytest.raises(ValueError, match=r"dw_b must have shape \(3,\)"):
        binary_connect_backward(np.ones(4), saved)
    with pytest.raises(TypeError, match="dw_b must have the dtype of w"):
        binary_connect_backward(np.ones(3, np.float32), saved)
