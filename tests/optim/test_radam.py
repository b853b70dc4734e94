"""RAdam: the rectification threshold; the optax and pytorch_optimizer variants against direct
re-derivations (and optax.radam itself); errors. Against torch.optim.RAdam (every option
combination, other hyperparameters, a scheduled lr): test_optim_trajectories_vs_torch.py; the
contract: test_optim_contract_checks.py."""

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

LR = 4e-3


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
    grads = direct_gradients(9, steps=14, low=-6, zero_step=8)
    p0 = [0.5, -1.0, 2.0]
    expected = _direct(grads, p0, lr=0.01, b1=0.9, b2=0.999, eps=1e-6, convention=convention)
    assert_variant_equals_direct(
        variant_factory("radam", variant),
        optim.radam,
        dict(lr=0.01, eps=1e-6),
        grads,
        p0,
        expected,
        separation=1e-9,
    )


def test_optax_variant_equals_optax_radam():
    optax = pytest.importorskip("optax")
    ours = variant_factory("radam", "optax_eps_on_v_hat")(lr=LR)
    assert_trajectory_equals(ours, optax_peer(optax.radam(LR)), steps=30)


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
