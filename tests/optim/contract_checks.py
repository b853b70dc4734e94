"""Generic checks of the optimizer contract (design.md §4, §9) for one optimizer, shared by the
per-optimizer test files; the two peer runners they compare against: torch.optim under a chosen
default dtype, and optax in double precision; and the comparisons those files share: a trajectory
against a peer's, a variant against a direct re-derivation of its peer's formula.

Each check takes `make`, a function returning a fresh optimizer, so that no state leaks from one
run into the next.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
from optim_trajectories import (
    STEPS,
    TOLERANCE,
    assert_trajectories_close,
    assert_trajectories_identical,
    gradient_sequence,
    initial_params,
    normref_trajectory,
    torch_trajectory,
)

from normref import optim
from normref.registry import OPTIMIZERS

KEYS = ["w", "b", "conv", "x"]
FLOAT_DTYPES = pytest.mark.parametrize(
    "dtype", [np.float64, np.float32], ids=["float64", "float32"]
)


def arrays_of(tree):
    """Every NumPy array in a tree of states, dicts, lists and tuples, in a fixed order."""
    if tree is None:
        return []
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in arrays_of(v)]
    return [a for v in tree for a in arrays_of(v)]


def assert_update_in_place_equals_update(make, dtype, steps=30):
    """update_ writes exactly update's numbers, bit for bit, step after step."""
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=steps)
    pure = normref_trajectory(make(), params, grads)
    in_place = normref_trajectory(make(), params, grads, in_place=True)
    assert_trajectories_identical(in_place, pure)


def assert_update_is_pure(make):
    """update leaves params, grads and state untouched and returns arrays that share no memory
    with them (checked on a live state, after a few steps)."""
    opt = make()
    params = dict(zip(KEYS, initial_params(np.float64)))
    sequence = gradient_sequence(np.float64, steps=4)
    state = opt.init(params)
    for grads in sequence[:3]:
        params, state = opt.update(params, dict(zip(KEYS, grads)), state)
    grads = dict(zip(KEYS, sequence[3]))
    before = [a.copy() for a in arrays_of((params, grads, state))]
    new_params, new_state = opt.update(params, grads, state)
    after = arrays_of((params, grads, state))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
    for new in arrays_of((new_params, new_state)):
        for old in after:
            assert not np.shares_memory(new, old)
    assert list(new_params) == KEYS


def assert_checkpoint_round_trip(make, tmp_path, dtype):
    """save/load of a live state is bit-exact and resuming continues the trajectory bit for bit."""
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=12)
    straight = normref_trajectory(make(), params, grads, in_place=True)
    opt = make()
    p = [x.copy() for x in params]
    state = opt.init(p)
    for g in grads[:6]:
        opt.update_(p, g, state)
    path = tmp_path / "state.npz"
    optim.save(path, state)
    loaded = optim.load(path)
    assert type(loaded) is type(state)
    for a, b in zip(arrays_of(loaded), arrays_of(state)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    opt = make()  # a fresh optimizer, as in a new process
    for g in grads[6:]:
        opt.update_(p, g, loaded)
    assert_trajectories_identical([p], [straight[-1]])


def assert_bad_grads_refused_without_mutation(make):
    """Mismatched grads are refused by update and update_ before anything moves."""
    opt = make()
    params = [np.ones(5), np.linspace(-1.0, 1.0, 12).reshape(3, 4)]
    state = opt.init(params)
    for _ in range(2):
        opt.update_(params, [np.full_like(p, 0.5) for p in params], state)
    snapshot = [a.copy() for a in arrays_of((params, state))]
    bad = [
        ([np.ones(5)], ValueError, "params has 2 arrays but grads has 1"),
        ([np.ones(5), np.ones((4, 3))], ValueError, r"grads\[1\] must have shape \(3, 4\)"),
        ([np.ones(5), np.ones((3, 4), np.float32)], TypeError, "must have the dtype of"),
    ]
    for grads, error, message in bad:
        with pytest.raises(error, match=message):
            opt.update_(params, grads, state)
        with pytest.raises(error, match=message):
            opt.update(params, grads, state)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(snapshot, arrays_of((params, state))))


def assert_runs_on_array_api_strict_and_torch(make, rtol_torch=1e-13):
    """The same numbers through array-api-strict (bitwise) and torch tensors (torch's sqrt is not
    correctly rounded: to rounding)."""
    import array_api_strict

    params, sequence = initial_params(np.float64), gradient_sequence(np.float64, steps=8)
    expected = normref_trajectory(make(), params, sequence)[-1]
    opt = make()
    strict = [array_api_strict.asarray(p.copy()) for p in params]  # update_ writes into it
    state = opt.init(strict)
    for grads in sequence:
        new, _ = opt.update(strict, [array_api_strict.asarray(g) for g in grads], state)
        opt.update_(strict, [array_api_strict.asarray(g) for g in grads], state)
    for x, y, z in zip(strict, new, expected):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes() == z.tobytes()
    torch = pytest.importorskip("torch")
    opt = make()
    tensors = [torch.tensor(p) for p in params]
    state = opt.init(tensors)
    for grads in sequence:
        opt.update_(tensors, [torch.tensor(g) for g in grads], state)
    for x, z in zip(tensors, expected):
        np.testing.assert_allclose(x.numpy(), z, rtol=rtol_torch, atol=1e-15)


def assert_docstring_examples_run(module_name):
    """The module's docstring examples (its factory's) run and print what they claim."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# -- peers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """torch.optim keeps its scalar state (step, NAdam's mu_product) in the default dtype:
    float64 runs are compared with float64 scalar state."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def combo_id(combo):
    """A test id for a dict of keyword arguments: "k1=v1,k2=v2"."""
    return ",".join(f"{k}={v}" for k, v in combo.items())


def torch_factory(cls_name, **kw):
    """make_optimizer for torch_trajectory: torch.optim.<cls_name> on its single-tensor path."""
    import torch

    return lambda ps: getattr(torch.optim, cls_name)(ps, foreach=False, **kw)


def torch_trajectory_in(dtype, make_optimizer, params, grads, make_scheduler=None):
    with torch_default_dtype(dtype):
        return torch_trajectory(make_optimizer, params, grads, make_scheduler)


def optax_trajectory(tx, params, grads_sequence):
    """The params after every step of an optax transformation, unjitted (jit lets XLA contract
    multiply-adds), in double precision (jax.enable_x64) whatever the dtype of the arrays."""
    import jax
    import jax.numpy as jnp
    import optax

    trajectory = []
    with jax.enable_x64(True):
        p = [jnp.asarray(x) for x in params]
        state = tx.init(p)
        for grads in grads_sequence:
            updates, state = tx.update([jnp.asarray(g) for g in grads], state, p)
            p = optax.apply_updates(p, updates)
            trajectory.append([np.asarray(x) for x in p])
    return trajectory


def worst_error(ours, theirs):
    """The largest |ours - theirs| / (atol + rtol * |theirs|) over a trajectory: the fraction of
    the dtype's tolerance used (assert_trajectories_close passes when this is <= 1)."""
    worst = 0.0
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            tol = TOLERANCE[x.dtype.type]
            error = np.abs(x.astype(np.float64) - y) / (tol["atol"] + tol["rtol"] * np.abs(y))
            worst = max(worst, float(np.max(error)))
    return worst


# -- comparisons ------------------------------------------------------------------------------


def variant_factory(entry, name):
    """The factory of the variant `name` of the registry entry `entry`."""
    return {v.name: v for v in OPTIMIZERS[entry].variants}[name].factory


def assert_trajectory_equals(opt, peer, dtype=np.float64, steps=STEPS):
    """opt's trajectory over the shared params and `steps` gradients equals peer(params, grads)'s
    (a list of params per step) to the dtype's tolerance."""
    params, grads = initial_params(dtype), gradient_sequence(dtype, steps=steps)
    assert_trajectories_close(normref_trajectory(opt, params, grads), peer(params, grads), dtype)


def optax_peer(tx):
    """The optax transformation tx as a peer for assert_trajectory_equals."""
    return functools.partial(optax_trajectory, tx)


def direct_gradients(seed, steps, low, size=3, zero_step=None):
    """Gradients for a direct re-derivation: `steps` lists of `size` floats, each list scaled by
    10**k for a k drawn from [low, 0], all 0.0 at zero_step."""
    rng = np.random.default_rng(seed)
    grads = [list(rng.normal(size=size) * 10.0 ** rng.integers(low, 1)) for _ in range(steps)]
    if zero_step is not None:
        grads[zero_step] = [0.0] * size
    return grads


def assert_variant_equals_direct(
    variant, reference, hyper, grads, p0, expected, *, separation=None
):
    """variant(**hyper) run on the single tensor p0 ends at `expected` (a direct re-derivation's
    result) to float64 rounding; unless reference is None, reference(**hyper) ends further than
    rtol=separation from it: the probe separates the variant from the reference."""
    sequence = [[np.array(g)] for g in grads]
    ours = normref_trajectory(variant(**hyper), [np.array(p0)], sequence)[-1][0]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    if reference is not None:
        theirs = normref_trajectory(reference(**hyper), [np.array(p0)], sequence)[-1][0]
        assert not np.allclose(ours, theirs, rtol=separation, atol=0), "the probe must separate it"
