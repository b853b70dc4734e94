"""Adamax against optax.adamax; its first step; its Keras variant against a direct
re-derivation; errors. Against torch.optim.Adamax (every option combination, other betas and eps,
a scheduled lr): test_optim_trajectories_vs_torch.py; the contract:
test_optim_contract_checks.py."""

import math

import numpy as np
import pytest
from contract_checks import (
    assert_trajectory_equals,
    assert_variant_equals_direct,
    direct_gradients,
    optax_peer,
    variant_factory,
)

from normref import optim

LR = 7e-3


def test_equals_optax_adamax():
    optax = pytest.importorskip("optax")
    ours = optim.adamax(LR, eps=1e-7)
    assert_trajectory_equals(ours, optax_peer(optax.adamax(LR, eps=1e-7)), steps=30)


def test_first_step_moves_each_element_by_lr():
    """t = 1: m = (1 - b1) g, u = |g| + eps, step lr/(1 - b1) * m / u ~ lr * sign(g)."""
    opt = optim.adamax(0.01)
    p, g = [np.zeros(3)], [np.array([1e-3, -7.0, 250.0])]
    new, state = opt.update(p, g, opt.init(p))
    np.testing.assert_allclose(new[0], -0.01 * g[0] / (np.abs(g[0]) + 1e-8), rtol=1e-12)
    assert state.u[0].tobytes() == (np.abs(g[0]) + 1e-8).tobytes()


# -- the Keras variant --------------------------------------------------------------------------


def _keras_direct(grads, p0, *, lr, b1, b2, eps):
    """keras/src/optimizers/adamax.py::update_step, one scalar at a time."""
    p, m, u = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            m[i] += (gi - m[i]) * (1 - b1)
            u[i] = max(b2 * u[i], abs(gi))
            p[i] -= lr * m[i] / ((1 - b1**t) * (u[i] + eps))
    return p


def test_keras_variant_equals_a_direct_rederivation():
    grads = direct_gradients(5, steps=12, low=-8, zero_step=4)
    p0 = [0.5, -1.0, 2.0]
    variant = variant_factory("adamax", "keras_eps_outside_max")
    expected = _keras_direct(grads, p0, lr=0.01, b1=0.9, b2=0.999, eps=1e-7)
    hyper = dict(lr=0.01, eps=1e-7)
    assert_variant_equals_direct(variant, optim.adamax, hyper, grads, p0, expected, separation=1e-9)


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-3), "adamax: lr must be a finite number >= 0, got -0.001"),
        (dict(betas=(1.0, 0.9)), r"adamax: betas\[0\] must be in \[0, 1\), got 1.0"),
        (dict(betas=(0.9, math.nan)), r"adamax: betas\[1\] must be in \[0, 1\)"),
        (dict(betas=0.9), r"adamax: betas must be a pair \(b1, b2\), got 0.9"),
        (dict(eps=0.0), "adamax: eps must be a finite number > 0, got 0.0"),
        (dict(weight_decay=-1.0), "adamax: weight_decay must be a finite number >= 0"),
        (dict(maximize="yes"), "adamax: maximize must be True or False, got 'yes'"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.adamax(**kwargs)


def test_unknown_variant_is_refused():
    from normref.optim.adamax import adamax_variant

    with pytest.raises(ValueError, match="adamax: unknown variant 'x'; known: keras_eps"):
        adamax_variant("x")
