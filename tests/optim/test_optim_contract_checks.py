"""The generic contract checks of contract_checks.py (update_ equals update bit for bit, purity,
checkpoint round trip, bad grads refused without mutation, array-api-strict and torch tensors,
docstring examples) for each optimizer, in one configuration that switches on its options."""

import numpy as np
import pytest
from contract_checks import (
    assert_bad_grads_refused_without_mutation,
    assert_checkpoint_round_trip,
    assert_docstring_examples_run,
    assert_runs_on_array_api_strict_and_torch,
    assert_update_in_place_equals_update,
    assert_update_is_pure,
    variant_factory,
)
from optim_trajectories import PARAM_DTYPES

from normref import optim


def _case(make, checkpoint_dtype, *, pure=None, checkpoint=None, bad_grads=None):
    """`make` for every check unless one names its own configurations."""
    return dict(
        make=make,
        pure=pure or (make,),
        checkpoint=checkpoint or ((make, checkpoint_dtype),),
        bad_grads=bad_grads or make,
    )


LARS_LR = 2.0  # LARS' global rates are large: the trust coefficient 1e-3 scales them down


def _lars():
    return optim.lars(
        LARS_LR, weight_decay=1e-3, nesterov=True, trust_ratio_mask=[True, False, True, True]
    )


def _radam():
    return optim.radam(4e-3, weight_decay=0.01, maximize=True)


CASES = {
    "nadam": _case(
        lambda: optim.nadam(5e-3, weight_decay=0.01, decoupled_weight_decay=True), np.float64
    ),
    "radam": _case(
        _radam,
        np.float32,
        # the variant leaves p unmoved before rectification: update must still return a copy
        pure=(_radam, lambda: variant_factory("radam", "skip_unrectified")(lr=4e-3)),
    ),
    "adagrad": _case(
        lambda: optim.adagrad(
            0.03, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1
        ),
        np.float16,
    ),
    "adadelta": _case(
        lambda: optim.adadelta(0.7, rho=0.8, weight_decay=0.01, maximize=True), np.float32
    ),
    "rmsprop": _case(
        lambda: optim.rmsprop(3e-3, momentum=0.9, centered=True, weight_decay=0.01), np.float64
    ),
    "adamax": _case(lambda: optim.adamax(7e-3, weight_decay=0.01, maximize=True), np.float32),
    "lamb": _case(
        lambda: optim.lamb(1e-2, weight_decay=0.01, trust_ratio_mask=lambda p: p.ndim > 1),
        np.float32,
    ),
    "lion": _case(lambda: optim.lion(3e-3, weight_decay=0.1), np.float32),
    "lars": _case(
        _lars,
        None,
        pure=(
            lambda: optim.lars(LARS_LR, weight_decay=1e-3, trust_ratio_mask=lambda p: p.ndim > 1),
        ),
        checkpoint=((_lars, np.float64), (lambda: optim.lars(LARS_LR, momentum=0.0), np.float32)),
        bad_grads=lambda: optim.lars(LARS_LR, weight_decay=1e-3),
    ),
}
NAMES = pytest.mark.parametrize("name", CASES)


@pytest.mark.parametrize("dtype", PARAM_DTYPES, ids=lambda d: d.__name__)
@NAMES
def test_update_in_place_equals_update_bit_for_bit(name, dtype):
    assert_update_in_place_equals_update(CASES[name]["make"], dtype)


@NAMES
def test_update_is_pure(name):
    for make in CASES[name]["pure"]:
        assert_update_is_pure(make)


@NAMES
def test_checkpoint_round_trip(name, tmp_path):
    for make, dtype in CASES[name]["checkpoint"]:
        assert_checkpoint_round_trip(make, tmp_path, dtype)


@NAMES
def test_bad_grads_are_refused_without_mutation(name):
    assert_bad_grads_refused_without_mutation(CASES[name]["bad_grads"])


@NAMES
def test_runs_on_array_api_strict_and_torch_tensors(name):
    assert_runs_on_array_api_strict_and_torch(CASES[name]["make"])


@NAMES
def test_docstring_examples_run(name):
    assert_docstring_examples_run(f"normref.optim.{name}")
