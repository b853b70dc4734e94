"""Lion against an independent NumPy transcription of the paper's Algorithm 2 and against
optax.lion (where optax imports: it is not a test dependency, so CI may skip those), 50 steps,
float64 and float32; sign(0) = 0; pytorch_optimizer's weight-decay variants against direct
re-derivations of its step; the contract; errors."""

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
    assert_trajectories_identical,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

from normref import optim
from normref.optim import schedules

LR = 3e-3
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


@FLOAT_DTYPES
@HYPERS
def test_trajectory_equals_the_papers_algorithm(hyper, dtype):
    paper = partial(lion_paper, lr=LR, **_paper_kwargs(hyper))
    assert_trajectory_equals(optim.lion(LR, **hyper), paper, dtype)


def test_scheduled_lr_equals_the_papers_algorithm():
    """Algorithm 2 reads eta_t at each step: our schedule at the 0-based step."""
    lr = schedules.cosine_with_warmup(LR, warmup_steps=5, total_steps=50)
    assert_trajectory_equals(optim.lion(lr, weight_decay=0.3), partial(lion_paper, lr=lr, wd=0.3))


@FLOAT_DTYPES
@HYPERS
def test_trajectory_equals_optax_lion(hyper, dtype):
    """optax: scale_by_lion, add_decayed_weights, scale_by_learning_rate (unjitted: bitwise)."""
    optax = pytest.importorskip("optax")
    kw = _paper_kwargs(hyper)
    tx = optax.lion(LR, b1=kw["b1"], b2=kw["b2"], weight_decay=kw["wd"])
    assert_trajectory_equals(optim.lion(LR, **hyper), optax_peer(tx), dtype)


def test_scheduled_lr_and_weight_decay_equal_optax():
    optax = pytest.importorskip("optax")
    lr = schedules.linear_with_warmup(LR, warmup_steps=4, total_steps=20)
    wd = schedules.step_decay(0.5, step_size=7, gamma=0.1)
    ours = optim.lion(lr, weight_decay=wd)
    assert_trajectory_equals(ours, optax_peer(optax.lion(lr, weight_decay=wd)), steps=20)


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
    grads = direct_gradients(17, steps=20, low=-3)
    p0 = [0.5, -1.0, 2.0]
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
    assert_variant_equals_direct(
        optim.lion if variant is None else variant_factory("lion", variant),
        None if variant is None else optim.lion,  # the reference itself: nothing to separate
        dict(lr=0.01, weight_decay=0.5),
        grads,
        p0,
        expected,
        separation=1e-6,
    )


# -- contract and errors ------------------------------------------------------------------------


def test_variants_keep_the_contract():
    for variant in ("l2_weight_decay", "unscaled_decay"):
        make = lambda v=variant: variant_factory("lion", v)(lr=LR, weight_decay=0.1)  # noqa: E731
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
