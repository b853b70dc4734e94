"""Weight compander: finite differences for v and for learnable a, b, torch autograd, the
paper's properties (bounded weights, initialization by the inverse), numerics, errors."""

import math

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp
from torch_peers import torch_reparam_ops

from normref.reparam.weight_compander import (
    weight_compander,
    weight_compander_backward,
    weight_compander_forward,
    weight_compander_init,
)

torch = pytest.importorskip("torch", reason="PyTorch is the independent implementation")
TORCH = torch_reparam_ops(torch)


def make(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (1.5 * rng.normal(size=shape)).astype(dtype), rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (0.7, 0.6), (0.5, 1.0), (None, 0.8)])
def test_backward_for_fixed_hyperparameters_matches_finite_differences(a, b):
    v, dw = make((4, 5))
    _, saved = weight_compander_forward(v, a, b)
    dv, da, db = weight_compander_backward(dw, saved)
    assert da is None and db is None
    numeric = numerical_vjp(lambda v: weight_compander(v, a, b), [v], dw)
    assert_gradients_match([dv], numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [((), ()), ((1,), ()), ((3, 1, 1), (1, 4)), ((), (3, 2, 4))],  # coarse/fine and broadcasts
)
def test_learnable_a_and_b_gradients_match_finite_differences(a_shape, b_shape):
    rng = np.random.default_rng(1)
    v, dw = make((3, 2, 4), seed=2)
    a = 0.5 + rng.random(a_shape)
    b = 0.5 + rng.random(b_shape)
    _, saved = weight_compander_forward(v, a, b)
    analytic = weight_compander_backward(dw, saved)
    assert analytic[1].shape == a_shape and analytic[2].shape == b_shape
    numeric = numerical_vjp(weight_compander, [v, a, b], dw)
    assert_gradients_match(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_matches_torch_autograd_with_learnable_a_and_b(dtype, tol):
    v, dw = make((5, 6), dtype, seed=3)
    a, b = np.asarray(0.7, dtype), np.asarray(0.6, dtype)
    tv, ta, tb = (torch.tensor(x, requires_grad=True) for x in (v, a, b))
    tw = TORCH["weight_compander"](tv, ta, tb)
    tw.backward(torch.tensor(dw))
    w, saved = weight_compander_forward(v, a, b)
    grads = weight_compander_backward(dw, saved)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=tol, atol=tol)
    for ours, theirs in zip(grads, (tv, ta, tb)):
        assert ours.dtype == dtype and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=tol, atol=tol * 30)


def test_weights_stay_inside_a_pi_over_2_and_the_slope_is_largest_at_zero():
    v = np.array([-1e300, -1e6, -1.0, 0.0, 1.0, 1e6, 1e300])
    w, saved = weight_compander_forward(v, 0.6, 0.7)
    assert np.all(np.abs(w) < 0.6 * math.pi / 2 + 1e-15)
    dv, _, _ = weight_compander_backward(np.ones_like(v), saved)
    np.testing.assert_allclose(dv[3], 0.6 / 0.7)
    assert np.all(dv <= dv[3]) and np.all(np.isfinite(dv))
    assert dv[0] == 0.0 and dv[-1] == 0.0  # the slope's limit, without overflowing t^2


def test_init_inverts_the_compander_and_refuses_weights_out_of_its_range():
    rng = np.random.default_rng(4)
    w = 0.3 * rng.normal(size=(6, 4))
    for a, b in ((1.0, 1.0), (0.7, 0.6), (np.asarray(0.8), np.asarray(0.5))):
        v = weight_compander_init(w, a, b)
        np.testing.assert_allclose(weight_compander(v, a, b), w, rtol=1e-13, atol=1e-16)
    with pytest.raises(ValueError, match=r"every \|w\| must be < a \* pi / 2"):
        weight_compander_init(np.array([0.1, 0.8]), 0.5, 1.0)


def test_float16_and_float32_follow_the_dtype_rules():
    v, dw = make((4, 8), np.float16, seed=5)
    w, saved = weight_compander_forward(v, 0.7, 0.6)
    assert w.dtype == np.float16
    np.testing.assert_allclose(
        w, weight_compander(v.astype(np.float64), 0.7, 0.6), rtol=2**-10, atol=2**-14
    )
    a32 = np.asarray(0.7, np.float32)
    w32, saved32 = weight_compander_forward(v.astype(np.float32), a32, 0.6)
    dv, da, db = weight_compander_backward(dw.astype(np.float32), saved32)
    assert w32.dtype == dv.dtype == da.dtype == np.float32 and db is None


def test_nan_propagates_elementwise():
    v, dw = make((2, 3), seed=6)
    v[1, 1] = np.nan
    a = np.asarray(0.9)
    w, saved = weight_compander_forward(v, a)
    dv, da, _ = weight_compander_backward(dw, saved)
    assert np.isnan(w[1, 1]) and np.sum(np.isnan(w)) == 1
    assert np.isnan(dv[1, 1]) and np.sum(np.isnan(dv)) == 1 and np.isnan(da)


@pytest.mark.parametrize(
    "v, a, b, error, match",
    [
        (np.ones(3, np.int64), 1.0, 1.0, TypeError, "v must be a real floating-point"),
        (np.ones(3), 0.0, 1.0, ValueError, "a must be a finite number > 0"),
        (np.ones(3), 1.0, -1.0, ValueError, "b must be a finite number > 0"),
        (np.ones(3), "1", 1.0, TypeError, "a must be a real number > 0"),
        (np.ones(3), np.ones(2), 1.0, ValueError, r"a must broadcast to v's shape \(3,\)"),
        (np.ones(3), 1.0, np.ones(3, np.int32), TypeError, "b must be a real floating-point"),
    ],
)
def test_bad_input_is_refused_clearly(v, a, b, error, match):
    with pytest.raises(error, match=match):
        weight_compander(v, a, b)


def test_golden_cases_with_learnable_a_b_draw_them_positive():
    """The registry draws learnable a, b near 1 (the compander needs a, b > 0, which the generic
    draw does not keep): every shipped case that has them, in every dtype, has them positive."""
    from normref.golden import load_cases

    cases = [(c, arrays) for c, arrays in load_cases() if c.op == "weight_compander"]
    learnable = [(c, arrays) for c, arrays in cases if "a" in c.inputs and "b" in c.inputs]
    assert {c.dtype for c, _ in learnable} == {"float64", "float32", "float16"}
    for case, arrays in learnable:
        assert np.all(arrays["input.a"] > 0) and np.all(arrays["input.b"] > 0), case.id
        assert "grad.a" in arrays and "grad.b" in arrays, case.id
