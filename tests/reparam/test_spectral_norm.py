"""Spectral normalization: finite differences (u, v constant, and the exact sigma), PyTorch's
parametrization over several training steps, state handling, numerics, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp
from torch_peers import torch_spectral_norm_module

from normref.reparam.spectral_norm import (
    spectral_norm,
    spectral_norm_backward,
    spectral_norm_forward,
    spectral_norm_init,
    spectral_norm_variant,
)

torch = pytest.importorskip("torch", reason="PyTorch is the independent implementation")

# (weight shape, dim): Linear, Conv2d, ConvTranspose2d (dim=1), a negative dim
LAYOUTS = [((5, 3), 0), ((4, 2, 3, 3), 0), ((3, 4, 2, 2), 1), ((2, 3, 4), -1)]


def matrix_shape(shape, dim):
    dim %= len(shape)
    return shape[dim], int(np.prod(shape)) // shape[dim]


def make(shape, dim, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    h, rest = matrix_shape(shape, dim)
    weight = rng.normal(size=shape).astype(dtype)
    u = rng.normal(size=h).astype(dtype)
    v = rng.normal(size=rest).astype(dtype)
    dw = rng.normal(size=shape).astype(dtype)
    return weight, u, v, dw


@pytest.mark.parametrize("shape, dim", LAYOUTS)
def test_backward_is_the_gradient_with_u_and_v_held_constant(shape, dim):
    """The training-mode backward equals the finite-difference gradient of weight / (u . W v)
    with u, v fixed at the values the power steps produced (eval mode is exactly that map)."""
    weight, u, v, dw = make(shape, dim)
    _, u1, v1, saved = spectral_norm_forward(weight, u, v, dim=dim, n_power_iterations=2)
    analytic = spectral_norm_backward(dw, saved)

    def fixed(weight):
        return spectral_norm(weight, u1, v1, dim=dim, training=False)[0]

    assert_gradients_match(analytic, numerical_vjp(fixed, [weight], dw), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape, dim", LAYOUTS[:3])
def test_exact_mode_is_the_exact_gradient_of_weight_over_its_largest_singular_value(
    shape, dim, training
):
    weight, u, v, dw = make(shape, dim, seed=1)
    w, _, _, saved = spectral_norm_forward(weight, u, v, dim=dim, exact=True, training=training)
    moved = np.moveaxis(weight, dim, 0).reshape(matrix_shape(shape, dim))
    np.testing.assert_allclose(w, weight / np.linalg.norm(moved, 2), rtol=1e-13)

    def true_map(weight):
        mat = np.moveaxis(weight, dim, 0).reshape(matrix_shape(shape, dim))
        return weight / np.linalg.svd(mat, compute_uv=False)[0]

    analytic = spectral_norm_backward(dw, saved)
    assert_gradients_match(analytic, numerical_vjp(true_map, [weight], dw), rtol=1e-6, atol=1e-9)


def test_exact_state_is_the_top_singular_pair_signed_like_the_given_u():
    weight, u, v, _ = make((5, 3), 0, seed=2)
    _, u1, v1 = spectral_norm(weight, u, v, exact=True)
    left, s, right_t = np.linalg.svd(weight)
    sign = np.sign(left[:, 0] @ u)
    np.testing.assert_allclose(u1, sign * left[:, 0], atol=1e-14)
    np.testing.assert_allclose(v1, sign * right_t[0], atol=1e-14)
    assert u1 @ u > 0
    # many power steps converge to the same pair
    _, u_pow, v_pow = spectral_norm(weight, u, v, n_power_iterations=500)
    np.testing.assert_allclose(np.abs(u_pow @ u1), 1.0, atol=1e-10)


@pytest.mark.parametrize("shape, dim", LAYOUTS)
def test_init_matches_torch_which_starts_from_the_same_random_vectors(shape, dim):
    weight, _, _, _ = make(shape, dim, seed=3)
    h, rest = matrix_shape(shape, dim)
    # _SpectralNorm draws u then v with normal_ on the weight's dtype, then 15 power steps.
    torch.manual_seed(11)
    u0 = torch.empty(h, dtype=torch.float64).normal_(0, 1).numpy()
    v0 = torch.empty(rest, dtype=torch.float64).normal_(0, 1).numpy()
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(torch.tensor(weight))
    torch.manual_seed(11)
    torch.nn.utils.parametrizations.spectral_norm(holder, dim=dim % len(shape))
    module = holder.parametrizations.weight[0]
    # 15 power steps in the constructor, and one more: register_parametrization calls the
    # parametrization once (training mode) to check its output's shape and dtype.
    u, v = spectral_norm_init(weight, u0, v0, dim=dim, n_power_iterations=15 + 1)
    np.testing.assert_allclose(u, module._u.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v, module._v.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape, dim", LAYOUTS[:3])
def test_trajectory_matches_torch_parametrization_over_training_steps(shape, dim, dtype, tol):
    """Six SGD steps through PyTorch's parametrization and through normref, each framework with
    its own gradients: weight, u, v and the gradient agree at every step; then eval steps."""
    weight, u, v, _ = make(shape, dim, dtype, seed=4)
    rng = np.random.default_rng(5)
    module = torch_spectral_norm_module(
        torch, torch.tensor(weight), dim=dim, n_power_iterations=1, eps=1e-12
    )
    with torch.no_grad():
        module._u.copy_(torch.tensor(u))
        module._v.copy_(torch.tensor(v))
    tweight = torch.tensor(weight, requires_grad=True)
    for step in range(8):
        training = step < 6
        module.train(training)
        dw = rng.normal(size=shape).astype(dtype)
        tw = module(tweight)
        tw.backward(torch.tensor(dw))
        w, u, v, saved = spectral_norm_forward(weight, u, v, dim=dim, training=training)
        (dweight,) = spectral_norm_backward(dw, saved)
        assert w.dtype == u.dtype == v.dtype == dweight.dtype == dtype
        np.testing.assert_allclose(w, tw.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(u, module._u.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(v, module._v.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(dweight, tweight.grad.numpy(), rtol=tol, atol=tol)
        with torch.no_grad():
            tweight -= 0.1 * tweight.grad
            tweight.grad = None
        weight = (weight - dtype(0.1) * dweight).astype(dtype)
        np.testing.assert_allclose(weight, tweight.detach().numpy(), rtol=10 * tol, atol=10 * tol)


def test_one_dimensional_weight_is_divided_by_its_norm_as_in_pytorch():
    rng = np.random.default_rng(6)
    x, dw = rng.normal(size=7), rng.normal(size=7)
    w, u, v, saved = spectral_norm_forward(x)
    assert u is None and v is None
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.nn.functional.normalize(tx, dim=0, eps=1e-12)
    tw.backward(torch.tensor(dw))
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(spectral_norm_backward(dw, saved)[0], tx.grad.numpy(), rtol=1e-12)
    assert_gradients_match(
        spectral_norm_backward(dw, saved),
        numerical_vjp(lambda x: spectral_norm(x)[0], [x], dw),
        rtol=1e-6,
        atol=1e-9,
    )
    # a norm under eps is clamped: w = x / eps, gradient dw / eps
    tiny = 1e-14 * x
    w, _, _, saved = spectral_norm_forward(tiny, eps=1e-12)
    np.testing.assert_allclose(w, tiny / 1e-12)
    np.testing.assert_allclose(spectral_norm_backward(dw, saved)[0], dw / 1e-12)


def test_eval_returns_the_same_state_and_training_never_mutates_it():
    weight, u, v, _ = make((4, 3), 0, seed=7)
    u_copy, v_copy = u.copy(), v.copy()
    w, new_u, new_v = spectral_norm(weight, u, v, training=False)
    assert new_u is u and new_v is v
    np.testing.assert_allclose(w, weight / (u @ weight @ v), rtol=1e-14)
    _, new_u, new_v = spectral_norm(weight, u, v, n_power_iterations=3)
    np.testing.assert_array_equal(u, u_copy)
    np.testing.assert_array_equal(v, v_copy)
    assert not np.allclose(new_u, u)
    # zero power steps in training mode use the state as given, like eval mode
    w0, u0, v0 = spectral_norm(weight, u, v, n_power_iterations=0)
    np.testing.assert_array_equal(w0, w)
    np.testing.assert_array_equal(u0, u)


def test_training_reads_only_v_and_start_from_u_reads_only_u():
    weight, u, v, _ = make((4, 3), 0, seed=8)
    other = np.random.default_rng(9).normal(size=4)
    w1 = spectral_norm(weight, u, v)[0]
    w2 = spectral_norm(weight, other, v)[0]
    np.testing.assert_array_equal(w1, w2)
    f1 = spectral_norm_variant(weight, u, v, start_from_u=True)[0]
    f2 = spectral_norm_variant(weight, u, 2 * v + 1, start_from_u=True)[0]
    np.testing.assert_array_equal(f1, f2)
    assert not np.allclose(f1, w1)


def test_float16_computes_in_float32_and_rounds_once():
    weight, u, v, dw = make((6, 10), 0, np.float16, seed=10)
    w, nu, nv, saved = spectral_norm_forward(weight, u, v)
    assert w.dtype == nu.dtype == nv.dtype == np.float16 and saved.sigma.dtype == np.float32
    exact, eu, ev, s64 = spectral_norm_forward(*(a.astype(np.float64) for a in (weight, u, v)))
    for got, want in ((w, exact), (nu, eu), (nv, ev)):
        np.testing.assert_allclose(got, want, rtol=2**-10, atol=2**-14)
    (dweight,) = spectral_norm_backward(dw, saved)
    assert dweight.dtype == np.float16
    (exact_d,) = spectral_norm_backward(dw.astype(np.float64), s64)
    np.testing.assert_allclose(dweight, exact_d, rtol=2**-10, atol=2**-12)


def test_nan_in_the_weight_propagates():
    weight, u, v, dw = make((3, 4), 0, seed=11)
    weight[1, 2] = np.nan
    w, nu, nv, saved = spectral_norm_forward(weight, u, v)
    assert np.all(np.isnan(w)) and np.all(np.isnan(spectral_norm_backward(dw, saved)[0]))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (("int", "u", "v"), {}, TypeError, "weight must be a real floating-point"),
        (("w", "u", "v"), {"dim": 2}, ValueError, r"dim must be in \[-2, 1\]"),
        (("w", "u", "v"), {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        (("w", "u", "v"), {"eps": -1.0}, ValueError, "eps must be a finite number > 0"),
        (("w", "u", "v"), {"n_power_iterations": -1}, ValueError, "n_power_iterations must be"),
        (("w", "u", "v"), {"n_power_iterations": 1.5}, TypeError, "n_power_iterations must be"),
        (("w", "u", "v"), {"training": "yes"}, TypeError, "training must be True or False"),
        (("w", "v", "u"), {}, ValueError, r"u must have shape \(4,\)"),
        (("w", "u", "u"), {}, ValueError, r"v must have shape \(3,\)"),
        (("w", None, "v"), {}, ValueError, "u is required"),
        (("w", "u", "v"), {"backend": "tpu"}, ValueError, "unknown backend"),
    ],
)
def test_bad_input_is_refused_clearly(args, kwargs, error, match):
    values = {
        "w": np.ones((4, 3)),
        "int": np.ones((4, 3), np.int64),
        "u": np.ones(4),
        "v": np.ones(3),
        None: None,
    }
    with pytest.raises(error, match=match):
        spectral_norm(*(values[a] for a in args), **kwargs)


def test_state_given_for_a_vector_and_a_mismatched_gradient_are_refused():
    with pytest.raises(ValueError, match="1-D weight .* keeps no state"):
        spectral_norm(np.ones(3), np.ones(3), np.ones(1))
    _, _, _, saved = spectral_norm_forward(np.eye(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"dw must have shape \(3, 3\)"):
        spectral_norm_backward(np.ones((3, 2)), saved)
    with pytest.raises(TypeError, match="u must be a real floating-point"):
        spectral_norm(np.eye(3), np.ones(3, np.int32), np.ones(3))
