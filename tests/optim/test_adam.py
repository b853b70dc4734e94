"""Adam, AdamW and AMSGrad against torch.optim (single-tensor path), 50 steps, float64 and float32;
scheduled hyperparameters; the peers' variants against direct re-derivations of their formulas."""

import itertools
import math

import numpy as np
import pytest
from contract_checks import (
    assert_variant_equals_direct,
    combo_id,
    direct_gradients,
    variant_factory,
)
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

LR = 3e-3
OURS = {"adam": optim.adam, "adamw": optim.adamw}
TORCH = {"adam": lambda: torch.optim.Adam, "adamw": lambda: torch.optim.AdamW}

COMBOS = [
    dict(amsgrad=a, weight_decay=wd, maximize=m)
    for a, wd, m in itertools.product((False, True), (0.0, 0.1), (False, True))
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_trajectory_equals_torch(name, combo, dtype):
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    ours = normref_trajectory(OURS[name](LR, **combo), params, grads)
    theirs = torch_trajectory(
        lambda ps: TORCH[name]()(ps, lr=LR, foreach=False, **combo), params, grads
    )
    assert_trajectories_close(ours, theirs, dtype)


@pytest.mark.parametrize(
    "betas, eps",
    [((0.5, 0.9), 1e-6), ((0.0, 0.0), 1e-8), ((0.3, 0.99), 1e-3), ((0.95, 0.5), 1e-12)],
)
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_other_betas_and_eps_equal_torch(name, betas, eps):
    """b1 <= 0.5 takes the other branch of PyTorch's lerp (exact at b1 = 0)."""
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=20)
    kw = dict(betas=betas, eps=eps, amsgrad=True, weight_decay=0.01)
    ours = normref_trajectory(OURS[name](0.02, **kw), params, grads)
    theirs = torch_trajectory(
        lambda ps: TORCH[name]()(ps, lr=0.02, foreach=False, **kw), params, grads
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_b1_zero_makes_mu_the_gradient_exactly():
    opt = optim.adam(0.1, betas=(0.0, 0.9))
    p = [np.array([1.0, 2.0])]
    g = [np.array([0.1, 0.7])]
    _, state = opt.update(p, g, opt.update(p, [np.array([5.0, -3.0])], opt.init(p))[1])
    assert state.mu[0].tobytes() == g[0].tobytes()


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_scheduled_lr_equals_torch_lambda_lr(name):
    """lr(step) with the 0-based step of the update: PyTorch's LambdaLR stepped after each step."""
    dtype = np.float64
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    lr = schedules.cosine_with_warmup(LR, warmup_steps=5, total_steps=40, initial=1e-4)
    ours = normref_trajectory(OURS[name](lr, weight_decay=0.05), params, grads)
    theirs = torch_trajectory(
        lambda ps: TORCH[name]()(ps, lr=LR, weight_decay=0.05, foreach=False),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: lr(t) / LR),
    )
    assert_trajectories_close(ours, theirs, dtype)


def test_scheduled_b1_equals_torch_one_cycle():
    """OneCycleLR cycles Adam's betas[0]; PyTorch's bias correction uses the current b1."""
    dtype, total = np.float64, 50
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    opt = optim.adamw(
        schedules.one_cycle(0.01, total), betas=(schedules.one_cycle_momentum(total), 0.999)
    )
    ours = normref_trajectory(opt, params, grads)
    theirs = torch_trajectory(
        lambda ps: torch.optim.AdamW(ps, lr=0.01, foreach=False),
        params,
        grads,
        make_scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.01, total_steps=total),
    )
    assert_trajectories_close(ours[: total - 1], theirs[: total - 1], dtype)


def test_amsgrad_keeps_the_max_of_the_raw_second_moment():
    """Worked probe of the conventions note: g = 1, 0, 0 with lr 1e-3 -> p = -2.187e-3 (PyTorch,
    Keras: max of raw nu) vs -1.773e-3 (optax: max of the bias-corrected nu)."""
    grads = [[np.array([1.0])], [np.array([0.0])], [np.array([0.0])]]
    p0 = [np.array([0.0])]
    ours = normref_trajectory(optim.adam(1e-3, amsgrad=True), p0, grads)[-1][0]
    np.testing.assert_allclose(ours, [-2.187e-3], rtol=1e-3)
    variant = variant_factory("adam", "max_of_bias_corrected")
    optax_like = normref_trajectory(variant(lr=1e-3, amsgrad=True), p0, grads)[-1][0]
    np.testing.assert_allclose(optax_like, [-1.773e-3], rtol=1e-3)


# -- variants ---------------------------------------------------------------------------------


def _direct(grads, p0, *, lr, b1, b2, eps, wd, convention, amsgrad=False):
    """A plain-Python re-derivation, one scalar at a time, of each peer's formula."""
    p, m, v, vmax = list(p0), [0.0] * len(p0), [0.0] * len(p0), [0.0] * len(p0)
    for t, g in enumerate(grads, start=1):
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        for i, gi in enumerate(g):
            if convention in ("adamw", "keras"):
                p[i] -= lr * wd * p[i]
            elif convention == "paper_w":
                p[i] -= wd * p[i]
            else:  # L2
                gi = gi + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            if convention == "optax_ams":
                vmax[i] = max(vmax[i], v[i] / bc2)
                p[i] -= lr * (m[i] / bc1) / (math.sqrt(vmax[i]) + eps)
                continue
            vi = v[i]
            if amsgrad:
                vmax[i] = max(vmax[i], v[i])
                vi = vmax[i]
            if convention == "keras":
                p[i] -= lr * math.sqrt(bc2) / bc1 * m[i] / (math.sqrt(vi) + eps)
            elif convention == "eps_root":
                p[i] -= lr * (m[i] / bc1) / math.sqrt(vi / bc2 + eps)
            elif convention == "no_bc":
                p[i] -= lr * m[i] / (math.sqrt(vi) + eps)
            else:
                p[i] -= lr * (m[i] / bc1) / (math.sqrt(vi / bc2) + eps)
    return p


CASES = [
    # (registry entry, variant, convention of _direct, weight decay, amsgrad)
    ("adam", "l2_vs_decoupled", "adamw", 0.1, False),
    ("adamw", "l2_vs_decoupled", "l2", 0.1, False),
    ("adamw", "unscaled_decay", "paper_w", 0.1, False),
    ("adam", "max_of_bias_corrected", "optax_ams", 0.0, True),
    ("adamw", "max_of_bias_corrected", "optax_ams", 0.0, True),
    ("adam", "eps_root", "eps_root", 0.0, False),
    ("adam", "keras_eps_hat", "keras", 0.0, False),
    ("adamw", "keras_eps_hat", "keras", 0.1, True),
    ("adam", "no_bias_correction", "no_bc", 0.0, False),
]


@pytest.mark.parametrize("name, variant, convention, wd, amsgrad", CASES)
def test_variant_equals_a_direct_rederivation(name, variant, convention, wd, amsgrad):
    grads = direct_gradients(5, steps=12, low=-7, zero_step=7)
    p0 = [0.5, -1.0, 2.0]
    hyper = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-7, weight_decay=wd, amsgrad=amsgrad)
    expected = _direct(
        grads,
        p0,
        lr=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-7,
        wd=wd,
        convention=convention,
        amsgrad=amsgrad,
    )
    assert_variant_equals_direct(
        variant_factory(name, variant), OURS[name], hyper, grads, p0, expected, separation=1e-9
    )


def test_keras_eps_hat_is_eps_out_with_a_step_dependent_eps():
    """lr*sqrt(bc2)/bc1 * m/(sqrt(v)+eps) = lr/bc1 * m/(sqrt(v)/sqrt(bc2) + eps/sqrt(bc2)): one step
    of the Keras form equals the reference with eps / sqrt(1 - b2)."""
    p, g = [np.array([0.3])], [np.array([1e-6])]
    keras = variant_factory("adam", "keras_eps_hat")(lr=1e-3, eps=1e-7)
    ours = keras.update(p, g, keras.init(p))[0][0]
    ref = optim.adam(1e-3, eps=1e-7 / math.sqrt(1 - 0.999))
    np.testing.assert_allclose(ours, ref.update(p, g, ref.init(p))[0][0], rtol=1e-13)
    # the conventions note's probe: update 2.40e-4 at g = 1e-6, eps 1e-7
    np.testing.assert_allclose(0.3 - ours, [2.40e-4], rtol=5e-3)


def test_variants_keep_the_contract_and_never_dispatch_to_kernels():
    opt = variant_factory("adam", "eps_root")(lr=0.01)
    params = {"w": np.ones(3)}
    state = opt.init(params)
    new, new_state = opt.update(params, {"w": np.full(3, 0.5)}, state)
    opt.update_(params, {"w": np.full(3, 0.5)}, state)
    assert new["w"].tobytes() == params["w"].tobytes()
    assert opt.kernel is None and "variant" in repr(opt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-3), "adam: lr must be a finite number >= 0, got -0.001"),
        (dict(betas=(1.0, 0.999)), r"adam: betas\[0\] must be in \[0, 1\), got 1.0"),
        (dict(betas=(0.9, -0.1)), r"adam: betas\[1\] must be in \[0, 1\), got -0.1"),
        (dict(betas=(0.9,)), r"adam: betas must be a pair \(b1, b2\), got \(0.9,\)"),
        (dict(eps=0.0), "adam: eps must be a finite number > 0, got 0.0"),
        (dict(eps=-1e-8), "adam: eps must be a finite number > 0"),
        (dict(weight_decay=-0.01), "adam: weight_decay must be a finite number >= 0, got -0.01"),
        (dict(amsgrad=1), "adam: amsgrad must be True or False, got 1"),
        (dict(lr="0.1"), "adam: lr must be a real number >= 0, got '0.1'"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        optim.adam(**kwargs)


def test_adamw_names_itself_in_errors():
    with pytest.raises(ValueError, match="adamw: weight_decay"):
        optim.adamw(weight_decay=-1.0)
