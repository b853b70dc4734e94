"""RMSprop against torch.optim.RMSprop (single-tensor path) under OneCycleLR (every option
combination and other hyperparameters: test_optim_trajectories_vs_torch.py); against
optax.rmsprop; the eps and lr-placement variants against direct re-derivations of Keras' update;
the state's fields; errors."""

import functools

import numpy as np
import pytest
from contract_checks import (
    assert_trajectory_equals,
    assert_variant_equals_direct,
    direct_gradients,
    optax_peer,
    torch_factory,
    torch_trajectory_in,
    variant_factory,
)
from optim_trajectories import (
    assert_trajectories_close,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

from normref import optim
from normref.optim import schedules

torch = pytest.importorskip("torch", reason="torch.optim is the implementation checked against")

LR = 3e-3


_torch = functools.partial(torch_factory, "RMSprop")


def test_scheduled_lr_and_momentum_equal_torch_one_cycle():
    """OneCycleLR cycles lr and RMSprop's momentum; the buffer exists from the start."""
    dtype, total = np.float64, 50
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    opt = optim.rmsprop(
        schedules.one_cycle(0.01, total), momentum=schedules.one_cycle_momentum(total)
    )
    ours = normref_trajectory(opt, params, grads)
    theirs = torch_trajectory_in(
        dtype,
        _torch(lr=0.01, momentum=0.9),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.01, total_steps=total),
    )
    assert_trajectories_close(ours[: total - 1], theirs[: total - 1], dtype)


@pytest.mark.parametrize("centered", [False, True])
def test_equals_optax_rmsprop_with_eps_outside(centered):
    """optax keeps lr inside the momentum; for a constant lr that is the same trajectory."""
    optax = pytest.importorskip("optax")
    kw = dict(momentum=0.9, centered=centered, eps=1e-6)
    ours = optim.rmsprop(LR, alpha=0.9, **kw)
    theirs = optax_peer(optax.rmsprop(LR, decay=0.9, eps_in_sqrt=False, **kw))
    assert_trajectory_equals(ours, theirs, steps=30)


# -- variants -----------------------------------------------------------------------------------


def _direct(grads, p0, *, lr, rho, eps, momentum, centered, eps_inside, lr_inside):
    """keras/src/optimizers/rmsprop.py::update_step (eps_inside and lr_inside both True), and
    PyTorch's placements for either switch off, scalar by scalar."""
    n = len(p0)
    p, v, avg, mom = list(p0), [0.0] * n, [0.0] * n, [0.0] * n
    for t, g in enumerate(grads):
        for i, gi in enumerate(g):
            v[i] = rho * v[i] + (1 - rho) * gi * gi
            second = v[i]
            if centered:
                avg[i] = rho * avg[i] + (1 - rho) * gi
                second = v[i] - avg[i] ** 2
            root = (second + eps) ** 0.5 if eps_inside else second**0.5 + eps
            if lr_inside:
                mom[i] = momentum * mom[i] + lr(t) * gi / root
                p[i] -= mom[i]
            else:
                mom[i] = momentum * mom[i] + gi / root
                p[i] -= lr(t) * mom[i]
    return p


CASES = [
    # variant, centered, eps_inside, lr_inside
    ("eps_in_sqrt", False, True, False),
    ("eps_in_sqrt", True, True, False),
    ("lr_inside_momentum", False, False, True),
    ("lr_inside_momentum", True, False, True),
]


@pytest.mark.parametrize("variant, centered, eps_inside, lr_inside", CASES)
def test_variant_equals_a_direct_rederivation(variant, centered, eps_inside, lr_inside):
    grads = direct_gradients(13, steps=16, low=-4, zero_step=6)
    p0 = [0.5, -1.0, 2.0]
    lr = schedules.step_decay(0.01, step_size=4, gamma=0.3)  # separates lr placements
    hyper = dict(lr=lr, alpha=0.9, eps=1e-7, momentum=0.8, centered=centered)
    expected = _direct(
        grads,
        p0,
        lr=lr,
        rho=0.9,
        eps=1e-7,
        momentum=0.8,
        centered=centered,
        eps_inside=eps_inside,
        lr_inside=lr_inside,
    )
    assert_variant_equals_direct(
        variant_factory("rmsprop", variant),
        optim.rmsprop,
        hyper,
        grads,
        p0,
        expected,
        separation=1e-9,
    )


def test_lr_placement_matters_only_when_lr_changes():
    grads = gradient_sequence(np.float64, steps=10)
    params = initial_params(np.float64)
    inside_momentum = variant_factory("rmsprop", "lr_inside_momentum")
    inside = normref_trajectory(inside_momentum(lr=LR, momentum=0.9), params, grads)
    outside = normref_trajectory(optim.rmsprop(LR, momentum=0.9), params, grads)
    assert_trajectories_close(inside, outside, np.float64)


def test_eps_in_sqrt_equals_optax_rmsprop_default():
    optax = pytest.importorskip("optax")
    kw = dict(momentum=0.9, centered=True)
    ours = variant_factory("rmsprop", "eps_in_sqrt")(lr=LR, alpha=0.9, **kw)
    assert_trajectory_equals(ours, optax_peer(optax.rmsprop(LR, decay=0.9, **kw)), steps=30)


# -- contract and errors ------------------------------------------------------------------------


def test_state_fields_follow_the_options():
    params = [np.ones(2)]
    plain = optim.rmsprop().init(params)
    assert plain.momentum_buffer is None and plain.grad_avg is None
    full = optim.rmsprop(momentum=0.5, centered=True).init(params)
    assert full.momentum_buffer is not None and full.grad_avg is not None
    with pytest.raises(ValueError, match=r"rmsprop: state.grad_avg is None but this config"):
        optim.rmsprop(centered=True).update(params, [np.ones(2)], plain)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-0.1), "rmsprop: lr must be a finite number >= 0, got -0.1"),
        (dict(alpha=1.0), r"rmsprop: alpha must be in \[0, 1\), got 1.0"),
        (dict(eps=0.0), "rmsprop: eps must be a finite number > 0, got 0.0"),
        (dict(momentum=-0.9), "rmsprop: momentum must be a finite number >= 0, got -0.9"),
        (dict(centered="no"), "rmsprop: centered must be True or False, got 'no'"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.rmsprop(**kwargs)
