"""Checkpoints: a bit-exact .npz round trip without pickle, resuming a trajectory bit for bit, and
clear refusals of files from a newer format, with missing arrays, or not normref's."""

import json
import zipfile

import numpy as np
import pytest
from optim_trajectories import (
    assert_trajectories_identical,
    gradient_sequence,
    initial_params,
    normref_trajectory,
)

from normref import optim
from normref.optim import checkpoint, schedules


def _same_tree(a, b):
    """Equal structure, types, dtypes and bytes."""
    assert type(a) is type(b), (type(a), type(b))
    if a is None:
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same_tree(a[k], b[k])
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_tree(x, y)


def _trained(opt, params, steps=5, convert=np.asarray):
    """The state after `steps` in-place updates of params (a list, or a dict of float64 arrays)."""
    dtype = (
        np.float64 if isinstance(params, dict) else np.dtype(str(params[0].dtype).split(".")[-1])
    )
    state = opt.init(params)
    for grads in gradient_sequence(dtype, steps):
        grads = [convert(g) for g in grads]
        opt.update_(params, grads if isinstance(params, list) else dict(zip(params, grads)), state)
    return state


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.sgd(0.1, momentum=0.9),
        lambda: optim.sgd(0.1),  # a None field
        lambda: optim.adam(amsgrad=True),
        lambda: optim.adamw(),
        lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adam(amsgrad=True)),
    ],
    ids=["sgd_momentum", "sgd", "adam_amsgrad", "adamw", "chain"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=lambda d: d.__name__)
def test_round_trip_is_bit_exact(tmp_path, make, dtype):
    state = _trained(make(), initial_params(dtype))
    path = tmp_path / "state.npz"
    optim.save(path, state)
    _same_tree(optim.load(path), state)


def test_dict_params_nan_payloads_and_signed_zeros_survive(tmp_path):
    params = dict(zip(["w", "b", "conv", "x"], initial_params(np.float64)))
    state = _trained(optim.adam(), params)
    weird = np.array([np.nan, -0.0, np.inf, 5e-324])
    weird.view(np.int64)[0] |= 0x5A5A  # a NaN with a payload
    state.mu["w"] = weird[:1]
    state.nu["b"] = weird[:1].copy()
    optim.save(tmp_path / "s.npz", state)
    loaded = optim.load(tmp_path / "s.npz")
    _same_tree(loaded, state)
    optim.save(tmp_path / "p.npz", params)  # a params container is a tree too
    _same_tree(optim.load(tmp_path / "p.npz"), params)


def test_resuming_from_a_checkpoint_continues_the_trajectory_bit_for_bit(tmp_path):
    dtype = np.float32
    lr = schedules.cosine_with_warmup(1e-2, 5, 50)
    make = lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(lr, amsgrad=True))  # noqa: E731
    params, grads = initial_params(dtype), gradient_sequence(dtype)
    straight = normref_trajectory(make(), params, grads, in_place=True)

    opt = make()
    p = [x.copy() for x in params]
    state = opt.init(p)
    resumed = []
    for g in grads[:20]:
        opt.update_(p, g, state)
        resumed.append([x.copy() for x in p])
    optim.save(tmp_path / "state.npz", state)
    optim.save(tmp_path / "params.npz", p)
    del opt, p, state  # a new process would start here

    opt = make()
    p = optim.load(tmp_path / "params.npz")
    state = optim.load(tmp_path / "state.npz")
    assert int(state.inner[-1].step) == 20
    for g in grads[20:]:
        opt.update_(p, g, state)  # the loaded step and arrays are writable
        resumed.append([x.copy() for x in p])
    assert_trajectories_identical(resumed, straight)


def test_torch_and_strict_states_are_saved_as_their_numpy_values(tmp_path):
    torch = pytest.importorskip("torch")
    import array_api_strict

    params = initial_params(np.float64)
    reference = _trained(optim.adam(), [p.copy() for p in params])
    for convert in (torch.tensor, array_api_strict.asarray):
        state = _trained(optim.adam(), [convert(p) for p in params], convert=convert)
        optim.save(tmp_path / "s.npz", state)
        loaded = optim.load(tmp_path / "s.npz")
        for a, b in zip(loaded.nu, reference.nu):
            assert isinstance(a, np.ndarray)
            np.testing.assert_allclose(a, b, rtol=1e-13)


def test_the_file_is_plain_npz_without_pickle(tmp_path):
    state = _trained(optim.adam(amsgrad=True), initial_params(np.float64))
    path = tmp_path / "s.npz"
    optim.save(path, state)
    with np.load(path, allow_pickle=False) as data:
        assert int(data["__format__"]) == checkpoint.FORMAT_VERSION
        structure = json.loads(str(data["__structure__"]))
        assert structure["state"] == "AdamState"
        assert all(data[name].dtype != object for name in data.files)
    assert not list(tmp_path.glob("*.partial"))


def _rewrite(path, change):
    """Rewrite a checkpoint's entries through `change(dict of arrays) -> dict of arrays`."""
    with np.load(path, allow_pickle=False) as data:
        entries = {name: data[name] for name in data.files}
    with open(path, "wb") as f:
        np.savez(f, **change(entries))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "s.npz"
    optim.save(path, _trained(optim.adam(), initial_params(np.float64)))
    return path


def test_a_newer_format_is_refused(saved):
    _rewrite(saved, lambda e: {**e, "__format__": np.asarray(checkpoint.FORMAT_VERSION + 1)})
    with pytest.raises(
        ValueError, match=r"format version 2, newer than this normref reads \(up to 1\)"
    ):
        optim.load(saved)


def test_missing_arrays_are_refused(saved):
    _rewrite(saved, lambda e: {k: v for k, v in e.items() if k != "a3"})
    with pytest.raises(ValueError, match=r"is missing arrays \['a3'\]"):
        optim.load(saved)


def test_other_files_are_refused(tmp_path, saved):
    _rewrite(saved, lambda e: {k: v for k, v in e.items() if k != "__format__"})
    with pytest.raises(ValueError, match="is not a normref checkpoint"):
        optim.load(saved)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="is not a readable .npz file"):
        optim.load(junk)
    with pytest.raises(FileNotFoundError):
        optim.load(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="path must end in .npz"):
        optim.save(tmp_path / "state.pt", optim.adam().init([np.ones(1)]))
    with pytest.raises(ValueError, match="path must end in .npz"):
        optim.load(tmp_path / "state")
    optim.save(saved, optim.adam().init([np.ones(1)]))
    structure = {"state": "MysteryState", "fields": {}}
    _rewrite(saved, lambda e: {**e, "__structure__": np.asarray(json.dumps(structure))})
    with pytest.raises(
        ValueError, match="holds a MysteryState, a state type this normref does not know"
    ):
        optim.load(saved)
    assert zipfile.is_zipfile(saved)


def test_what_cannot_be_stored_without_pickle_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    with pytest.raises(TypeError, match=r"save: state\[0\] has dtype object"):
        optim.save(path, [np.array([None, 1], dtype=object)])
    with pytest.raises(TypeError, match="save: state.step is a Python int"):
        optim.save(path, optim.SGDState(3, None))
    with pytest.raises(TypeError, match="checkpoint dict keys are strings"):
        optim.save(path, {1: np.ones(1)})
    assert not path.exists()
