"""Adamax against torch.optim.Adamax (single-tensor path), 50 steps, float64 and float32, every
option combination; against optax.adamax; its Keras variant against a direct re-derivation; the
contract; errors."""

import math

import numpy as np
import pytest
from contract_checks import (
    optax_trajectory,
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

LR = 7e-3


@pytest.mark.parametrize(
    "betas, eps", [((0.0, 0.5), 1e-6), ((0.3, 0.0), 1e-3), ((0.99, 0.9), 1e-12)]
)
def test_other_betas_and_eps_equal_torch(betas, eps):
    """b1 <= 0.5 takes the other branch of PyTorch's lerp; b2 = 0 makes u = |g| + eps."""
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=20)
    kw = dict(betas=betas, eps=eps, weight_decay=0.01)
    ours = normref_trajectory(optim.adamax(0.02, **kw), params, grads)
    theirs = torch_trajectory_in(
        dtype, lambda ps: torch.optim.Adamax(ps, lr=0.02, foreach=False, **kw), params, grads
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_scheduled_lr_equals_torch_lambda_lr():
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    lr = schedules.cosine_with_warmup(LR, warmup_steps=5, total_steps=40, initial=1e-4)
    ours = normref_trajectory(optim.adamax(lr, weight_decay=0.05), params, grads)
    theirs = torch_trajectory_in(
        dtype,
        lambda ps: torch.optim.Adamax(ps, lr=LR, weight_decay=0.05, foreach=False),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: lr(t) / LR),
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_equals_optax_adamax():
    optax = pytest.importorskip("optax")
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=30)
    ours = normref_trajectory(optim.adamax(LR, eps=1e-7), params, grads)
    theirs = optax_trajectory(optax.adamax(LR, eps=1e-7), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


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
    rng = np.random.default_rng(5)
    grads = [list(rng.normal(size=3) * 10.0 ** rng.integers(-8, 1)) for _ in range(12)]
    grads[4] = [0.0, 0.0, 0.0]
    p0 = [0.5, -1.0, 2.0]
    variant = {v.name: v for v in OPTIMIZERS["adamax"].variants}["keras_eps_outside_max"]
    hyper = dict(lr=0.01, eps=1e-7)
    ours = normref_trajectory(
        variant.factory(**hyper), [np.array(p0)], [[np.array(g)] for g in grads]
    )[-1][0]
    expected = _keras_direct(grads, p0, lr=0.01, b1=0.9, b2=0.999, eps=1e-7)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    reference = normref_trajectory(
        optim.adamax(**hyper), [np.array(p0)], [[np.array(g)] for g in grads]
    )[-1][0]
    assert not np.allclose(ours, reference, rtol=1e-9, atol=0), "the probe must separate it"


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
