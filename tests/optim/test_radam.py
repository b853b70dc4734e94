"""RAdam against torch.optim.RAdam (single-tensor path), 50 steps, float64 and float32, every
option combination; the rectification threshold; the optax and pytorch_optimizer variants against
direct re-derivations (and optax.radam itself); the contract; errors."""

import functools
import math

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

LR = 4e-3


_torch = functools.partial(torch_factory, "RAdam")


@pytest.mark.parametrize(
    "kw",
    [
        dict(betas=(0.9, 0.9), eps=1e-6),  # a short average: rho_inf = 19
        dict(betas=(0.0, 0.99), eps=1e-3),
        dict(betas=(0.5, 0.0)),  # rho_inf = 1: never rectified, momentum SGD throughout
        dict(betas=(0.95, 0.9999), weight_decay=0.01, decoupled_weight_decay=True),
    ],
    ids=combo_id,
)
def test_other_hyperparameters_equal_torch(kw):
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=25)
    ours = normref_trajectory(optim.radam(0.02, **kw), params, grads)
    theirs = torch_trajectory_in(dtype, _torch(lr=0.02, **kw), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


def test_scheduled_lr_equals_torch_lambda_lr():
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    lr = schedules.linear_with_warmup(LR, warmup_steps=8, total_steps=50)
    ours = normref_trajectory(optim.radam(lr, weight_decay=0.05), params, grads)
    theirs = torch_trajectory_in(
        dtype,
        _torch(lr=LR, weight_decay=0.05),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: lr(t) / LR),
    )
    assert_trajectories_close(ours, theirs, dtype)


def _rho(t, b2):
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf - 2 * t * b2**t / (1 - b2**t)


def test_the_first_steps_are_momentum_sgd_until_rho_exceeds_5():
    """At b2 = 0.999, rho_t <= 5 for t <= 5: p moves by exactly lr * m_hat, whatever |g|."""
    assert _rho(5, 0.999) < 5 < _rho(6, 0.999)
    opt = optim.radam(0.1)
    p = [np.zeros(2)]
    state = opt.init(p)
    m, moves = np.zeros(2), []
    for t in range(1, 7):
        g = np.array([1e3, -1e-3]) * t
        m = 0.9 * m + 0.1 * g
        before = p[0].copy()
        p, state = opt.update(p, [g], state)
        moves.append((before - p[0], 0.1 * m / (1 - 0.9**t)))
    for move, sgd in moves[:5]:
        np.testing.assert_allclose(move, sgd, rtol=1e-14)
    assert not np.allclose(moves[5][0], moves[5][1], rtol=1e-3)  # t = 6: adaptive
    assert np.all(np.abs(moves[5][0]) < 0.2)


def test_threshold_probe_separates_strict_from_non_strict():
    """A b2 where rho_t lands on 5.0 exactly would separate `>` (PyTorch) from `>=` (optax);
    none does in practice, so the two differ only through eps (checked below)."""
    for b2 in (0.9, 0.99, 0.999, 0.9999):
        assert all(_rho(t, b2) != 5.0 for t in range(1, 200))


# -- variants -----------------------------------------------------------------------------------


def _variant(name):
    return {v.name: v for v in OPTIMIZERS["radam"].variants}[name].factory


def _direct(grads, p0, *, lr, b1, b2, eps, convention):
    """Each peer's RAdam, scalar by scalar: optax/_src/transform.py::scale_by_radam, and
    pytorch_optimizer RAdam (degenerated_to_sgd=False: no step below the threshold)."""
    p, m, v = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            if convention == "optax":
                p[i] -= lr * (r * m_hat / (math.sqrt(v_hat) + eps) if rho >= 5 else m_hat)
            elif rho >= 5:  # pytorch_optimizer: eps-hat, as PyTorch
                step = r * math.sqrt(1 - b2**t) / (1 - b1**t)
                p[i] -= lr * step * m[i] / (math.sqrt(v[i]) + eps)
    return p


@pytest.mark.parametrize(
    "variant, convention", [("optax_eps_on_v_hat", "optax"), ("skip_unrectified", "pt_opt")]
)
def test_variant_equals_a_direct_rederivation(variant, convention):
    rng = np.random.default_rng(9)
    grads = [list(rng.normal(size=3) * 10.0 ** rng.integers(-6, 1)) for _ in range(14)]
    grads[8] = [0.0, 0.0, 0.0]
    p0 = [0.5, -1.0, 2.0]
    hyper = dict(lr=0.01, eps=1e-6)
    sequence = [[np.array(g)] for g in grads]
    ours = normref_trajectory(_variant(variant)(**hyper), [np.array(p0)], sequence)[-1][0]
    expected = _direct(grads, p0, lr=0.01, b1=0.9, b2=0.999, eps=1e-6, convention=convention)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    reference = normref_trajectory(optim.radam(**hyper), [np.array(p0)], sequence)[-1][0]
    assert not np.allclose(ours, reference, rtol=1e-9, atol=0), "the probe must separate it"


def test_optax_variant_equals_optax_radam():
    optax = pytest.importorskip("optax")
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=30)
    ours = normref_trajectory(_variant("optax_eps_on_v_hat")(lr=LR), params, grads)
    theirs = optax_trajectory(optax.radam(LR), params, grads)
    assert_trajectories_close(ours, theirs, dtype)


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=math.inf), "radam: lr must be a finite number >= 0, got inf"),
        (dict(betas=(-0.1, 0.9)), r"radam: betas\[0\] must be in \[0, 1\), got -0.1"),
        (dict(eps=0), "radam: eps must be a finite number > 0, got 0"),
        (dict(decoupled_weight_decay=None), "radam: decoupled_weight_decay must be True or"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.radam(**kwargs)
