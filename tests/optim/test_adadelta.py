"""Adadelta against optax.adadelta and a direct re-derivation of Keras' update under its
defaults; its first step; errors. Against torch.optim.Adadelta (every option combination, other rho
and eps, a scheduled lr): test_optim_trajectories_vs_torch.py; the contract:
test_optim_contract_checks.py."""

import numpy as np
import pytest
from contract_checks import assert_trajectory_equals, optax_peer
from optim_trajectories import normref_trajectory

from normref import optim
from normref.registry import OPTIMIZERS

LR = 0.7


def test_equals_optax_adadelta():
    optax = pytest.importorskip("optax")
    ours = optim.adadelta(LR, weight_decay=0.01)
    assert_trajectory_equals(ours, optax_peer(optax.adadelta(LR, weight_decay=0.01)), steps=30)


def _keras_direct(grads, p0, *, lr, rho, eps):
    """keras/src/optimizers/adadelta.py::update_step, scalar by scalar."""
    p, acc_g, acc_dx = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    for g in grads:
        for i, gi in enumerate(g):
            acc_g[i] = rho * acc_g[i] + (1 - rho) * gi * gi
            delta = -((acc_dx[i] + eps) ** 0.5 * gi) / (acc_g[i] + eps) ** 0.5
            acc_dx[i] = rho * acc_dx[i] + (1 - rho) * delta * delta
            p[i] += lr * delta
    return p


def test_keras_defaults_variant_is_the_same_formula_with_keras_defaults():
    variant = {v.name: v for v in OPTIMIZERS["adadelta"].variants}["keras_defaults"]
    assert variant.factory is None and dict(variant.overrides) == dict(lr=1e-3, rho=0.95, eps=1e-7)
    rng = np.random.default_rng(3)
    grads = [list(rng.normal(size=3)) for _ in range(10)]
    p0 = [0.5, -1.0, 2.0]
    sequence = [[np.array(g)] for g in grads]
    ours = normref_trajectory(optim.adadelta(**variant.overrides), [np.array(p0)], sequence)
    expected = _keras_direct(grads, p0, lr=1e-3, rho=0.95, eps=1e-7)
    np.testing.assert_allclose(ours[-1][0], expected, rtol=1e-12, atol=1e-15)


def test_the_first_step_is_sqrt_eps_over_rms_g():
    """u = 0 at t = 1: delta = sqrt(eps) / sqrt((1 - rho) g^2 + eps) * g, about sqrt(eps / 0.1)
    for |g| >> sqrt(eps): eps sets the scale of the first steps."""
    opt = optim.adadelta()
    p, g = [np.zeros(2)], [np.array([3.0, -0.02])]
    new, _ = opt.update(p, g, opt.init(p))
    expected = -np.sqrt(1e-6) / np.sqrt(0.1 * g[0] ** 2 + 1e-6) * g[0]
    np.testing.assert_allclose(new[0], expected, rtol=1e-14)


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "adadelta: lr must be a finite number >= 0, got -1.0"),
        (dict(rho=1.5), r"adadelta: rho must be in \[0, 1\], got 1.5"),
        (dict(eps=0.0), "adadelta: eps must be a finite number > 0, got 0.0"),
        (dict(maximize=0), "adadelta: maximize must be True or False, got 0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.adadelta(**kwargs)
