"""Adagrad: the state's initial value; its first step; the eps-in-sqrt variant against a direct
re-derivation and optax.adagrad; errors. Against torch.optim.Adagrad (every option combination,
other eps, a scheduled lr): test_optim_trajectories_vs_torch.py; the contract:
test_optim_contract_checks.py."""

import numpy as np
import pytest
from contract_checks import (
    assert_trajectory_equals,
    assert_variant_equals_direct,
    direct_gradients,
    optax_peer,
    variant_factory,
)
from optim_trajectories import normref_trajectory

from normref import optim

LR = 0.03


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
    return variant_factory("adagrad", "eps_in_sqrt")


def _keras_direct(grads, p0, *, lr, s0, eps):
    """keras/src/optimizers/adagrad.py::update_step, scalar by scalar."""
    p, s = list(p0), [s0] * len(p0)
    for g in grads:
        for i, gi in enumerate(g):
            s[i] += gi * gi
            p[i] -= lr * gi / (s[i] + eps) ** 0.5
    return p


def test_eps_in_sqrt_equals_a_direct_rederivation():
    grads = direct_gradients(11, steps=12, low=-5, zero_step=3)
    p0 = [0.5, -1.0, 2.0]
    hyper = dict(lr=0.01, eps=1e-7, initial_accumulator_value=0.1)
    expected = _keras_direct(grads, p0, lr=0.01, s0=0.1, eps=1e-7)
    assert_variant_equals_direct(_variant(), None, hyper, grads, p0, expected)
    # the probe: an accumulator near eps (tiny gradients, s0 = 0)
    tiny = [[np.array([1e-4, -3e-4])] for _ in range(5)]
    p = [np.zeros(2)]
    a = normref_trajectory(_variant()(lr=0.01, eps=1e-7), p, tiny)[-1][0]
    b = normref_trajectory(optim.adagrad(0.01, eps=1e-7), p, tiny)[-1][0]
    assert not np.allclose(a, b, rtol=1e-3, atol=0)


def test_eps_in_sqrt_equals_optax_adagrad():
    optax = pytest.importorskip("optax")
    hyper = dict(initial_accumulator_value=0.1, eps=1e-7)  # optax's defaults
    ours = _variant()(lr=LR, **hyper)
    assert_trajectory_equals(ours, optax_peer(optax.adagrad(LR, **hyper)), steps=30)


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
