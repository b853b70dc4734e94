"""Optimizers against their torch.optim class (single-tensor path), 50 steps, float64 and float32,
every option combination of each, under torch's default dtype of the run (PyTorch keeps scalar
state such as NAdam's mu_product in the default dtype: float64 runs are compared with float64
scalar state). The peculiar cases of each optimizer stay in its own test file."""

import itertools

import numpy as np
import pytest
from contract_checks import combo_id, torch_factory, torch_trajectory_in
from optim_trajectories import (
    assert_trajectories_close,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

from normref import optim

pytest.importorskip("torch", reason="torch.optim is the implementation checked against")

_ADAMW_STYLE = [
    dict(weight_decay=wd, decoupled_weight_decay=d, maximize=m)
    for wd, d, m in itertools.product((0.0, 0.1), (False, True), (False, True))
]
_DECAY_MAXIMIZE = [
    dict(weight_decay=wd, maximize=m) for wd, m in itertools.product((0.0, 0.1), (False, True))
]

# name: (our factory, torch.optim class, lr, option combinations)
TABLE = {
    # RAdam: 50 steps cross the threshold (rho_t > 5 from t = 6 at b2 = 0.999)
    "nadam": (optim.nadam, "NAdam", 5e-3, _ADAMW_STYLE),
    "radam": (optim.radam, "RAdam", 4e-3, _ADAMW_STYLE),
    "adagrad": (
        optim.adagrad,
        "Adagrad",
        0.03,
        [
            dict(lr_decay=d, weight_decay=wd, initial_accumulator_value=s0, maximize=m)
            for d, wd, s0, m in itertools.product(
                (0.0, 0.02), (0.0, 0.1), (0.0, 0.1), (False, True)
            )
        ],
    ),
    "adadelta": (optim.adadelta, "Adadelta", 0.7, _DECAY_MAXIMIZE),
    "rmsprop": (
        optim.rmsprop,
        "RMSprop",
        3e-3,
        [
            dict(centered=c, momentum=mu, weight_decay=wd, maximize=m)
            for c, mu, wd, m in itertools.product(
                (False, True), (0.0, 0.9), (0.0, 0.1), (False, True)
            )
        ],
    ),
    "adamax": (optim.adamax, "Adamax", 7e-3, _DECAY_MAXIMIZE),
}

CASES = [
    pytest.param(name, combo, id=f"{name}-{combo_id(combo)}")
    for name, (_, _, _, combos) in TABLE.items()
    for combo in combos
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, combo", CASES)
def test_trajectory_equals_torch(name, combo, dtype):
    ours_factory, torch_class, lr, _ = TABLE[name]
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    ours = normref_trajectory(ours_factory(lr, **combo), params, grads)
    theirs = torch_trajectory_in(dtype, torch_factory(torch_class, lr=lr, **combo), params, grads)
    assert_trajectories_close(ours, theirs, dtype)
