"""LARS against an independent NumPy transcription of the paper's Algorithm 1 (with the trust
coefficient of its equation 6), its optax variant against optax.lars (where optax imports: it is
not a test dependency, so CI may skip those), 50 steps, float64 and float32; excluded tensors are
momentum SGD (checked against torch.optim.SGD); the masks; pytorch_optimizer's conventions against
direct re-derivations; the contract; errors."""

from functools import partial

import numpy as np
import pytest
from contract_checks import (
    FLOAT_DTYPES,
    assert_trajectory_equals,
    assert_variant_equals_direct,
    direct_gradients,
    optax_peer,
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

LR = 2.0  # LARS' global rates are large: the trust coefficient 1e-3 scales them down
HYPERS = pytest.mark.parametrize(
    "hyper",
    [
        dict(),
        dict(weight_decay=5e-4, eps=1e-9),
        dict(momentum=0.5, nesterov=True, weight_decay=0.01, trust_coefficient=0.02),
        dict(momentum=0.0, weight_decay=0.1),
    ],
    ids=["default", "decay", "nesterov", "no_momentum"],
)


def lars_paper(params, grads_sequence, *, lr, m=0.9, beta=0.0, eta=1e-3, eps=0.0, nesterov=False):
    """You, Gitman & Ginsburg 2017, Algorithm 1 ("SGD with LARS"), layer by layer, with eq. (6)'s
    trust coefficient eta in the local LR:
    lambda^l = eta ||w^l|| / (||g^l|| + beta ||w^l|| + eps)   (1 where a norm is 0);
    v^l = m v^l + gamma_t lambda^l (g^l + beta w^l);  w^l = w^l - v^l.
    Nesterov (not in the paper) as flax.optim.LARS: w^l = w^l - (gamma lambda d + m v^l)."""
    w = [np.array(p, copy=True) for p in params]
    v = [np.zeros_like(p) for p in params]
    trajectory = []
    for t, grads in enumerate(grads_sequence):
        gamma = lr(t) if callable(lr) else lr
        for i, g in enumerate(grads):
            w_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g)
            if w_norm > 0 and g_norm > 0:
                local = eta * w_norm / (g_norm + beta * w_norm + eps)
            else:
                local = 1.0
            step = gamma * local * (g + beta * w[i])
            v[i] = m * v[i] + step
            w[i] = w[i] - (step + m * v[i] if nesterov else v[i])
        trajectory.append([x.copy() for x in w])
    return trajectory


def _paper_kwargs(hyper):
    return dict(
        m=hyper.get("momentum", 0.9),
        beta=hyper.get("weight_decay", 0.0),
        eta=hyper.get("trust_coefficient", 1e-3),
        eps=hyper.get("eps", 0.0),
        nesterov=hyper.get("nesterov", False),
    )


@FLOAT_DTYPES
@HYPERS
def test_trajectory_equals_the_papers_algorithm(hyper, dtype):
    paper = partial(lars_paper, lr=LR, **_paper_kwargs(hyper))
    assert_trajectory_equals(optim.lars(LR, **hyper), paper, dtype)


def test_scheduled_lr_is_inside_the_momentum_as_in_the_paper():
    """The paper's polynomial decay gamma_t = gamma_0 (1 - t/T)^2, read at each step."""
    lr = lambda t: LR * (1 - t / 50) ** 2  # noqa: E731
    assert_trajectory_equals(
        optim.lars(lr, weight_decay=1e-3), partial(lars_paper, lr=lr, beta=1e-3)
    )


@FLOAT_DTYPES
@HYPERS
def test_optax_variant_equals_optax_lars(hyper, dtype):
    optax = pytest.importorskip("optax")
    ours = variant_factory("lars", "optax_trust_ratio")(lr=LR, **hyper)
    assert_trajectory_equals(ours, optax_peer(optax.lars(LR, **hyper)), dtype)


def test_optax_masks_equal_optax_lars():
    optax = pytest.importorskip("optax")
    masks = dict(
        weight_decay_mask=[False, True, True, False], trust_ratio_mask=[True, False, True, True]
    )
    ours = variant_factory("lars", "optax_trust_ratio")(lr=LR, weight_decay=0.01, **masks)
    theirs = optax_peer(optax.lars(LR, weight_decay=0.01, **masks))
    assert_trajectory_equals(ours, theirs, steps=20)


@pytest.mark.parametrize("nesterov", [False, True])
def test_excluded_tensors_are_momentum_sgd_as_torch(nesterov):
    """Out of the trust-ratio mask, without decay: PyTorch's SGD with momentum (lr inside the
    buffer is the same trajectory for a constant lr)."""
    torch = pytest.importorskip("torch")
    opt = optim.lars(0.01, momentum=0.9, nesterov=nesterov, trust_ratio_mask=False)

    def sgd(ps):
        return torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=nesterov, foreach=False)

    assert_trajectory_equals(opt, partial(torch_trajectory_in, np.float64, sgd))


def test_bias_exclusion_by_predicate_and_by_dict():
    """The usual recipe: 1-D tensors (biases, norm gains) take neither decay nor the ratio."""
    params, grads = initial_params(np.float64), gradient_sequence(np.float64, steps=10)
    keys = ["w", "b", "conv", "x"]
    by_rank = lambda p: p.ndim > 1  # noqa: E731
    pred = optim.lars(LR, weight_decay=1e-3, weight_decay_mask=by_rank, trust_ratio_mask=by_rank)
    as_dict = {"w": False, "b": False, "conv": True, "x": True}
    mapped = optim.lars(LR, weight_decay=1e-3, weight_decay_mask=as_dict, trust_ratio_mask=as_dict)
    a = normref_trajectory(pred, params, grads)[-1]
    p = dict(zip(keys, params))
    state = mapped.init(p)
    for g in grads:
        p, state = mapped.update(p, dict(zip(keys, g)), state)
    assert all(x.tobytes() == p[k].tobytes() for x, k in zip(a, keys))
    # the 1-D tensor "b" followed plain momentum SGD with lr, no decay
    v, w = np.zeros_like(params[1]), params[1].copy()
    for g in grads:
        v = 0.9 * v + LR * g[1]
        w = w - v
    np.testing.assert_allclose(a[1], w, rtol=1e-12)


def test_zero_norms_take_the_unscaled_step():
    opt = optim.lars(0.1, momentum=0.0)
    p = [np.zeros(2), np.ones(2)]
    new, _ = opt.update(p, [np.array([1.0, -1.0]), np.zeros(2)], opt.init(p))
    np.testing.assert_array_equal(new[0], [-0.1, 0.1])  # ||p|| = 0: ratio 1
    assert new[1].tobytes() == p[1].tobytes()  # ||g|| = 0, no decay: no step, no NaN


# -- conventions of peers -----------------------------------------------------------------------


def _direct(grads, p0, *, lr, mu, wd, eta, eps, convention):
    """pytorch_optimizer-style LARS steps (lr after the momentum; its ratio without decay or
    eps), one tensor at a time, lr a function of the 0-based step."""
    p, buf = np.array(p0, dtype=float), np.zeros(len(p0))
    for t, g in enumerate(grads):
        g = np.array(g)
        p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        if convention == "gradient_only":
            ratio = eta * p_norm / g_norm
            buf = mu * buf + lr(t) * ratio * (g + wd * p)
            p = p - buf
        else:  # lr_outside
            ratio = eta * p_norm / (g_norm + wd * p_norm + eps)
            buf = mu * buf + ratio * (g + wd * p)
            p = p - lr(t) * buf
    return p


@pytest.mark.parametrize(
    "variant, convention",
    [("gradient_only_ratio", "gradient_only"), ("lr_outside_momentum", "lr_outside")],
)
def test_variant_equals_a_direct_rederivation(variant, convention):
    grads = direct_gradients(23, steps=15, low=-2, size=4)
    p0 = [0.5, -1.0, 2.0, 0.1]
    lr = schedules.step_decay(5.0, step_size=5, gamma=0.2)  # separates the lr placements
    hyper = dict(lr=lr, momentum=0.9, weight_decay=0.05, trust_coefficient=0.01, eps=1e-6)
    expected = _direct(grads, p0, lr=lr, mu=0.9, wd=0.05, eta=0.01, eps=1e-6, convention=convention)
    assert_variant_equals_direct(
        variant_factory("lars", variant), optim.lars, hyper, grads, p0, expected, separation=1e-6
    )


def test_optax_ratio_differs_only_with_weight_decay():
    params, grads = initial_params(np.float64), gradient_sequence(np.float64, steps=10)
    optax_like = variant_factory("lars", "optax_trust_ratio")
    same = normref_trajectory(optax_like(lr=LR), params, grads)
    assert_trajectories_close(same, normref_trajectory(optim.lars(LR), params, grads), np.float64)
    a = normref_trajectory(optax_like(lr=LR, weight_decay=0.5), params, grads)[-1][0]
    b = normref_trajectory(optim.lars(LR, weight_decay=0.5), params, grads)[-1][0]
    assert not np.allclose(a, b, rtol=1e-6, atol=0)


# -- contract and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lars: lr must be a finite number >= 0, got -1.0"),
        (dict(lr=1.0, momentum=-0.9), "lars: momentum must be a finite number >= 0, got -0.9"),
        (
            dict(lr=1.0, trust_coefficient=0.0),
            "lars: trust_coefficient must be a finite number > 0",
        ),
        (dict(lr=1.0, eps=-1e-9), "lars: eps must be a finite number >= 0, got -1e-09"),
        (dict(lr=1.0, momentum=0.0, nesterov=True), "lars: nesterov=True needs momentum > 0"),
        (dict(lr=1.0, trust_ratio_mask=1), "lars: trust_ratio_mask must be True/False"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.lars(**kwargs)


def test_lr_is_required():
    with pytest.raises(TypeError):
        optim.lars()  # the signature has no default lr, as sgd
