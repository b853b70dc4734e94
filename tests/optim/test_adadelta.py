"""Adadelta against torch.optim.Adadelta (single-tensor path), 50 steps, float64 and float32, every
option combination; against optax.adadelta and a direct re-derivation of Keras' update under its
defaults; the contract; errors."""

import functools

import numpy as np
import pytest
from contract_checks import (
    combo_id,
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

LR = 0.7


_torch = functools.partial(torch_factory, "Adadelta")


@pytest.mark.parametrize(
    "kw",
    [dict(rho=0.0), dict(rho=1.0), dict(rho=0.5, eps=1e-3), dict(rho=0.95, eps=1e-9)],
    ids=combo_id,
)
def test_other_rho_and_eps_equal_torch(kw):
    """rho = 1 keeps both averages at 0: steps of lr * g (PyTorch accepts rho in [0, 1])."""
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=25)
    ours = normref_trajectory(optim.adadelta(1.0, **kw), params, grads)
    theirs = torch_trajectory_in(dtype, _torch(lr=1.0, **kw), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


def test_scheduled_lr_equals_torch_lambda_lr():
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    lr = schedules.exponential_decay(LR, gamma=0.95)
    ours = normref_trajectory(optim.adadelta(lr, weight_decay=0.05), params, grads)
    theirs = torch_trajectory_in(
        dtype,
        _torch(lr=LR, weight_decay=0.05),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: lr(t) / LR),
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_equals_optax_adadelta():
    optax = pytest.importorskip("optax")
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=30)
    ours = normref_trajectory(optim.adadelta(LR, weight_decay=0.01), params, grads)
    theirs = optax_trajectory(optax.adadelta(LR, weight_decay=0.01), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


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
