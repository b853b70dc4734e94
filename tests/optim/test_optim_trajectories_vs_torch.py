"""Optimizers against their torch.optim class (single-tensor path), 50 steps, float64 and float32,
every option combination of each, under torch's default dtype of the run (PyTorch keeps scalar
state such as NAdam's mu_product in the default dtype: float64 runs are compared with float64
scalar state); then, in float64, further hyperparameters of each and a scheduled lr against
LambdaLR. The peculiar cases of each optimizer stay in its own test file."""

import itertools

import numpy as np
import pytest
from contract_checks import (
    FLOAT_DTYPES,
    assert_trajectory_equals,
    combo_id,
    torch_factory,
    torch_trajectory_in,
)
from optim_trajectories import STEPS

from normref import optim
from normref.optim import schedules

torch = pytest.importorskip("torch", reason="torch.optim is the implementation checked against")

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

# Further hyperparameters, float64, fewer steps: name: (lr, steps, option combinations)
OTHER = {
    "nadam": (
        0.02,
        25,
        [
            dict(momentum_decay=0.0),
            dict(momentum_decay=1.0),  # Keras' schedule
            dict(momentum_decay=0.05, betas=(0.3, 0.9), eps=1e-6),
            dict(betas=(0.0, 0.5), eps=1e-3),
            dict(betas=(0.99, 0.0), weight_decay=0.01),
        ],
    ),
    "radam": (
        0.02,
        25,
        [
            dict(betas=(0.9, 0.9), eps=1e-6),  # a short average: rho_inf = 19
            dict(betas=(0.0, 0.99), eps=1e-3),
            dict(betas=(0.5, 0.0)),  # rho_inf = 1: never rectified, momentum SGD throughout
            dict(betas=(0.95, 0.9999), weight_decay=0.01, decoupled_weight_decay=True),
        ],
    ),
    "adagrad": (0.5, 25, [dict(eps=1e-3, lr_decay=1.0), dict(eps=1e-12, lr_decay=1.0)]),
    # rho = 1 keeps both averages at 0: steps of lr * g (PyTorch accepts rho in [0, 1])
    "adadelta": (
        1.0,
        25,
        [dict(rho=0.0), dict(rho=1.0), dict(rho=0.5, eps=1e-3), dict(rho=0.95, eps=1e-9)],
    ),
    "rmsprop": (
        0.01,
        25,
        [
            dict(alpha=0.0, eps=1e-6),  # v = g^2: sign-like steps
            dict(alpha=0.5, momentum=0.3, centered=True, eps=1e-3),
            dict(alpha=0.999, momentum=1.5),  # PyTorch accepts any momentum >= 0
        ],
    ),
    # b1 <= 0.5 takes the other branch of PyTorch's lerp; b2 = 0 makes u = |g| + eps
    "adamax": (
        0.02,
        20,
        [
            dict(betas=(0.0, 0.5), eps=1e-6, weight_decay=0.01),
            dict(betas=(0.3, 0.0), eps=1e-3, weight_decay=0.01),
            dict(betas=(0.99, 0.9), eps=1e-12, weight_decay=0.01),
        ],
    ),
}

# A scheduled lr, float64, 50 steps: name: (schedule, options). PyTorch runs the table's lr under
# LambdaLR(schedule(t) / lr), stepped after each step: the schedule read at the 0-based step.
SCHEDULED = {
    "radam": (
        schedules.linear_with_warmup(4e-3, warmup_steps=8, total_steps=50),
        dict(weight_decay=0.05),
    ),
    # a schedule multiplies the lr that lr_decay then divides, as LambdaLR does in PyTorch
    "adagrad": (schedules.step_decay(0.03, step_size=10, gamma=0.5), dict(lr_decay=0.01)),
    "adadelta": (schedules.exponential_decay(0.7, gamma=0.95), dict(weight_decay=0.05)),
    "adamax": (
        schedules.cosine_with_warmup(7e-3, warmup_steps=5, total_steps=40, initial=1e-4),
        dict(weight_decay=0.05),
    ),
}


def _cases(table):
    return [
        pytest.param(name, combo, id=f"{name}-{combo_id(combo)}")
        for name, entry in table.items()
        for combo in entry[-1]
    ]


def _assert_equals_torch(name, lr, combo, dtype, steps=STEPS, schedule=None):
    """normref's `name` with lr (or schedule) and combo against its torch.optim class."""
    ours_factory, torch_class = TABLE[name][:2]
    make = torch_factory(torch_class, lr=lr, **combo)

    def lambda_lr(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: schedule(t) / lr)

    scheduler = None if schedule is None else lambda_lr
    assert_trajectory_equals(
        ours_factory(lr if schedule is None else schedule, **combo),
        lambda params, grads: torch_trajectory_in(dtype, make, params, grads, scheduler),
        dtype,
        steps,
    )


@FLOAT_DTYPES
@pytest.mark.parametrize("name, combo", _cases(TABLE))
def test_trajectory_equals_torch(name, combo, dtype):
    _assert_equals_torch(name, TABLE[name][2], combo, dtype)


@pytest.mark.parametrize("name, combo", _cases(OTHER))
def test_other_hyperparameters_equal_torch(name, combo):
    lr, steps, _ = OTHER[name]
    _assert_equals_torch(name, lr, combo, np.float64, steps)


@pytest.mark.parametrize("name", SCHEDULED)
def test_scheduled_lr_equals_torch_lambda_lr(name):
    schedule, combo = SCHEDULED[name]
    _assert_equals_torch(name, TABLE[name][2], combo, np.float64, schedule=schedule)
