"""LAMB against an independent NumPy transcription of the paper's Algorithm 2 and against
optax.lamb (where optax imports: it is not a test dependency, so CI may skip those), 50 steps,
float64 and float32; the masks; the trust ratio's zero cases; Keras' and pytorch_optimizer's
conventions against direct re-derivations of their steps; the contract; errors."""

from functools import partial

import numpy as np
import pytest
from contract_checks import (
    FLOAT_DTYPES,
    assert_trajectory_equals,
    assert_variant_equals_direct,
    direct_gradients,
    optax_peer,
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

LR = 1e-2
HYPERS = pytest.mark.parametrize(
    "hyper",
    [dict(), dict(weight_decay=0.1), dict(betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01)],
    ids=["no_decay", "decay", "other"],
)


def lamb_paper(params, grads_sequence, *, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.0, decay=None):
    """You et al. 2020, Algorithm 2 (LAMB) with phi(z) = z, layer by layer:
    m_t = b1 m + (1 - b1) g;  v_t = b2 v + (1 - b2) g^2;  m_t /= 1 - b1^t;  v_t /= 1 - b2^t;
    r_t = m_t / (sqrt(v_t) + eps);
    x_{t+1} = x_t - eta_t phi(||x_t||) / ||r_t + lambda x_t|| (r_t + lambda x_t),
    with the ratio taken as 1 where a norm is 0 (the implementations' guard). `decay` lists the
    layers lambda applies to (all by default)."""
    x = [np.array(p, copy=True) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    trajectory = []
    for t, grads in enumerate(grads_sequence, start=1):
        eta = lr(t - 1) if callable(lr) else lr
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            r = m_hat / (np.sqrt(v_hat) + eps)
            lam = wd if decay is None or decay[i] else 0.0
            u = r + lam * x[i]
            x_norm, u_norm = np.linalg.norm(x[i]), np.linalg.norm(u)
            ratio = x_norm / u_norm if x_norm > 0 and u_norm > 0 else 1.0
            x[i] = x[i] - eta * ratio * u
        trajectory.append([a.copy() for a in x])
    return trajectory


def _paper_kwargs(hyper):
    b1, b2 = hyper.get("betas", (0.9, 0.999))
    return dict(b1=b1, b2=b2, eps=hyper.get("eps", 1e-6), wd=hyper.get("weight_decay", 0.0))


@FLOAT_DTYPES
@HYPERS
def test_trajectory_equals_the_papers_algorithm(hyper, dtype):
    paper = partial(lamb_paper, lr=LR, **_paper_kwargs(hyper))
    assert_trajectory_equals(optim.lamb(LR, **hyper), paper, dtype)


def test_scheduled_lr_equals_the_papers_algorithm():
    lr = schedules.linear_with_warmup(LR, warmup_steps=10, total_steps=50)
    assert_trajectory_equals(optim.lamb(lr, weight_decay=0.01), partial(lamb_paper, lr=lr, wd=0.01))


@FLOAT_DTYPES
@HYPERS
def test_trajectory_equals_optax_lamb(hyper, dtype):
    """optax: scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate."""
    optax = pytest.importorskip("optax")
    kw = _paper_kwargs(hyper)
    tx = optax.lamb(LR, b1=kw["b1"], b2=kw["b2"], eps=kw["eps"], weight_decay=kw["wd"])
    assert_trajectory_equals(optim.lamb(LR, **hyper), optax_peer(tx), dtype)


def test_weight_decay_mask_equals_optax_mask():
    optax = pytest.importorskip("optax")
    mask = [False, True, True, False]
    ours = optim.lamb(LR, weight_decay=0.2, weight_decay_mask=mask)
    theirs = optax_peer(optax.lamb(LR, weight_decay=0.2, mask=mask))
    assert_trajectory_equals(ours, theirs, steps=20)


# -- masks and the ratio's edge cases -----------------------------------------------------------


def test_masks_as_containers_and_predicates():
    """A weight-decay mask equals the paper with lambda on those layers only; a tensor out of the
    trust-ratio mask takes the unscaled step lr * (r + lambda p)."""
    params, grads = initial_params(np.float64), gradient_sequence(np.float64, steps=10)
    by_rank = lambda p: p.ndim > 1  # noqa: E731  (leaves the two 1-D tensors out)
    ours = normref_trajectory(
        optim.lamb(LR, weight_decay=0.3, weight_decay_mask=by_rank), params, grads
    )
    expected = lamb_paper(params, grads, lr=LR, wd=0.3, decay=[False, False, True, True])
    assert_trajectories_close(ours, expected, np.float64)

    keys = ["w", "b", "conv", "x"]
    opt = optim.lamb(LR, trust_ratio_mask={"w": True, "b": False, "conv": True, "x": True})
    p = dict(zip(keys, params))
    new, state = opt.update(p, dict(zip(keys, grads[0])), opt.init(p))
    # t = 1: r = g / (|g| + eps) elementwise, the untrusted "b" moves by lr * r exactly
    g = grads[0][1]
    np.testing.assert_allclose(new["b"], p["b"] - LR * (g / (np.abs(g) + 1e-6)), rtol=1e-12)


def test_zero_norms_take_the_unscaled_step():
    """||p|| = 0 (a zero-initialized tensor) or ||r|| = 0 (every gradient 0): ratio 1."""
    opt = optim.lamb(0.1)
    p = [np.zeros(3), np.ones(2)]
    new, state = opt.update(p, [np.array([1.0, -2.0, 0.0]), np.zeros(2)], opt.init(p))
    np.testing.assert_allclose(new[0], [-0.1, 0.1, 0.0], rtol=1e-5)  # |r| ~ 1: a step of lr
    assert new[1].tobytes() == p[1].tobytes()  # r = 0: nothing moves, no NaN


def test_mask_errors_are_clear_and_early():
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    with pytest.raises(ValueError, match=r"lamb: weight_decay_mask must have the keys of params"):
        optim.lamb(weight_decay_mask={"w": True}).init(params)
    with pytest.raises(
        TypeError, match=r"lamb: trust_ratio_mask\(params\[0\]\) must be True or False, got 1"
    ):
        optim.lamb(trust_ratio_mask=lambda p: p.ndim).init([np.ones(2), np.ones((2, 2))])
    with pytest.raises(TypeError, match="lamb: trust_ratio_mask must be True/False, a container"):
        optim.lamb(trust_ratio_mask="all")
    opt = optim.lamb(weight_decay_mask=[True, False])
    state = optim.lamb().init([np.ones(2)])
    with pytest.raises(ValueError, match="params has 1 arrays but weight_decay_mask has 2"):
        opt.update_([np.ones(2)], [np.ones(2)], state)
    assert int(state.step) == 0 and not np.any(state.mu[0])


# -- conventions of peers -----------------------------------------------------------------------


def _direct(grads, p0, *, lr, b1, b2, eps, wd, convention):
    """Keras 3 Lamb (keras/src/optimizers/lamb.py::update_step after the base class' decoupled
    decay), pytorch_optimizer Lamb (its defaults: weight_decouple, no adam_debias, clamp 10), and
    the paper's form without bias correction / with a clamped phi, one tensor at a time."""
    p, m, v = np.array(p0, dtype=float), np.zeros(len(p0)), np.zeros(len(p0))
    for t, g in enumerate(grads, start=1):
        g = np.array(g)
        m = m + (g - m) * (1 - b1) if convention == "keras" else b1 * m + (1 - b1) * g
        v = v + (g * g - v) * (1 - b2) if convention == "keras" else b2 * v + (1 - b2) * g * g
        if convention in ("keras", "pytorch_optimizer"):
            p = p - p * wd * lr
        if convention == "keras":
            update = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            w_norm, g_norm = np.sqrt(np.sum(p**2)), np.sqrt(np.sum(update**2))
            ratio = w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
            p = p - ratio * lr * update
        elif convention == "pytorch_optimizer":
            update = m / (np.sqrt(v) + eps)
            weight_norm = min(np.linalg.norm(p), 10.0)
            p_norm = np.linalg.norm(update)
            ratio = 1.0 if weight_norm == 0 or p_norm == 0 else weight_norm / (p_norm + eps)
            p = p - (lr / (1 - b1**t)) * ratio * update
        else:
            if convention == "no_bias_correction":
                r = m / (np.sqrt(v) + eps) + wd * p
            else:
                r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
            phi = min(np.linalg.norm(p), 10.0) if convention == "clamped" else np.linalg.norm(p)
            p = p - lr * phi / np.linalg.norm(r) * r
    return p


CASES = [
    ("decay_outside_ratio", "keras"),
    ("pytorch_optimizer", "pytorch_optimizer"),
    ("no_bias_correction", "no_bias_correction"),
    ("clamped_weight_norm", "clamped"),
]


@pytest.mark.parametrize("variant, convention", CASES)
def test_variant_equals_a_direct_rederivation(variant, convention):
    grads = direct_gradients(19, steps=15, low=-3, size=4)
    p0 = [5.0, -6.0, 7.0, 3.0]  # ||p|| ~ 11 > 10: the clamp acts
    expected = _direct(
        grads, p0, lr=0.05, b1=0.9, b2=0.999, eps=1e-6, wd=0.2, convention=convention
    )
    assert_variant_equals_direct(
        variant_factory("lamb", variant),
        optim.lamb,
        dict(lr=0.05, eps=1e-6, weight_decay=0.2),
        grads,
        p0,
        expected,
        separation=1e-6,
    )


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-3), "lamb: lr must be a finite number >= 0, got -0.001"),
        (dict(betas=(0.9, 1.0)), r"lamb: betas\[1\] must be in \[0, 1\), got 1.0"),
        (dict(eps=0.0), "lamb: eps must be a finite number > 0, got 0.0"),
        (dict(weight_decay=-0.1), "lamb: weight_decay must be a finite number >= 0, got -0.1"),
        (dict(weight_decay_mask=None), "lamb: weight_decay_mask must be True/False"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.lamb(**kwargs)
