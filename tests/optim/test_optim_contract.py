"""The optimizer contract (design.md §4, §6, §9) for every optimizer: update_ computes update's
numbers bit for bit, update is pure, dict/list/tuple params, array-api-strict and torch tensors
through the array API, 16-bit params, and every refusal happens before anything is mutated."""

import array_api_strict
import numpy as np
import pytest
from contract_checks import arrays_of, assert_update_in_place_equals_update
from optim_trajectories import (
    PARAM_DTYPES,
    bfloat16,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

import normref
from normref import optim
from normref.optim import schedules

OPTIMIZERS = {
    "sgd": lambda: optim.sgd(0.05),
    "sgd_momentum": lambda: optim.sgd(0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd_nesterov": lambda: optim.sgd(0.05, momentum=0.9, nesterov=True, maximize=True),
    "sgd_scheduled": lambda: optim.sgd(
        schedules.one_cycle(0.1, 50), momentum=schedules.one_cycle_momentum(50)
    ),
    "adam": lambda: optim.adam(3e-3, weight_decay=0.01),
    "adam_amsgrad": lambda: optim.adam(3e-3, amsgrad=True, maximize=True),
    "adamw": lambda: optim.adamw(schedules.cosine_with_warmup(1e-2, 5, 40), amsgrad=True),
    "chain": lambda: optim.chain(
        optim.clip_by_value(2.0), optim.clip_by_global_norm(3.0), optim.adamw(1e-2)
    ),
    "chain_agc": lambda: optim.chain(optim.adaptive_grad_clip(0.05), optim.sgd(0.1, momentum=0.9)),
}


@pytest.mark.parametrize("dtype", PARAM_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_in_place_equals_update_bit_for_bit(name, dtype):
    assert_update_in_place_equals_update(OPTIMIZERS[name], dtype)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_is_pure_and_shares_no_memory(name):
    opt = OPTIMIZERS[name]()
    params = dict(zip("abcd", initial_params(np.float64)))
    sequence = gradient_sequence(np.float64, steps=3)
    state = opt.init(params)
    for grads in sequence:  # a few steps, so that every slot is live
        params, state = opt.update(params, dict(zip("abcd", grads)), state)
    grads = dict(zip("abcd", sequence[0]))
    before = [a.copy() for a in arrays_of((params, grads, state))]
    new_params, new_state = opt.update(params, grads, state)
    after = arrays_of((params, grads, state))
    for a, b in zip(before, after):
        assert a.tobytes() == b.tobytes()
    for new in arrays_of((new_params, new_state)):
        for old in after:
            assert not np.shares_memory(new, old)


@pytest.mark.parametrize("name", ["sgd_momentum", "adam_amsgrad", "chain"])
def test_dict_list_and_tuple_params_give_the_same_numbers(name):
    params, sequence = initial_params(np.float64), gradient_sequence(np.float64, steps=8)
    as_list = normref_trajectory(OPTIMIZERS[name](), params, sequence)
    opt = OPTIMIZERS[name]()
    keys = ["w", "b", "conv", "x"]
    p = dict(zip(keys, params))
    state = opt.init(p)
    for t, grads in enumerate(sequence):
        g = dict(zip(reversed(keys), reversed(grads)))  # grads' key order does not matter
        p, state = opt.update(p, g, state)
        assert list(p) == keys
        for k, expected in zip(keys, as_list[t]):
            assert p[k].tobytes() == expected.tobytes()
    opt = OPTIMIZERS[name]()
    t_params = tuple(x.copy() for x in params)
    state = opt.init(t_params)
    for grads in sequence:
        opt.update_(t_params, tuple(grads), state)
    assert [x.tobytes() for x in t_params] == [x.tobytes() for x in as_list[-1]]
    assert isinstance(opt.update(t_params, tuple(sequence[0]), state)[0], tuple)


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam_amsgrad", "adamw", "chain"])
def test_runs_on_array_api_strict(name):
    params, sequence = initial_params(np.float64), gradient_sequence(np.float64, steps=10)
    expected = normref_trajectory(OPTIMIZERS[name](), params, sequence)[-1]
    opt = OPTIMIZERS[name]()
    strict = [array_api_strict.asarray(p) for p in params]
    state = opt.init(strict)
    for grads in sequence:
        strict_grads = [array_api_strict.asarray(g) for g in grads]
        new, _ = opt.update(strict, strict_grads, state)
        opt.update_(strict, strict_grads, state)
    for x, y, z in zip(strict, new, expected):
        assert type(x).__module__.startswith("array_api_strict")
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes() == z.tobytes()


@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "adamw", "chain_agc"])
def test_runs_on_torch_tensors_through_the_array_api(name):
    torch = pytest.importorskip("torch")
    params, sequence = initial_params(np.float64), gradient_sequence(np.float64, steps=10)
    expected = normref_trajectory(OPTIMIZERS[name](), params, sequence)[-1]
    opt = OPTIMIZERS[name]()
    tensors = {str(i): torch.tensor(p) for i, p in enumerate(params)}
    state = opt.init(tensors)
    for grads in sequence:
        tg = {str(i): torch.tensor(g) for i, g in enumerate(grads)}
        new, _ = opt.update(tensors, tg, state)
        opt.update_(tensors, tg, state)
    for i, z in enumerate(expected):
        x = tensors[str(i)]
        assert isinstance(x, torch.Tensor) and isinstance(new[str(i)], torch.Tensor)
        assert x.numpy().tobytes() == new[str(i)].numpy().tobytes()
        # torch's sqrt is not correctly rounded: not bitwise equal to NumPy's run
        np.testing.assert_allclose(x.numpy(), z, rtol=1e-13, atol=1e-15)


def test_torch_update_in_place_writes_into_the_parameters_storage():
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(3, 2, dtype=torch.float64)
    opt = optim.adamw(1e-2)
    params = [p.detach() for p in layer.parameters()]  # views of the parameters' storage
    state = opt.init(params)
    weight_before = layer.weight.detach().clone()
    opt.update_(params, [torch.ones_like(p) for p in params], state)
    assert not torch.equal(layer.weight.detach(), weight_before)


HALVES = [d for d in PARAM_DTYPES if np.dtype(d).itemsize == 2]


@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.__name__)
def test_16_bit_params_keep_float32_state_and_round_once(dtype):
    p16 = [np.array([0.1, -3.0, 7.5]).astype(dtype)]
    g16 = [np.array([0.25, 1.0, -2.0]).astype(dtype)]
    opt = optim.adam(1e-2, weight_decay=0.1)
    state = opt.init(p16)
    assert state.mu[0].dtype == np.float32 and state.nu[0].dtype == np.float32
    new, new_state = opt.update(p16, g16, state)
    assert new[0].dtype == dtype and new_state.nu[0].dtype == np.float32
    # the same math in float32 on the 16-bit values, rounded once
    p32 = [p16[0].astype(np.float32)]
    ref, ref_state = opt.update(p32, [g16[0].astype(np.float32)], opt.init(p32))
    assert new[0].tobytes() == ref[0].astype(dtype).tobytes()
    assert new_state.mu[0].tobytes() == ref_state.mu[0].tobytes()


# The optimizers with fused kernels, each with its options on (maximize, weight decay, amsgrad,
# nesterov): what the kernels' bfloat16 mode must match.
FUSED = {
    "sgd": lambda: optim.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
    "adam": lambda: optim.adam(3e-3, weight_decay=0.01, amsgrad=True, maximize=True),
    "adamw": lambda: optim.adamw(schedules.cosine_with_warmup(1e-2, 5, 40), amsgrad=True),
    "lion": lambda: optim.lion(3e-3, weight_decay=0.1),
}


@pytest.mark.skipif(bfloat16 is None, reason="ml_dtypes (NumPy's bfloat16) is not installed")
@pytest.mark.parametrize("name", FUSED)
def test_bfloat16_update_in_place_runs_the_fused_kernel_and_equals_update(name):
    """bfloat16 params reach the Numba kernels through update_ (backend="numba" would refuse
    otherwise) and give update's bits: the bfloat16 param is the master copy, state float32."""
    pytest.importorskip("numba")
    params = initial_params(bfloat16)
    sequence = gradient_sequence(bfloat16, steps=30)
    sequence[5][1][2] = np.nan  # a NaN gradient element goes through both paths alike
    opt, fused = FUSED[name](), FUSED[name]()
    state, fused_state = opt.init(params), fused.init(params)
    fused_params = [p.copy() for p in params]
    for step, grads in enumerate(sequence):
        params, state = opt.update(params, grads, state)
        fused.update_(fused_params, grads, fused_state, backend="numba")
        for i, (x, y) in enumerate(zip(fused_params, params)):
            assert x.dtype == y.dtype == bfloat16
            assert x.tobytes() == y.tobytes(), f"step {step}, param {i}"
    for field, a, b in zip(state._fields[1:], fused_state[1:], state[1:]):
        for x, y in zip(arrays_of(a), arrays_of(b)):
            assert x.dtype == np.float32 and x.tobytes() == y.tobytes(), field


def test_step_counts_updates_and_is_a_host_int64():
    opt = optim.adam()
    params = [np.ones(2)]
    state = opt.init(params)
    assert state.step.dtype == np.int64 and state.step.shape == () and int(state.step) == 0
    _, new_state = opt.update(params, [np.ones(2)], state)
    assert int(new_state.step) == 1 and int(state.step) == 0
    opt.update_(params, [np.ones(2)], state)
    opt.update_(params, [np.ones(2)], state)
    assert int(state.step) == 2


# -- errors, and nothing mutated by a refused call --------------------------------------------


def _snapshot(*trees):
    return [a.copy() for a in arrays_of(trees)]


def _unchanged(snapshot, *trees):
    return all(a.tobytes() == b.tobytes() for a, b in zip(snapshot, arrays_of(trees)))


def _live(opt, params):
    """A state after two updates (every slot non-zero)."""
    state = opt.init(params)
    for _ in range(2):
        opt.update_(params, [np.full_like(p, 0.5) for p in params], state)
    return state


BAD_GRADS = [
    (lambda ps: ps[:1], ValueError, r"params has 2 arrays but grads has 1"),
    (
        lambda ps: [ps[0], np.ones((4, 3))],
        ValueError,
        r"grads\[1\] must have shape \(3, 4\) \(the shape of params\[1\]\), got \(4, 3\)",
    ),
    (
        lambda ps: [ps[0], np.ones((3, 4), np.float32)],
        TypeError,
        r"grads\[1\] must have the dtype of params\[1\] \(float64\), got float32",
    ),
    (
        lambda ps: [ps[0], np.ones((3, 4), np.int64)],
        TypeError,
        r"grads\[1\] must be a real floating-point array, got dtype int64",
    ),
    (lambda ps: {"a": ps[0]}, TypeError, r"grads must be a list/tuple like params, got a dict"),
]


@pytest.mark.parametrize("make_grads, error, message", BAD_GRADS)
@pytest.mark.parametrize("name", ["sgd_momentum", "adamw", "chain"])
def test_bad_grads_are_refused_before_anything_moves(name, make_grads, error, message):
    opt = OPTIMIZERS[name]()
    params = [np.ones(5), np.ones((3, 4))]
    state = _live(opt, params)
    snapshot = _snapshot(params, state)
    with pytest.raises(error, match=message):
        opt.update_(params, make_grads([np.full_like(p, 0.1) for p in params]), state)
    with pytest.raises(error, match=message):
        opt.update(params, make_grads([np.full_like(p, 0.1) for p in params]), state)
    assert _unchanged(snapshot, params, state)


def test_dict_keys_must_match():
    opt = optim.adam()
    params = {"w": np.ones(2), "b": np.ones(1)}
    state = opt.init(params)
    with pytest.raises(
        ValueError,
        match=r"adam: grads must have the keys of params; missing \['b'\], unexpected \['c'\]",
    ):
        opt.update(params, {"w": np.ones(2), "c": np.ones(1)}, state)
    with pytest.raises(ValueError, match=r"adam: state.mu must have the keys of params"):
        opt.update({"w": np.ones(2), "z": np.ones(1)}, {"w": np.ones(2), "z": np.ones(1)}, state)


def test_non_floating_params_are_refused():
    with pytest.raises(
        TypeError, match=r"sgd: params\['n'\] must be a real floating-point array, got dtype int32"
    ):
        optim.sgd(0.1).init({"n": np.ones(3, np.int32)})
    if bfloat16 is not None:  # ml_dtypes' other extension dtypes stay refused
        from ml_dtypes import float8_e4m3fn

        with pytest.raises(TypeError, match=r"got dtype float8_e4m3fn"):
            optim.sgd(0.1).init([np.ones(3, float8_e4m3fn)])
    with pytest.raises(
        TypeError, match="params must be a dict of arrays or a list/tuple of arrays"
    ):
        optim.sgd(0.1).init(np.ones(3))
    with pytest.raises(ValueError, match="params is empty"):
        optim.adam().init([])


def test_a_state_from_another_optimizer_or_configuration_is_refused():
    params = [np.ones(3)]
    with pytest.raises(
        TypeError, match=r"adam: state must be a AdamState \(from adam\(...\).init\), got SGDState"
    ):
        optim.adam().update(params, [np.ones(3)], optim.sgd(0.1).init(params))
    with pytest.raises(
        ValueError, match=r"adam: state.nu_max is None but this configuration needs it"
    ):
        optim.adam(amsgrad=True).update(params, [np.ones(3)], optim.adam().init(params))
    state = optim.adam().init([np.ones(3, np.float32)])
    with pytest.raises(TypeError, match=r"state.mu\[0\] must have dtype float64"):
        optim.adam().update(params, [np.ones(3)], state)


def test_a_schedule_gone_bad_fails_at_its_step_without_moving_anything():
    lr = schedules.linear_with_warmup(0.1, 0, 3, final=-0.1)  # negative from step 2 on
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(lr))
    params = [np.ones(4)]
    state = opt.init(params)
    opt.update_(params, [np.ones(4)], state)
    opt.update_(params, [np.ones(4)], state)
    snapshot = _snapshot(params, state)
    with pytest.raises(
        ValueError, match=r"adamw: lr \(its schedule at step 2\) must be a finite number >= 0"
    ):
        opt.update_(params, [np.ones(4)], state)
    assert _unchanged(snapshot, params, state) and int(state.inner[-1].step) == 2


def test_update_in_place_needs_the_mutable_step_and_writable_params():
    opt = optim.sgd(0.1)
    params = [np.ones(2)]
    with pytest.raises(TypeError, match="update_ advances state.step in place"):
        opt.update_(params, [np.ones(2)], optim.SGDState(0, None))
    opt.update(params, [np.ones(2)], optim.SGDState(0, None))  # a plain int is fine for update
    frozen = np.ones(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"sgd: params\[0\] is read-only"):
        opt.update_([frozen], [np.ones(2)], opt.init([frozen]))


def test_backends():
    opt = optim.adam()
    params = [np.ones(2)]
    state = opt.init(params)
    opt.update_(params, [np.ones(2)], state, backend="reference")
    opt.update_(params, [np.ones(2)], state, backend="auto")
    snapshot = _snapshot(params, state)
    refused = "adam: backend='numba' takes float32, float16, bfloat16, got float64"
    with pytest.raises(TypeError, match=refused):
        opt.update_(params, [np.ones(2)], state, backend="numba")
    with pytest.raises(ValueError, match="unknown backend"):
        opt.update_(params, [np.ones(2)], state, backend="tpu")
    assert _unchanged(snapshot, params, state)
    with normref.use_backend("reference"):
        opt.update_(params, [np.ones(2)], state)


def test_repr_names_the_hyperparameters():
    assert repr(optim.sgd(0.1, momentum=0.9)) == (
        "sgd(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)"
    )
    assert repr(optim.chain(optim.clip_by_global_norm(1.0), optim.adamw())).startswith(
        "chain(clip_by_global_norm(max_norm=1.0), adamw(lr=0.001"
    )
