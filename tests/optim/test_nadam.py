"""NAdam against torch.optim.NAdam (single-tensor path) under OneCycleLR and under torch's float32
default dtype (every option combination and other hyperparameters:
test_optim_trajectories_vs_torch.py); the momentum schedule's product; the Keras and optax variants
against direct re-derivations of their formulas (and optax.nadam itself); errors."""

import functools
import itertools

import numpy as np
import pytest
from contract_checks import (
    assert_trajectory_equals,
    assert_variant_equals_direct,
    combo_id,
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

LR = 5e-3
COMBOS = [
    dict(weight_decay=wd, decoupled_weight_decay=d, maximize=m)
    for wd, d, m in itertools.product((0.0, 0.1), (False, True), (False, True))
]


_torch = functools.partial(torch_factory, "NAdam")


def test_scheduled_lr_and_b1_equal_torch_one_cycle():
    """OneCycleLR cycles lr and betas[0]; PyTorch's mu_t uses the current b1, and its product
    keeps each step's b1."""
    dtype, total = np.float64, 50
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    opt = optim.nadam(
        schedules.one_cycle(0.01, total), betas=(schedules.one_cycle_momentum(total), 0.999)
    )
    ours = normref_trajectory(opt, params, grads)
    theirs = torch_trajectory_in(
        dtype,
        _torch(lr=0.01),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.01, total_steps=total),
    )
    assert_trajectories_close(ours[: total - 1], theirs[: total - 1], dtype)


def test_momentum_schedules_of_the_conventions_note():
    """mu_t for t = 1..3: PyTorch 0.45007, 0.45015, 0.45022; Keras 3 0.468, 0.485, 0.502."""
    torch_like, keras_like = optim.nadam(), optim.nadam(momentum_decay=1.0)
    np.testing.assert_allclose(
        [torch_like._mu(t, 0.9) for t in (1, 2, 3)], [0.45007, 0.45015, 0.45022], atol=5e-6
    )
    np.testing.assert_allclose(
        [keras_like._mu(t, 0.9) for t in (1, 2, 3)], [0.468, 0.485, 0.502], atol=5e-4
    )


def test_the_schedule_product_depends_on_the_step_alone():
    """The optimizer caches the running product; a state from an earlier step (a jump back) or
    a fresh optimizer gives the same numbers."""
    params, grads = initial_params(np.float64), gradient_sequence(np.float64, steps=8)
    opt = optim.nadam(LR)
    state = opt.init(params)
    p, early = params, None
    for t, g in enumerate(grads):
        p, state = opt.update(p, g, state)
        if t == 2:
            early = (p, state)
    again, _ = opt.update(early[0], grads[3], early[1])  # back from step 8 to step 3
    fresh = optim.nadam(LR)
    expected, _ = fresh.update(early[0], grads[3], early[1])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again, expected))


# -- variants -----------------------------------------------------------------------------------


def _keras_direct(grads, p0, *, lr, b1, b2, eps):
    """keras/src/optimizers/nadam.py (update_step and _backend_update_step), scalar by scalar."""
    p, m, v, u_product = list(p0), [0.0] * len(p0), [0.0] * len(p0), 1.0
    for t, g in enumerate(grads, start=1):
        u_t = b1 * (1.0 - 0.5 * 0.96**t)
        u_t_1 = b1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        u_product *= u_t
        u_product_t_1 = u_product * u_t_1
        for i, gi in enumerate(g):
            m[i] += (gi - m[i]) * (1 - b1)
            v[i] += (gi * gi - v[i]) * (1 - b2)
            m_hat = u_t_1 * m[i] / (1 - u_product_t_1) + (1 - u_t) * gi / (1 - u_product)
            v_hat = v[i] / (1 - b2**t)
            p[i] -= m_hat * lr / (v_hat**0.5 + eps)
    return p


def _optax_direct(grads, p0, *, lr, b1, b2, eps):
    """optax nadam = scale_by_adam(nesterov=True) then -lr, scalar by scalar."""
    p, m, v = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            m[i] = (1 - b1) * gi + b1 * m[i]
            v[i] = (1 - b2) * gi**2 + b2 * v[i]
            m_hat = b1 * m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * gi / (1 - b1**t)
            p[i] -= lr * m_hat / ((v[i] / (1 - b2**t)) ** 0.5 + eps)
    return p


@pytest.mark.parametrize(
    "variant, direct",
    [("keras_momentum_schedule", _keras_direct), ("optax_nesterov", _optax_direct)],
)
def test_variant_equals_a_direct_rederivation(variant, direct):
    grads = direct_gradients(7, steps=15, low=-6, zero_step=5)
    p0 = [0.5, -1.0, 2.0]
    expected = direct(grads, p0, lr=0.01, b1=0.9, b2=0.999, eps=1e-7)
    hyper = dict(lr=0.01, eps=1e-7)
    assert_variant_equals_direct(
        variant_factory("nadam", variant), optim.nadam, hyper, grads, p0, expected, separation=1e-6
    )


@pytest.mark.parametrize("combo", COMBOS[:4], ids=combo_id)
def test_float32_product_variant_is_torch_under_its_default_dtype(combo):
    """float64 params, torch's default float32 dtype: mu_product is a float32 scalar. The
    reference is 1e-11 away from that; the variant reproduces it to float64 rounding."""
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    theirs = torch_trajectory_in(np.float32, _torch(lr=LR, **combo), params, grads)
    variant = variant_factory("nadam", "float32_schedule_product")(lr=LR, **combo)
    assert_trajectories_close(normref_trajectory(variant, params, grads), theirs, dtype)
    reference = normref_trajectory(optim.nadam(LR, **combo), params, grads)
    with pytest.raises(AssertionError):
        assert_trajectories_close(reference, theirs, dtype)


def test_optax_variant_equals_optax_nadam():
    optax = pytest.importorskip("optax")
    ours = variant_factory("nadam", "optax_nesterov")(lr=LR)
    assert_trajectory_equals(ours, optax_peer(optax.nadam(LR)), steps=30)


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "nadam: lr must be a finite number >= 0, got -1.0"),
        (dict(betas=(0.9, 1.0)), r"nadam: betas\[1\] must be in \[0, 1\), got 1.0"),
        (dict(eps=-1e-8), "nadam: eps must be a finite number > 0"),
        (dict(momentum_decay=-4e-3), "nadam: momentum_decay must be a finite number >= 0"),
        (dict(decoupled_weight_decay=1), "nadam: decoupled_weight_decay must be True or False"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.nadam(**kwargs)
