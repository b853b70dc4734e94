"""`normref verify jax` on the optax optimizers beyond sgd/adam/adamw: each passes, or differs by
a convention of optax's that the diagnosis names (the optimizer specs' "Conventions of peers").

Runs only where jax, flax and optax are installed; about 6 s (every case of these optimizers)."""

from __future__ import annotations

import numpy as np
import pytest

for _name in ("jax", "flax", "optax"):
    pytest.importorskip(_name, reason="JAX targets need jax, flax and optax installed")

from normref.conformance import jax_adapter  # noqa: E402
from normref.conformance.adapter import load_target  # noqa: E402
from normref.conformance.runner import FAIL, PASS, verify  # noqa: E402

# optax computes normref's formula for these ...
PASSING = ("adamax", "adadelta", "lamb", "lion")
# ... and for these its own convention, which the diagnosis must name.
VARIANTS = {
    "nadam": "optax_nesterov",  # optax.nadam is adam(nesterov=True): no momentum schedule
    "radam": "optax_eps_on_v_hat",
    "adagrad": "eps_in_sqrt",
    "rmsprop": "eps_in_sqrt",  # optax's default eps_in_sqrt=True
    "lars": "optax_trust_ratio",  # the ratio of the decayed gradient: only with weight decay
}


@pytest.fixture(scope="module")
def report():
    target = load_target("jax")
    return verify(target.backends, ops=[*PASSING, *VARIANTS], trajectories=True)


def test_the_optimizer_table_covers_what_optax_has():
    assert set(PASSING) | set(VARIANTS) | {"sgd", "adam", "adamw"} <= set(jax_adapter.OPTIMIZERS)


def test_optax_optimizers_pass_or_are_diagnosed(report):
    rows = {r.op: r for r in report.rows}
    for op in PASSING:
        assert rows[op].verdict == PASS, (op, rows[op].messages)
        assert rows[op].cases > 0 and rows[op].not_provided == 0
    for op, variant in VARIANTS.items():
        assert rows[op].verdict == FAIL
        assert rows[op].diagnosis.startswith(f"matches variant {variant}"), rows[op].diagnosis


def test_lars_without_weight_decay_passes(report):
    plain = [c for c in report.cases if c.op == "lars" and c.case.hyper["weight_decay"] == 0]
    assert plain
    for case in plain:
        assert case.verdict == PASS, (case.id, case.message)


@pytest.mark.parametrize("mask", ["weight_decay_mask", "trust_ratio_mask"])
def test_masks_optax_cannot_take_are_not_provided(mask):
    hyper = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.1}
    hyper.update(weight_decay_mask=True, trust_ratio_mask=True)
    jax_adapter.OPTIMIZERS["lamb"]([np.zeros(3)], **hyper)  # True: optax's lamb as it is
    with pytest.raises(NotImplementedError):
        jax_adapter.OPTIMIZERS["lamb"]([np.zeros(3)], **{**hyper, mask: False})
