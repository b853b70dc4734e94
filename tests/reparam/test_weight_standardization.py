"""Weight standardization: finite differences, the authors' PyTorch formula under autograd, the
peers' variants against their own code, numerics, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp
from torch_peers import torch_reparam_ops

from normref.reparam.weight_standardization import (
    weight_standardization,
    weight_standardization_backward,
    weight_standardization_forward,
    weight_standardization_variant,
)

torch = pytest.importorskip("torch", reason="PyTorch is the independent implementation")
TORCH = torch_reparam_ops(torch)

SHAPES = [(4, 3, 3, 3), (5, 7), (3, 2), (2, 4, 5)]


def make(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    weight = 0.3 * rng.normal(size=shape) + rng.normal(size=shape[:1] + (1,) * (len(shape) - 1))
    return weight.astype(dtype), rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_finite_differences(shape, eps):
    weight, dw = make(shape)
    _, saved = weight_standardization_forward(weight, eps=eps)
    analytic = weight_standardization_backward(dw, saved)
    numeric = numerical_vjp(lambda w: weight_standardization(w, eps=eps), [weight], dw)
    assert_gradients_match(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_authors_formula_under_torch_autograd(shape, dtype, tol):
    weight, dw = make(shape, dtype, seed=1)
    tweight = torch.tensor(weight, requires_grad=True)
    tw = TORCH["weight_standardization"](tweight, eps=1e-5)
    tw.backward(torch.tensor(dw))
    w, saved = weight_standardization_forward(weight)
    (dweight,) = weight_standardization_backward(dw, saved)
    assert w.dtype == dweight.dtype == dtype
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=tol, atol=tol)
    # The gradient is a difference of terms of size |dw| / std that cancel almost exactly for a
    # fan-in of 2 (standardizing 2 numbers leaves only +-1/sqrt(2)): measure errors on that scale.
    scale = np.max(np.abs(dw)) / np.min(saved.std)
    np.testing.assert_allclose(dweight, tweight.grad.numpy(), rtol=tol, atol=tol * scale)


def test_each_channel_has_mean_zero_and_unbiased_std_just_under_one():
    weight, _ = make((6, 2, 5))
    w = weight_standardization(weight).reshape(6, -1)
    np.testing.assert_allclose(w.mean(axis=1), 0.0, atol=1e-15)
    std = weight.reshape(6, -1).std(axis=1, ddof=1)
    np.testing.assert_allclose(w.std(axis=1, ddof=1), std / (std + 1e-5), rtol=1e-13)


def test_variants_match_the_peers_code():
    """timm's StdConv2d (F.batch_norm over the weight, eps 1e-6), BiT's StdConv2d
    (var_mean unbiased=False, sqrt(v + 1e-10)), the authors' TensorFlow snippet (population
    std + 1e-5), each written here with torch as in those sources."""
    weight, _ = make((4, 3, 3, 3), seed=2)
    t = torch.tensor(weight)
    timm = torch.nn.functional.batch_norm(
        t.reshape(1, 4, -1), None, None, training=True, momentum=0.0, eps=1e-6
    ).reshape_as(t)
    var, mean = torch.var_mean(t, dim=[1, 2, 3], keepdim=True, unbiased=False)
    bit = (t - mean) / torch.sqrt(var + 1e-10)
    tf_snippet = (t - mean) / (torch.sqrt(var) + 1e-5)
    cases = [
        (timm, {"unbiased": False, "eps_inside_sqrt": True, "eps": 1e-6}),
        (bit, {"unbiased": False, "eps_inside_sqrt": True, "eps": 1e-10}),
        (tf_snippet, {"unbiased": False, "eps": 1e-5}),
    ]
    for expected, convention in cases:
        got = weight_standardization_variant(weight, **convention)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        weight_standardization_variant(weight), weight_standardization(weight), rtol=1e-13
    )


def test_large_offset_float32_channels_standardize_correctly():
    rng = np.random.default_rng(3)
    weight = (1e4 + 1e-3 * rng.normal(size=(3, 200))).astype(np.float32)
    dw = rng.normal(size=(3, 200)).astype(np.float32)
    w, saved = weight_standardization_forward(weight)
    exact, saved64 = weight_standardization_forward(weight.astype(np.float64))
    np.testing.assert_allclose(w, exact, rtol=1e-4, atol=1e-4)
    (d32,) = weight_standardization_backward(dw, saved)
    (d64,) = weight_standardization_backward(dw.astype(np.float64), saved64)
    np.testing.assert_allclose(d32, d64, rtol=1e-3, atol=1e-4 * np.max(np.abs(d64)))


def test_a_constant_channel_gives_zero_and_a_finite_gradient():
    weight, dw = make((3, 5), seed=4)
    weight[1] = 0.25
    w, saved = weight_standardization_forward(weight)
    np.testing.assert_array_equal(w[1], 0.0)
    (dweight,) = weight_standardization_backward(dw, saved)
    assert np.all(np.isfinite(dweight))
    # only the centring remains there: (g - mean(g)) / eps
    np.testing.assert_allclose(dweight[1], (dw[1] - dw[1].mean()) / 1e-5, rtol=1e-12)


def test_nan_propagates_to_its_channel_only():
    weight, dw = make((3, 5), seed=5)
    weight[0, 3] = np.nan
    w, saved = weight_standardization_forward(weight)
    (dweight,) = weight_standardization_backward(dw, saved)
    assert np.all(np.isnan(w[0])) and np.all(np.isfinite(w[1:]))
    assert np.all(np.isnan(dweight[0])) and np.all(np.isfinite(dweight[1:]))


def test_float16_computes_in_float32_and_rounds_once():
    weight, dw = make((4, 30), np.float16, seed=6)
    w, saved = weight_standardization_forward(weight)
    assert w.dtype == np.float16 and saved.std.dtype == np.float32
    exact, saved64 = weight_standardization_forward(weight.astype(np.float64))
    np.testing.assert_allclose(w, exact, rtol=2**-10, atol=2**-14)
    (dweight,) = weight_standardization_backward(dw, saved)
    (d64,) = weight_standardization_backward(dw.astype(np.float64), saved64)
    assert dweight.dtype == np.float16
    np.testing.assert_allclose(dweight, d64, rtol=2**-9, atol=2**-9 * np.max(np.abs(d64)))


@pytest.mark.parametrize(
    "weight, kwargs, error, match",
    [
        (np.ones((3, 4), np.int32), {}, TypeError, "weight must be a real floating-point"),
        (np.ones(4), {}, ValueError, r"at least 2 dimensions \(C_out, \*fan_in\)"),
        (np.ones((4, 1, 1)), {}, ValueError, "at least 2 values for the unbiased"),
        (np.ones((3, 4)), {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        (np.ones((3, 4)), {"eps": -1e-5}, ValueError, "eps must be a finite number > 0"),
        (
            np.ones((3, 4), np.float16),
            {"backend": "numba"},
            TypeError,
            "backend='numba' takes float32, float64, got float16",
        ),
    ],
)
def test_bad_input_is_refused_clearly(weight, kwargs, error, match):
    with pytest.raises(error, match=match):
        weight_standardization(weight, **kwargs)


def test_a_mismatched_gradient_is_refused():
    _, saved = weight_standardization_forward(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"dw must have shape \(3, 4\)"):
        weight_standardization_backward(np.ones((4, 3)), saved)
    with pytest.raises(TypeError, match="dw must have the dtype of weight"):
        weight_standardization_backward(np.ones((3, 4), np.float32), saved)
