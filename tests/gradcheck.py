"""Finite-difference checks of hand-derived backward passes, in float64."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def numerical_vjp(
    f: Callable[..., np.ndarray],
    inputs: Sequence[np.ndarray | None],
    dy: np.ndarray,
    h: float = 1e-6,
) -> list[np.ndarray | None]:
    """d(sum(f(*inputs) * dy)) / d(input) for every input, by central differences.

    Inputs are float64 and are perturbed one element at a time on private copies.
    """
    inputs = [None if a is None else np.array(a, dtype=np.float64, copy=True) for a in inputs]
    grads: list[np.ndarray | None] = []
    for a in inputs:
        if a is None:
            grads.append(None)
            continue
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = np.sum(f(*inputs) * dy)
            flat[i] = old - h
            down = np.sum(f(*inputs) * dy)
            flat[i] = old
            gflat[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def assert_gradients_match(analytic, numeric, rtol=1e-6, atol=1e-8) -> None:
    assert len(analytic) == len(numeric)
    for i, (a, n) in enumerate(zip(analytic, numeric)):
        if n is None:
            assert a is None, f"gradient {i}: expected None for an absent input"
            continue
        np.testing.assert_allclose(np.asarray(a), n, rtol=rtol, atol=atol, err_msg=f"gradient {i}")
