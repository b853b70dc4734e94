"""Gradient clipping against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ and against a direct
re-derivation of adaptive gradient clipping; `chain`."""

import math

import numpy as np
import pytest
from optim_trajectories import SHAPES, gradient_sequence, initial_params

from normref import optim
from normref.registry import OPTIMIZERS

torch = pytest.importorskip("torch", reason="torch.nn.utils is the implementation checked against")

TOL = {np.float64: dict(rtol=1e-14, atol=0), np.float32: dict(rtol=1e-6, atol=1e-7)}


def _torch_clipped(grads, clip):
    tensors = [
        torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads
    ]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g)
    clip(tensors)
    return [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("max_norm", [0.5, 5.0, 1e4])  # clipping, clipping, not clipping
def test_global_norm_equals_torch(max_norm, dtype):
    grads = gradient_sequence(dtype, steps=1)[0]
    clip = optim.clip_by_global_norm(max_norm)
    ours, _ = clip.transform(grads, clip.init(grads))
    theirs = _torch_clipped(
        grads, lambda ts: torch.nn.utils.clip_grad_norm_(ts, max_norm, foreach=False)
    )
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype])
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    np.testing.assert_allclose(optim.global_norm(grads), total, rtol=1e-6)


def test_global_norm_keeps_torchs_eps_and_the_optax_variant_does_not():
    g = [np.array([3.0, 4.0])]  # norm exactly 5
    clip = optim.clip_by_global_norm(5.0)
    ours = clip.transform(g, clip.init(g))[0][0]
    np.testing.assert_array_equal(ours, g[0] * (5.0 / (5.0 + 1e-6)))  # scaled, just below 1
    variant = {v.name: v for v in OPTIMIZERS["clip_by_global_norm"].variants}["optax_no_eps"]
    optax = variant.factory(5.0)
    np.testing.assert_array_equal(optax.transform(g, optax.init(g))[0][0], (g[0] / 5.0) * 5.0)
    below = [np.array([0.3, 0.4])]
    np.testing.assert_array_equal(optax.transform(below, optax.init(below))[0][0], below[0])
    above = [np.array([30.0, 40.0])]
    np.testing.assert_allclose(optax.transform(above, optax.init(above))[0][0], [3.0, 4.0])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0, as intended
def test_global_norm_nan_and_inf_propagate_as_in_torch():
    grads = [np.array([1.0, np.nan]), np.array([2.0])]
    clip = optim.clip_by_global_norm(1.0)
    ours = clip.transform(grads, clip.init(grads))[0]
    theirs = _torch_clipped(
        grads, lambda ts: torch.nn.utils.clip_grad_norm_(ts, 1.0, foreach=False)
    )
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    grads = [np.array([1.0, np.inf]), np.array([2.0])]
    ours = clip.transform(grads, clip.init(grads))[0]
    theirs = _torch_clipped(
        grads, lambda ts: torch.nn.utils.clip_grad_norm_(ts, 1.0, foreach=False)
    )
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)  # scale 0: finite -> 0, inf -> nan


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_value_equals_torch(dtype):
    grads = gradient_sequence(dtype, steps=1)[0]
    grads[0] = np.array([np.nan], dtype)
    clip = optim.clip_by_value(0.7)
    ours, _ = clip.transform(grads, clip.init(grads))
    theirs = _torch_clipped(
        grads, lambda ts: torch.nn.utils.clip_grad_value_(ts, 0.7, foreach=False)
    )
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype and a.tobytes() == b.tobytes()


# -- adaptive gradient clipping -----------------------------------------------------------------


def _agc_by_hand(p, g, clipping, eps, layout="torch"):
    """Brock et al. 2021, eq. 3, one unit at a time with explicit loops. A 0-d/1-d array is one
    unit. torch layouts: a unit per output channel, the first axis. JAX layouts (optax): (in, out)
    and HWIO have a unit per output channel, the last axis; a 3-D (multi-head) array a unit per
    index of its last two axes."""
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    out = g.copy()
    if p.ndim <= 1:
        units = [(...,)]
    elif layout == "torch":
        units = [(i,) for i in range(p.shape[0])]
    elif p.ndim == 3:
        units = [(slice(None), j, k) for j in range(p.shape[1]) for k in range(p.shape[2])]
    else:
        units = [(..., i) for i in range(p.shape[-1])]
    for unit in units:
        w_norm = math.sqrt(float(np.sum(p[unit] ** 2)))
        g_norm = math.sqrt(float(np.sum(g[unit] ** 2)))
        limit = clipping * max(w_norm, eps)
        if g_norm >= limit:  # clipped exactly when the norm reaches the limit (timm: not <)
            out[unit] = g[unit] * (limit / max(g_norm, 1e-6))
    return out


def _agc_case(dtype):
    rng = np.random.default_rng(3)
    params = [rng.normal(size=s).astype(dtype) for s in SHAPES + [(4, 3, 2, 2)]]
    params[1][:] = 0  # a zero-initialized bias: the eps floor engages
    grads = []
    for p in params:
        g = rng.normal(size=p.shape) * 0.02
        if p.ndim >= 2:
            g[0] *= 100  # one unit far over the limit, the others near it
        grads.append(g.astype(dtype))
    return params, grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_adaptive_clip_equals_a_direct_rederivation(dtype):
    params, grads = _agc_case(dtype)
    agc = optim.adaptive_grad_clip(0.05)
    ours, _ = agc.transform(grads, agc.init(params), params)
    clipped_units = 0
    for p, g, a in zip(params, grads, ours):
        expected = _agc_by_hand(p, g, 0.05, 1e-3)
        assert a.dtype == dtype
        np.testing.assert_allclose(a, expected, rtol=1e-13 if dtype == np.float64 else 2e-6)
        clipped_units += int(np.any(expected != g))
    assert 2 <= clipped_units < len(params)  # the case exercises both branches


def test_adaptive_clip_equals_timms_formula_in_torch():
    """timm's adaptive_clip_grad, evaluated with torch ops (timm itself is not installed)."""
    params, grads = _agc_case(np.float64)
    agc = optim.adaptive_grad_clip(0.05, eps=1e-3)
    ours, _ = agc.transform(grads, agc.init(params), params)

    def unit(x):  # timm's unitwise_norm
        if x.ndim <= 1:
            return x.norm(2.0)
        return x.norm(2.0, dim=tuple(range(1, x.ndim)), keepdim=True)

    for p, g, a in zip(params, grads, ours):
        pt, gt = torch.tensor(p), torch.tensor(g)
        max_norm = unit(pt).clamp_(min=1e-3).mul_(0.05)
        g_norm = unit(gt)
        expected = torch.where(g_norm < max_norm, gt, gt * (max_norm / g_norm.clamp(min=1e-6)))
        np.testing.assert_allclose(a, expected.numpy(), rtol=1e-13)


def test_adaptive_clip_optax_layout_variant():
    params, grads = _agc_case(np.float64)
    variant = {v.name: v for v in OPTIMIZERS["adaptive_grad_clip"].variants}["optax_layout"]
    agc = variant.factory(0.05)
    ours, _ = agc.transform(grads, agc.init(params), params)
    for p, g, a in zip(params, grads, ours):
        np.testing.assert_allclose(a, _agc_by_hand(p, g, 0.05, 1e-3, layout="jax"), rtol=1e-13)
    with pytest.raises(ValueError, match="needs params"):
        agc.transform(grads, agc.init(params))


# -- chain --------------------------------------------------------------------------------------


def test_chain_clips_then_updates():
    params, sequence = initial_params(np.float64), gradient_sequence(np.float64, steps=15)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2))
    clip, adamw = optim.clip_by_global_norm(1.0), optim.adamw(1e-2)
    p_chain, state = params, opt.init(params)
    p_manual, s_manual = params, adamw.init(params)
    for grads in sequence:
        p_chain, state = opt.update(p_chain, grads, state)
        clipped, _ = clip.transform(grads, clip.init(grads))
        p_manual, s_manual = adamw.update(p_manual, clipped, s_manual)
    for a, b in zip(p_chain, p_manual):
        assert a.tobytes() == b.tobytes()
    assert int(state.inner[-1].step) == 15


def test_chain_against_torch_clip_then_adamw():
    from optim_trajectories import assert_trajectories_close, normref_trajectory

    params, sequence = initial_params(np.float64), gradient_sequence(np.float64)
    ours = normref_trajectory(
        optim.chain(optim.clip_by_global_norm(2.0), optim.adamw(1e-2)), params, sequence
    )
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.AdamW(tensors, lr=1e-2, foreach=False)
    theirs = []
    for grads in sequence:
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tensors, 2.0, foreach=False)
        opt.step()
        theirs.append([t.detach().numpy().copy() for t in tensors])
    assert_trajectories_close(ours, theirs, np.float64)


def test_chain_never_modifies_the_gradients():
    params = [np.ones(3)]
    grads = [np.full(3, 10.0)]
    opt = optim.chain(optim.clip_by_value(1.0), optim.sgd(0.1))
    opt.update_(params, grads, opt.init(params))
    np.testing.assert_array_equal(grads[0], 10.0)
    np.testing.assert_array_equal(params[0], 0.9)


def test_a_chain_of_transforms_is_a_transform():
    grads = [np.array([30.0, -40.0])]
    both = optim.chain(optim.clip_by_value(20.0), optim.clip_by_global_norm(1.0))
    out, state = both.transform(grads, both.init(grads))
    np.testing.assert_allclose(out[0], np.array([20.0, -20.0]) / math.hypot(20, 20), rtol=1e-6)
    nested = optim.chain(both, optim.sgd(1.0))
    p = [np.zeros(2)]
    new, _ = nested.update(p, grads, nested.init(p))
    np.testing.assert_array_equal(new[0], -out[0])


def test_chain_errors():
    with pytest.raises(TypeError, match="chain: only the last link may be an optimizer; link 0"):
        optim.chain(optim.adam(), optim.clip_by_value(1.0))
    with pytest.raises(TypeError, match="chain: link 1 must be a gradient transform"):
        optim.chain(optim.clip_by_value(1.0), "adam")
    with pytest.raises(ValueError, match="chain: needs at least one link"):
        optim.chain()
    opt = optim.chain(optim.clip_by_value(1.0), optim.adam())
    with pytest.raises(TypeError, match="chain: state must be the ChainState of 2 states"):
        opt.update([np.ones(1)], [np.ones(1)], optim.adam().init([np.ones(1)]))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: optim.clip_by_global_norm(0.0),
            "clip_by_global_norm: max_norm must be a finite number > 0",
        ),
        (
            lambda: optim.clip_by_value(-1.0),
            "clip_by_value: clip_value must be a finite number > 0",
        ),
        (
            lambda: optim.adaptive_grad_clip(0.01, eps=0.0),
            "adaptive_grad_clip: eps must be a finite number > 0",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
