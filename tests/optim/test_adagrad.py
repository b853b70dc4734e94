"""Adagrad against torch.optim.Adagrad (single-tensor path), 50 steps, float64 and float32, every
option combination; the eps-in-sqrt variant against a direct re-derivation and optax.adagrad;
the contract; errors."""

import functools

import numpy as np
import pytest
from contract_checks import (
    optax_trajectory,
    torch_factory,
    torch_trajectory_in,
)
from optim_trajectories import (
    assert_trajectories_close,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

from normref import optim
from normref.optim import schedules
from normref.registry import OPTIMIZERS

torch = pytest.importorskip("torch", reason="torch.optim is the implementation checked against")

LR = 0.03


_torch = functools.partial(torch_factory, "Adagrad")


@pytest.mark.parametrize("eps", [1e-3, 1e-12])
def test_other_eps_equal_torch(eps):
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=25)
    ours = normref_trajectory(optim.adagrad(0.5, eps=eps, lr_decay=1.0), params, grads)
    theirs = torch_trajectory_in(dtype, _torch(lr=0.5, eps=eps, lr_decay=1.0), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


def test_scheduled_lr_equals_torch_lambda_lr_on_top_of_lr_decay():
    """A schedule multiplies the lr that lr_decay then divides, as LambdaLR does in PyTorch."""
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    lr = schedules.step_decay(LR, step_size=10, gamma=0.5)
    ours = normref_trajectory(optim.adagrad(lr, lr_decay=0.01), params, grads)
    theirs = torch_trajectory_in(
        dtype,
        _torch(lr=LR, lr_decay=0.01),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: lr(t) / LR),
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_initial_accumulator_value_fills_the_state():
    opt = optim.adagrad(initial_accumulator_value=0.25)
    state = opt.init({"w": np.ones((2, 3), np.float32), "h": np.ones(2, np.float16)})
    assert state.sum_of_squares["w"].dtype == np.float32
    assert state.sum_of_squares["h"].dtype == np.float32  # 16-bit params: float32 state
    assert np.all(state.sum_of_squares["w"] == 0.25) and np.all(state.sum_of_squares["h"] == 0.25)


def test_the_first_step_is_lr_times_sign_and_a_zero_gradient_does_not_move():
    opt = optim.adagrad(0.5)
    p = [np.array([1.0, 1.0, 1.0])]
    new, state = opt.update(p, [np.array([4.0, -0.25, 0.0])], opt.init(p))
    np.testing.assert_allclose(new[0], [0.5, 1.5, 1.0], rtol=1e-9)
    assert new[0][2] == 1.0 and state.sum_of_squares[0][2] == 0.0  # 0 / (0 + eps)


# -- the eps-in-sqrt variant --------------------------------------------------------------------


def _variant():
    return {v.name: v for v in OPTIMIZERS["adagrad"].variants}["eps_in_sqrt"].factory


def _keras_direct(grads, p0, *, lr, s0, eps):
    """keras/src/optimizers/adagrad.py::update_step, scalar by scalar."""
    p, s = list(p0), [s0] * len(p0)
    for g in grads:
        for i, gi in enumerate(g):
            s[i] += gi * gi
            p[i] -= lr * gi / (s[i] + eps) ** 0.5
    return p


def test_eps_in_sqrt_equals_a_direct_rederivation():
    rng = np.random.default_rng(11)
    grads = [list(rng.normal(size=3) * 10.0 ** rng.integers(-5, 1)) for _ in range(12)]
    grads[3] = [0.0, 0.0, 0.0]
    p0 = [0.5, -1.0, 2.0]
    hyper = dict(lr=0.01, eps=1e-7, initial_accumulator_value=0.1)
    sequence = [[np.array(g)] for g in grads]
    ours = normref_trajectory(_variant()(**hyper), [np.array(p0)], sequence)[-1][0]
    expected = _keras_direct(grads, p0, lr=0.01, s0=0.1, eps=1e-7)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    # the probe: an accumulator near eps (tiny gradients, s0 = 0)
    tiny = [[np.array([1e-4, -3e-4])] for _ in range(5)]
    p = [np.zeros(2)]
    a = normref_trajectory(_variant()(lr=0.01, eps=1e-7), p, tiny)[-1][0]
    b = normref_trajectory(optim.adagrad(0.01, eps=1e-7), p, tiny)[-1][0]
    assert not np.allclose(a, b, rtol=1e-3, atol=0)


def test_eps_in_sqrt_equals_optax_adagrad():
    optax = pytest.importorskip("optax")
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=30)
    hyper = dict(initial_accumulator_value=0.1, eps=1e-7)  # optax's defaults
    ours = normref_trajectory(_variant()(lr=LR, **hyper), params, grads)
    theirs = optax_trajectory(optax.adagrad(LR, **hyper), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-0.1), "adagrad: lr must be a finite number >= 0, got -0.1"),
        (dict(lr_decay=-1.0), "adagrad: lr_decay must be a finite number >= 0, got -1.0"),
        (dict(initial_accumulator_value=-0.1), "adagrad: initial_accumulator_value must be a"),
        (dict(eps=0.0), "adagrad: eps must be a finite number > 0, got 0.0"),
        (dict(weight_decay="0"), "adagrad: weight_decay must be a real number >= 0, got '0'"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.adagrad(**kwargs)
