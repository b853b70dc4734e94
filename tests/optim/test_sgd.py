"""SGD against torch.optim.SGD (single-tensor path): every option combination PyTorch allows, 50
steps, float64 and float32; scheduled lr and momentum; the Keras variant."""

import itertools

import numpy as np
import pytest
from contract_checks import combo_id, variant_factory
from optim_trajectories import (
    assert_trajectories_close,
    gradient_sequence,
    initial_params,
    normref_trajectory,
    torch_trajectory,
)

from normref import optim
from normref.optim import schedules

torch = pytest.importorskip("torch", reason="torch.optim is the implementation checked against")

LR = 0.03


def _allowed(momentum, dampening, nesterov):
    # PyTorch: "Nesterov momentum requires a momentum and zero dampening"
    return not nesterov or (momentum > 0 and dampening == 0)


COMBOS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product(
        (0.0, 0.9), (0.0, 0.25), (False, True), (0.0, 0.05), (False, True)
    )
    if _allowed(m, d, n)
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_trajectory_equals_torch(combo, dtype):
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    ours = normref_trajectory(optim.sgd(LR, **combo), params, grads)
    theirs = torch_trajectory(
        lambda ps: torch.optim.SGD(ps, lr=LR, foreach=False, **combo), params, grads
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_every_combination_torch_allows_is_covered():
    # momentum 0: dampening {0, 0.25} x nesterov off; momentum 0.9: 3 of the 4 (no nesterov with
    # dampening); each x weight_decay x maximize
    assert len(COMBOS) == (2 + 3) * 2 * 2


def test_scheduled_lr_and_momentum_equal_torch_one_cycle():
    """OneCycleLR cycles both lr and momentum by default; the schedules read at the 0-based step."""
    dtype, total = np.float64, 50
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    opt = optim.sgd(
        schedules.one_cycle(0.1, total),
        momentum=schedules.one_cycle_momentum(total),
        weight_decay=1e-3,
    )
    ours = normref_trajectory(opt, params, grads)
    theirs = torch_trajectory(
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=False),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=total),
    )
    assert_trajectories_close(ours[: total - 1], theirs[: total - 1], dtype)


def test_first_buffer_is_the_undampened_gradient():
    """PyTorch starts the buffer at g itself (dampening not applied on the first step)."""
    opt = optim.sgd(1.0, momentum=0.5, dampening=0.5)
    p = [np.array([0.0])]
    p, state = opt.update(p, [np.array([2.0])], opt.init(p))
    np.testing.assert_array_equal(state.momentum_buffer[0], [2.0])
    np.testing.assert_array_equal(p[0], [-2.0])
    p, state = opt.update(p, [np.array([2.0])], state)
    np.testing.assert_array_equal(state.momentum_buffer[0], [0.5 * 2.0 + 0.5 * 2.0])


def test_first_buffer_is_a_copy_not_the_callers_gradient():
    opt = optim.sgd(0.1, momentum=0.9)
    p, g = [np.ones(3)], [np.full(3, 2.0)]
    _, state = opt.update(p, g, opt.init(p))
    g[0][...] = 7.0
    np.testing.assert_array_equal(state.momentum_buffer[0], 2.0)


def test_no_buffer_without_momentum():
    assert optim.sgd(0.1).init([np.ones(2)]).momentum_buffer is None


def test_keras_variant_equals_torch_for_a_constant_lr_and_differs_under_a_schedule():
    keras_factory = variant_factory("sgd", "keras_lr_inside_momentum")
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=10)
    for nesterov in (False, True):
        kw = dict(momentum=0.9, nesterov=nesterov)
        ref = normref_trajectory(optim.sgd(0.05, **kw), params, grads)
        keras = normref_trajectory(keras_factory(0.05, **kw), params, grads)
        assert_trajectories_close(keras, ref, dtype)
    lr = schedules.step_decay(0.05, step_size=3, gamma=0.5)
    ref = normref_trajectory(optim.sgd(lr, momentum=0.9), params, grads)
    keras = normref_trajectory(keras_factory(lr, momentum=0.9), params, grads)
    # identical until the lr first changes (the update at step 3), different after
    assert_trajectories_close(keras[:3], ref[:3], dtype)
    assert not np.allclose(keras[3][1], ref[3][1], rtol=1e-6)
    # a direct re-derivation of Keras' rule: v = mu*v - lr*g; p = p + v
    p, v = [x.copy() for x in params], [np.zeros_like(x) for x in params]
    for t, g in enumerate(grads):
        v = [0.9 * vi - lr(t) * gi for vi, gi in zip(v, g)]
        p = [pi + vi for pi, vi in zip(p, v)]
    for a, b in zip(keras[-1], p):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-0.1), "sgd: lr must be a finite number >= 0, got -0.1"),
        (dict(lr=float("nan")), "sgd: lr must be a finite number >= 0"),
        (dict(lr=0.1, momentum=-0.5), "sgd: momentum must be a finite number >= 0, got -0.5"),
        (dict(lr=0.1, weight_decay=-1e-4), "sgd: weight_decay must be a finite number >= 0"),
        (dict(lr=0.1, dampening=1.5), r"sgd: dampening must be in \[0, 1\], got 1.5"),
        (dict(lr=0.1, nesterov=True), "sgd: nesterov=True needs momentum > 0 and dampening == 0"),
        (
            dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
            "needs momentum > 0 and dampening == 0",
        ),
        (dict(lr=0.1, maximize="yes"), "sgd: maximize must be True or False, got 'yes'"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.sgd(**kwargs)
