"""Shared by the optimizer tests: fixed parameters, a fixed gradient sequence, and trajectories run
through normref and through torch.optim on the same numbers.

The gradients are drawn once from a seeded generator (not computed from a loss), so both sides see
identical gradients at every step whatever the parameters do. One step's gradient is exactly zero
and one step's is scaled to magnitude ~1e3.
"""

from __future__ import annotations

import numpy as np

try:  # NumPy's bfloat16 (ml_dtypes, as JAX uses it); its cases are left out without it
    from ml_dtypes import bfloat16
except ImportError:
    bfloat16 = None

# The params dtypes of the contract tests: the 16-bit ones keep float32 state and round once.
PARAM_DTYPES = [np.float64, np.float32, np.float16] + ([bfloat16] if bfloat16 is not None else [])

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4)]
STEPS = 50
ZERO_STEP = 11  # every gradient exactly 0
LARGE_STEP = 23  # every gradient scaled by 1e3

# float64: a few roundings per step apart (PyTorch's CPU kernels fuse multiply-adds and use a
# vectorized sqrt that is not correctly rounded; normref rounds each operation). float32: the same
# arithmetic in float32.
TOLERANCE = {
    np.float64: dict(rtol=1e-12, atol=1e-14),
    np.float32: dict(rtol=2e-5, atol=2e-6),
}


def initial_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in SHAPES]


def gradient_sequence(dtype, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    sequence = []
    for t in range(steps):
        grads = [rng.normal(size=s) for s in SHAPES]
        if t == ZERO_STEP:
            grads = [np.zeros(s) for s in SHAPES]
        if t == LARGE_STEP:
            grads = [1e3 * g for g in grads]
        sequence.append([g.astype(dtype) for g in grads])
    return sequence


def normref_trajectory(opt, params, grads_sequence, in_place=False):
    """The params after every step (copies), running opt.update or opt.update_."""
    params = [p.copy() for p in params]
    state = opt.init(params)
    trajectory = []
    for grads in grads_sequence:
        if in_place:
            opt.update_(params, grads, state)
        else:
            params, state = opt.update(params, grads, state)
        trajectory.append([np.array(p, copy=True) for p in params])
    return trajectory


def torch_trajectory(make_optimizer, params, grads_sequence, make_scheduler=None):
    """The same with torch.optim: make_optimizer(tensors) -> optimizer (single-tensor path)."""
    import torch

    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = make_optimizer(tensors)
    scheduler = None if make_scheduler is None else make_scheduler(optimizer)
    trajectory = []
    for grads in grads_sequence:
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        trajectory.append([t.detach().numpy().copy() for t in tensors])
    return trajectory


def assert_trajectories_close(ours, theirs, dtype):
    tolerance = TOLERANCE[dtype]
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype == dtype
            np.testing.assert_allclose(
                x, y, **tolerance, err_msg=f"step {step} (0-based), param {i} of shape {x.shape}"
            )


def assert_trajectories_identical(ours, theirs):
    """Bit for bit: same dtype, same bytes (NaN payloads and signed zeros included)."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes(), f"step {step}, param {i} differs"
