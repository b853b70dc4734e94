"""Lion against an independent NumPy transcription of the paper's Algorithm 2 and against
optax.lion (where optax imports: it is not a test dependency, so CI may skip those), 50 steps,
float64 and float32; sign(0) = 0; pytorch_optimizer's weight-decay variants against direct
re-derivations of its step; the contract; errors."""

import numpy as np
import pytest
from contract_checks import (
    optax_trajectory,
)
from optim_trajectories import (
    assert_trajectories_close,
    assert_trajectories_identical,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

from normref import optim
from normref.optim import schedules
from normref.registry import OPTIMIZERS

LR = 3e-3
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
HYPERS = pytest.mark.parametrize(
    "hyper",
    [dict(), dict(weight_decay=0.1), dict(betas=(0.95, 0.98), weight_decay=1.0)],
    ids=["no_decay", "decay", "other_betas"],
)


def lion_paper(params, grads_sequence, *, lr, b1=0.9, b2=0.99, wd=0.0):
    """Chen et al. 2023, Algorithm 2 ("Lion"), line by line, one tensor at a time:
    c_t = b1 m_{t-1} + (1 - b1) g_t;
    theta_t = theta_{t-1} - eta_t (sign(c_t) + lambda theta_{t-1});
    m_t = b2 m_{t-1} + (1 - b2) g_t."""
    theta = [np.array(p, copy=True) for p in params]
    m = [np.zeros_like(p) for p in params]
    trajectory = []
    for t, grads in enumerate(grads_sequence):
        eta = lr(t) if callable(lr) else lr
        for i, g in enumerate(grads):
            c = b1 * m[i] + (1 - b1) * g
            theta[i] = theta[i] - eta * (np.sign(c) + wd * theta[i])
            m[i] = b2 * m[i] + (1 - b2) * g
        trajectory.append([x.copy() for x in theta])
    return trajectory


def _paper_kwargs(hyper):
    b1, b2 = hyper.get("betas", (0.9, 0.99))
    return dict(b1=b1, b2=b2, wd=hyper.get("weight_decay", 0.0))


@DTYPES
@HYPERS
def test_trajectory_equals_the_papers_algorithm(hyper, dtype):
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    ours = normref_trajectory(optim.lion(LR, **hyper), params, grads)
    expected = lion_paper(params, grads, lr=LR, **_paper_kwargs(hyper))
    assert_trajectories_close(ours, expected, dtype)


def test_scheduled_lr_equals_the_papers_algorithm():
    """Algorithm 2 reads eta_t at each step: our schedule at the 0-based step."""
    params, grads = initial_params(np.float64), gradient_sequence(np.float64)
    lr = schedules.cosine_with_warmup(LR, warmup_steps=5, total_steps=50)
    ours = normref_trajectory(optim.lion(lr, weight_decay=0.3), params, grads)
    assert_trajectories_close(ours, lion_paper(params, grads, lr=lr, wd=0.3), np.float64)


@DTYPES
@HYPERS
def test_trajectory_equals_optax_lion(hyper, dtype):
    """optax: scale_by_lion, add_decayed_weights, scale_by_learning_rate (unjitted: bitwise)."""
    optax = pytest.importorskip("optax")
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    kw = _paper_kwargs(hyper)
    ours = normref_trajectory(optim.lion(LR, **hyper), params, grads)
    theirs = optax_trajectory(
        optax.lion(LR, b1=kw["b1"], b2=kw["b2"], weight_decay=kw["wd"]), params, grads
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_scheduled_lr_and_weight_decay_equal_optax():
    optax = pytest.importorskip("optax")
    params, grads = initial_params(np.float64), gradient_sequence(np.float64, steps=20)
    lr = schedules.linear_with_warmup(LR, warmup_steps=4, total_steps=20)
    wd = schedules.step_decay(0.5, step_size=7, gamma=0.1)
    ours = normref_trajectory(optim.lion(lr, weight_decay=wd), params, grads)
    theirs = optax_trajectory(optax.lion(lr, weight_decay=wd), params, grads)
    assert_trajectories_close(ours, theirs, np.float64)


def test_each_element_moves_by_exactly_lr_and_sign_of_zero_is_zero():
    opt = optim.lion(0.25)
    p = [np.array([1.0, 1.0, 1.0, 1.0])]
    g = [np.array([1e-30, -1e30, 0.0, -0.0])]
    new, state = opt.update(p, g, opt.init(p))
    assert new[0].tolist() == [0.75, 1.25, 1.0, 1.0]
    # m = 0.01 g; at the next step c = 0.9 m + 0.1 g' with g' = 0: the momentum's sign
    newer, _ = opt.update(new, [np.zeros(4)], state)
    assert newer[0].tolist() == [0.5, 1.5, 1.0, 1.0]


def test_nan_propagates_to_that_element_only():
    opt = optim.lion(0.1)
    p = [np.array([1.0, 2.0])]
    new, state = opt.update(p, [np.array([np.nan, 1.0])], opt.init(p))
    assert np.isnan(new[0][0]) and new[0][1] == 1.9 and np.isnan(state.mu[0][0])


# -- pytorch_optimizer's variants ---------------------------------------------------------------


def _variant(name):
    return {v.name: v for v in OPTIMIZERS["lion"].variants}[name].factory


def _pytorch_optimizer_direct(grads, p0, *, lr, b1, b2, wd, weight_decouple, fixed_decay):
    """pytorch_optimizer/optimizer/lion.py::step with BaseOptimizer.apply_weight_decay, scalar
    by scalar."""
    p, m = list(p0), [0.0] * len(p0)
    for g in grads:
        for i, gi in enumerate(g):
            if weight_decouple:
                p[i] *= 1.0 - wd * (1.0 if fixed_decay else lr)
            elif wd > 0.0:
                gi = gi + wd * p[i]
            c = m[i] * b1 + gi * (1.0 - b1)
            update = float(c > 0) - float(c < 0)
            m[i] = m[i] * b2 + gi * (1.0 - b2)
            p[i] += -lr * update
    return p


@pytest.mark.parametrize(
    "variant, weight_decouple, fixed_decay",
    [(None, True, False), ("l2_weight_decay", False, False), ("unscaled_decay", True, True)],
)
def test_variants_equal_pytorch_optimizer_rederived(variant, weight_decouple, fixed_decay):
    rng = np.random.default_rng(17)
    grads = [list(rng.normal(size=3) * 10.0 ** rng.integers(-3, 1)) for _ in range(20)]
    p0 = [0.5, -1.0, 2.0]
    hyper = dict(lr=0.01, weight_decay=0.5)
    make = optim.lion if variant is None else _variant(variant)
    ours = normref_trajectory(make(**hyper), [np.array(p0)], [[np.array(g)] for g in grads])
    expected = _pytorch_optimizer_direct(
        grads,
        p0,
        lr=0.01,
        b1=0.9,
        b2=0.99,
        wd=0.5,
        weight_decouple=weight_decouple,
        fixed_decay=fixed_decay,
    )
    np.testing.assert_allclose(ours[-1][0], expected, rtol=1e-12, atol=1e-15)
    if variant is not None:
        reference = normref_trajectory(
            optim.lion(**hyper), [np.array(p0)], [[np.array(g)] for g in grads]
        )
        assert not np.allclose(ours[-1][0], reference[-1][0], rtol=1e-6, atol=0)


# -- contract and errors ------------------------------------------------------------------------


def test_variants_keep_the_contract():
    for variant in ("l2_weight_decay", "unscaled_decay"):
        make = lambda v=variant: _variant(v)(lr=LR, weight_decay=0.1)  # noqa: E731
        params, grads = initial_params(np.float32), gradient_sequence(np.float32, steps=5)
        assert_trajectories_identical(
            normref_trajectory(make(), params, grads, in_place=True),
            normref_trajectory(make(), params, grads),
        )
        assert make().kernel is None and f"variant='{variant}'" in repr(make())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-4), "lion: lr must be a finite number >= 0, got -0.0001"),
        (dict(betas=(0.9, 1.0)), r"lion: betas\[1\] must be in \[0, 1\), got 1.0"),
        (dict(betas=(0.9, 0.99, 0.999)), r"lion: betas must be a pair \(b1, b2\)"),
        (dict(weight_decay=float("nan")), "lion: weight_decay must be a finite number >= 0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.lion(**kwargs)
