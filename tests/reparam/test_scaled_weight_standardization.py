"""Scaled weight standardization: finite differences (with and without gain, floor active or
not), DeepMind's formula under torch autograd, timm's variant against timm's code, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp
from torch_peers import torch_reparam_ops

from normref.reparam.scaled_weight_standardization import (
    scaled_weight_standardization,
    scaled_weight_standardization_backward,
    scaled_weight_standardization_forward,
    scaled_weight_standardization_variant,
)

torch = pytest.importorskip("torch", reason="PyTorch is the independent implementation")
TORCH = torch_reparam_ops(torch)
RELU_GAMMA = 1.7139588594436646  # deepmind-research nfnets/base.py, nonlinearities['relu']

# (weight shape, gain shape or None, hyperparameters)
CASES = [
    ((4, 3, 3, 3), (4,), {}),
    ((5, 7), (5, 1), {"gamma": RELU_GAMMA}),
    ((3, 2, 4), None, {}),
    ((3, 6), (3,), {"eps": 10.0}),  # N * var below the floor: the scale is a constant
    ((2, 1), (2,), {}),  # a fan-in of 1: always under the floor, w = 0
]


def make(shape, gain_shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=shape).astype(dtype)
    gain = None if gain_shape is None else (1 + 0.3 * rng.normal(size=gain_shape)).astype(dtype)
    return weight, gain, rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("shape, gain_shape, hyper", CASES)
def test_backward_matches_finite_differences(shape, gain_shape, hyper):
    weight, gain, dw = make(shape, gain_shape)
    _, saved = scaled_weight_standardization_forward(weight, gain, **hyper)
    analytic = scaled_weight_standardization_backward(dw, saved)

    def f(weight, gain):
        return scaled_weight_standardization(weight, gain, **hyper)

    assert_gradients_match(analytic, numerical_vjp(f, [weight, gain], dw), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape, gain_shape, hyper", CASES)
def test_matches_deepminds_formula_under_torch_autograd(shape, gain_shape, hyper, dtype, tol):
    weight, gain, dw = make(shape, gain_shape, dtype, seed=1)
    hyper = {"gamma": 1.0, "eps": 1e-4, **hyper}
    tweight = torch.tensor(weight, requires_grad=True)
    tgain = None if gain is None else torch.tensor(gain, requires_grad=True)
    tw = TORCH["scaled_weight_standardization"](tweight, tgain, **hyper)
    tw.backward(torch.tensor(dw))
    w, saved = scaled_weight_standardization_forward(weight, gain, **hyper)
    dweight, dgain = scaled_weight_standardization_backward(dw, saved)
    assert w.dtype == dweight.dtype == dtype
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dweight, tweight.grad.numpy(), rtol=tol, atol=tol)
    assert (dgain is None) == (gain is None)
    if gain is not None:
        assert dgain.shape == gain.shape and dgain.dtype == dtype
        np.testing.assert_allclose(dgain, tgain.grad.numpy(), rtol=tol, atol=tol)


def test_each_channel_is_centred_with_norm_gamma_times_gain():
    weight, gain, _ = make((4, 2, 3, 3), (4,), seed=2)
    w = scaled_weight_standardization(weight, gain, gamma=RELU_GAMMA).reshape(4, -1)
    np.testing.assert_allclose(w.mean(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), RELU_GAMMA * np.abs(gain), rtol=1e-13)


def test_timm_variant_matches_timm_scaled_std_conv():
    """timm ScaledStdConv2d.forward: F.batch_norm of the weight with weight=(gain * scale),
    scale = gamma * fan_in ** -0.5, eps 1e-6."""
    weight, gain, _ = make((4, 3, 3, 3), (4, 1, 1, 1), seed=3)
    t = torch.tensor(weight)
    scale = RELU_GAMMA * 27**-0.5
    expected = torch.nn.functional.batch_norm(
        t.reshape(1, 4, -1),
        None,
        None,
        weight=(torch.tensor(gain) * scale).view(-1),
        training=True,
        momentum=0.0,
        eps=1e-6,
    ).reshape_as(t)
    got = scaled_weight_standardization_variant(weight, gain, gamma=RELU_GAMMA, eps=1e-6, timm=True)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-14)


def test_large_offset_float32_and_float16_rule():
    rng = np.random.default_rng(4)
    weight = (1e4 + 1e-2 * rng.normal(size=(3, 100))).astype(np.float32)
    w = scaled_weight_standardization(weight)
    exact = scaled_weight_standardization(weight.astype(np.float64))
    np.testing.assert_allclose(w, exact, rtol=1e-4, atol=1e-5)
    half, gain, dw = make((4, 20), (4,), np.float16, seed=5)
    w16, saved = scaled_weight_standardization_forward(half, gain)
    assert w16.dtype == np.float16 and saved.rscale.dtype == np.float32
    w64, saved64 = scaled_weight_standardization_forward(
        half.astype(np.float64), gain.astype(np.float64)
    )
    np.testing.assert_allclose(w16, w64, rtol=2**-10, atol=2**-14)
    d16 = scaled_weight_standardization_backward(dw, saved)
    d64 = scaled_weight_standardization_backward(dw.astype(np.float64), saved64)
    for got, want in zip(d16, d64):
        assert got.dtype == np.float16
        np.testing.assert_allclose(got, want, rtol=2**-9, atol=2**-9 * np.max(np.abs(want)))


def test_a_constant_channel_gives_zero_and_a_finite_gradient():
    weight, gain, dw = make((3, 5), (3,), seed=6)
    weight[2] = -1.5
    w, saved = scaled_weight_standardization_forward(weight, gain)
    np.testing.assert_array_equal(w[2], 0.0)
    dweight, dgain = scaled_weight_standardization_backward(dw, saved)
    assert np.all(np.isfinite(dweight)) and dgain[2] == 0.0


@pytest.mark.parametrize(
    "weight, gain, kwargs, error, match",
    [
        (np.ones((3, 4), np.int32), None, {}, TypeError, "weight must be a real floating-point"),
        (np.ones((3, 4)), np.ones(3, np.int32), {}, TypeError, "gain must be a real floating"),
        (np.ones(4), None, {}, ValueError, "at least 2 dimensions"),
        (np.ones((3, 4)), np.ones(4), {}, ValueError, r"gain must have shape \(3,\) or \(3, 1\)"),
        (np.ones((3, 4)), None, {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        (np.ones((3, 4)), None, {"gamma": np.inf}, ValueError, "gamma must be a finite number"),
        (np.ones((3, 4)), None, {"gamma": "relu"}, TypeError, "gamma must be a real number"),
    ],
)
def test_bad_input_is_refused_clearly(weight, gain, kwargs, error, match):
    with pytest.raises(error, match=match):
        scaled_weight_standardization(weight, gain, **kwargs)
