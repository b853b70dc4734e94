"""Golden cases: reproducible generation, a loader that refuses anything wrong, expected values that
an independent implementation (PyTorch autograd) agrees with, and the tolerance measure."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest
from reparam.torch_peers import torch_reparam_ops

from normref import registry
from normref.golden import (
    DATA_DIR,
    TOLERANCES,
    GoldenError,
    Tolerance,
    load_cases,
    load_index,
    scaled_error,
)
from normref.golden.generate import build, write_npz
from normref.golden.store import INDEX_NAME

SHIPPED = load_cases()


@pytest.fixture
def data_copy(tmp_path):
    """A private copy of the shipped data, safe to damage."""
    return shutil.copytree(DATA_DIR, tmp_path / "data")


def _edit_index(directory, case_id, edit):
    """Apply `edit(entry)` to one entry of directory/index.json, keeping the file's layout."""
    path = directory / INDEX_NAME
    index = json.loads(path.read_text())
    (entry,) = [e for e in index["cases"] if e["id"] == case_id]
    edit(entry)
    path.write_text(json.dumps(index))


# ---------------------------------------------------------------------------- what is shipped


def test_every_registered_case_is_shipped():
    expected = {
        f"{op.name}-{i:02d}-{dtype}"
        for op in registry.OPS.values()
        for i in range(len(op.cases))
        for dtype in op.dtypes
    }
    shipped = {case.id for case, _ in SHIPPED}
    assert shipped == expected, "the registry changed: run `python -m normref.golden build`"
    assert all(op.cases for op in registry.OPS.values()), "every op needs golden cases"


def test_shipped_data_is_small():
    size = sum(p.stat().st_size for p in DATA_DIR.iterdir())
    assert size < 1_000_000


@pytest.mark.parametrize("case, arrays", SHIPPED, ids=[c.id for c, _ in SHIPPED])
def test_inputs_are_in_the_case_dtype_and_not_trivial(case, arrays):
    for name in case.inputs:
        a = arrays[f"input.{name}"]
        assert a.dtype == np.dtype(case.dtype)
        assert np.all(np.isfinite(a))
    dy = arrays["input.dy"]
    assert dy.dtype == np.dtype(case.dtype) and not np.all(dy == 1)
    if "weight" in case.inputs:
        w = arrays["input.weight"].astype(np.float64)
        assert np.all(np.abs(w - 1) < 0.6) and not np.all(w == 1)


def test_npz_is_plain_numpy_with_fixed_timestamps():
    case = load_index()[0]
    with zipfile.ZipFile(case.path) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(case.path, allow_pickle=False) as npz:
        assert "input.x" in npz.files and "output.y" in npz.files


# ---------------------------------------------------------------------------- reproducibility


def test_build_is_byte_for_byte_deterministic(tmp_path):
    build(tmp_path / "a")
    build(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_rebuild_reproduces_the_shipped_cases(tmp_path):
    """Inputs must come back bit for bit (they are the case). The expected values are float64 sums
    computed by NumPy, whose SIMD reduction order may differ between CPUs, so on another machine
    they may differ in the last ulp; compare them within a tolerance far below the float64 one.
    Where every array is identical, the file (and its sha256) must be too: the writer adds nothing
    that depends on the machine or the time."""
    build(tmp_path)
    rebuilt = {case.id: (case, arrays) for case, arrays in load_cases(tmp_path)}
    assert set(rebuilt) == {case.id for case, _ in SHIPPED}
    for case, arrays in SHIPPED:
        new_case, new_arrays = rebuilt[case.id]
        assert {k: v for k, v in new_case.entry.items() if k != "sha256"} == {
            k: v for k, v in case.entry.items() if k != "sha256"
        }
        assert set(new_arrays) == set(arrays)
        identical = True
        for name, old in arrays.items():
            new = new_arrays[name]
            if name.startswith("input."):
                assert new.dtype == old.dtype and np.array_equal(new, old), (case.id, name)
            else:
                np.testing.assert_allclose(new, old, rtol=1e-13, atol=1e-15, err_msg=case.id)
            identical &= np.array_equal(new, old) and new.dtype == old.dtype
        if identical:
            assert new_case.sha256 == case.sha256, case.id


def test_build_removes_files_of_cases_that_no_longer_exist(tmp_path):
    build(tmp_path)
    stale = tmp_path / "layer_norm-00-float64.npz"
    keep = tmp_path / "notes.txt"
    keep.write_text("not ours")
    build(tmp_path, ops={"rms_norm": registry.OPS["rms_norm"]})
    assert not stale.exists() and keep.exists()
    assert {c.op for c in load_index(tmp_path)} == {"rms_norm"}


# ---------------------------------------------------------------------------- refusing bad data


def test_a_corrupted_byte_is_refused(data_copy):
    case = load_index(data_copy)[0]
    data = bytearray(case.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    case.path.write_bytes(bytes(data))
    with pytest.raises(GoldenError, match=rf"{case.path.name}.*sha256"):
        case.arrays()


def test_a_missing_file_is_refused(data_copy):
    case = load_index(data_copy)[0]
    case.path.unlink()
    with pytest.raises(GoldenError, match=rf"{case.path.name}.*missing"):
        case.arrays()


def test_a_missing_index_is_refused(tmp_path):
    with pytest.raises(GoldenError, match="index.json.*missing"):
        load_index(tmp_path)


def test_an_index_that_is_not_json_is_refused(data_copy):
    (data_copy / INDEX_NAME).write_text("{not json")
    with pytest.raises(GoldenError, match="index.json"):
        load_index(data_copy)


def _set(key, value):
    return lambda e: e.__setitem__(key, value)


# edits caught by the index check itself (load_index)
INDEX_EDITS = {
    "missing field": (lambda e: e.pop("sha256"), "missing"),
    "extra field": (_set("note", "hi"), "unexpected"),
    "wrong type": (_set("case", "0"), "'case' must be a JSON integer"),
    "unknown op": (_set("op", "no_such_norm"), "unknown op"),
    "unknown dtype": (_set("dtype", "bfloat16"), "dtype 'bfloat16' is not one of"),
    "id mismatch": (_set("id", "layer_norm-07-float64"), "does not match"),
    "path escape": (_set("file", "../layer_norm-00-float64.npz"), r"file '\.\./.* must be"),
    "bad sha256": (_set("sha256", "abc"), "sha256 'abc' is not 64"),
    "unknown hyper": (lambda e: e["hyper"].update(momentum=0.1), "hyperparameters"),
    "edited tolerance": (
        lambda e: e["tolerance"]["forward"].update(rtol=1.0),
        "tolerance.*differs from the table",
    ),
    "gradient of absent input": (lambda e: e["inputs"].pop("bias"), "absent"),
    "bad shape": (lambda e: e["inputs"].update(x=[3, -7]), "non-negative"),
}
# edits only the file can reveal (the entry copy stored inside it)
FILE_EDITS = {
    "hyperparameter": lambda e: e["hyper"].update(eps=1e-3),
    "shape": lambda e: e["inputs"].update(x=[7, 3]),
    "output shape": lambda e: e["outputs"].update(y=[21]),
}


@pytest.mark.parametrize("edit, message", INDEX_EDITS.values(), ids=INDEX_EDITS.keys())
def test_an_edited_index_entry_is_refused(data_copy, edit, message):
    _edit_index(data_copy, "layer_norm-00-float64", edit)
    with pytest.raises(GoldenError, match=message) as info:
        load_index(data_copy)
    assert "index.json" in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("edit", FILE_EDITS.values(), ids=FILE_EDITS.keys())
def test_an_edited_index_entry_is_refused_when_the_file_is_read(data_copy, edit):
    _edit_index(data_copy, "layer_norm-00-float64", edit)
    (case,) = [c for c in load_index(data_copy) if c.id == "layer_norm-00-float64"]
    with pytest.raises(GoldenError, match="layer_norm-00-float64.npz.*differs"):
        case.arrays()


def test_a_file_with_unexpected_arrays_is_refused(data_copy):
    case = load_index(data_copy)[0]
    with np.load(case.path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["output.extra"] = np.zeros(3)
    data = write_npz(arrays)
    case.path.write_bytes(data)
    _edit_index(data_copy, case.id, _set("sha256", hashlib.sha256(data).hexdigest()))
    with pytest.raises(GoldenError, match="holds arrays"):
        load_index(data_copy)[0].arrays()


# ---------------------------------------------------------------------------- independent check


def _trailing(normalized_shape, x, weight):
    """PyTorch needs normalized_shape spelled out; normref's None means weight.shape or x's last."""
    if normalized_shape is None:
        return tuple(weight.shape) if weight is not None else tuple(x.shape[-1:])
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _torch_ops(torch):
    """PyTorch's own implementation of each op, called with normref's arguments; returns the
    outputs in normref's order."""
    F = torch.nn.functional

    def clone(t):  # F.batch_norm / F.instance_norm update running statistics in place
        return None if t is None else t.detach().clone()

    def layer_norm(x, weight, bias, *, normalized_shape, eps):
        return F.layer_norm(x, _trailing(normalized_shape, x, weight), weight, bias, eps)

    def rms_norm(x, weight, *, normalized_shape, eps):
        return F.rms_norm(x, _trailing(normalized_shape, x, weight), weight, eps)

    def batch_norm(x, weight, bias, mean, var, *, training, momentum, eps, num_batches_tracked):
        # nn.BatchNorm's bookkeeping around F.batch_norm: count the batch, and momentum=None
        # means the cumulative average 1 / count
        mean, var, count = clone(mean), clone(var), num_batches_tracked
        if training and mean is not None:
            count += 1
            momentum = 1.0 / count if momentum is None else momentum
        y = F.batch_norm(x, mean, var, weight, bias, training, momentum or 0.0, eps)
        return y, mean, var, count

    def group_norm(x, weight, bias, *, num_groups, eps):
        return F.group_norm(x, num_groups, weight, bias, eps)

    def instance_norm(x, weight, bias, mean, var, *, use_input_stats, momentum, eps):
        mean, var = clone(mean), clone(var)
        y = F.instance_norm(x, mean, var, weight, bias, use_input_stats, momentum, eps)
        return y, mean, var

    def batch_channel_norm(
        x,
        bn_weight,
        bn_bias,
        weight,
        bias,
        mean,
        var,
        *,
        num_groups,
        training,
        momentum,
        eps,
        batch_eps,
    ):
        # the authors' BCNorm(estimate=True) / EstBN: the estimates move under no_grad, centred on
        # the old mean, then normalize; group statistics through batch_norm on a (1, N*G, -1) view;
        # one affine parameter per group
        mean, var = clone(mean), clone(var)
        n, c = x.shape[0], x.shape[1]
        if training:
            with torch.no_grad():
                t = x.transpose(0, 1).reshape(c, -1)
                batch_mean, second = t.mean(dim=1), ((t - mean.view(-1, 1)) ** 2).mean(dim=1)
                mean.mul_(1 - momentum).add_(momentum * batch_mean)
                var.mul_(1 - momentum).add_(momentum * second)
        shape = (1, c) + (1,) * (x.ndim - 2)
        h = (x - mean.view(shape)) / torch.sqrt(var + batch_eps).view(shape)
        h = h if bn_weight is None else h * bn_weight.view(shape)
        h = h if bn_bias is None else h + bn_bias.view(shape)
        h = torch.batch_norm(
            h.reshape(1, n * num_groups, -1), None, None, None, None, True, 0.0, eps, True
        ).reshape(n, num_groups, -1)
        h = h if weight is None else h * weight.view(1, -1, 1)
        h = h if bias is None else h + bias.view(1, -1, 1)
        return h.reshape(x.shape), mean, var

    return {
        **torch_reparam_ops(torch),
        "batch_channel_norm": batch_channel_norm,
        "layer_norm": layer_norm,
        "rms_norm": rms_norm,
        "batch_norm": batch_norm,
        "group_norm": group_norm,
        "instance_norm": instance_norm,
    }


@pytest.mark.parametrize("case, arrays", SHIPPED, ids=[c.id for c, _ in SHIPPED])
def test_expected_values_agree_with_pytorch_autograd(case, arrays):
    """PyTorch in float64, on the stored inputs cast up, with gradients from torch.autograd."""
    torch = pytest.importorskip("torch")
    ops = _torch_ops(torch)
    if case.op not in ops:
        pytest.fail(f"no independent implementation of {case.op} here: add one to _torch_ops")
    tensors = {
        name: torch.tensor(
            arrays[f"input.{name}"].astype(np.float64), requires_grad=name in case.grads
        )
        for name in case.inputs
    }
    outputs = ops[case.op](*(tensors.get(name) for name in case.info.inputs), **case.hyper)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert len(outputs) == len(case.outputs)
    outputs[0].backward(torch.tensor(arrays["input.dy"].astype(np.float64)))
    tol = TOLERANCES["float64"]
    for name, got in zip(case.outputs, outputs):
        got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
        assert scaled_error(got, arrays[f"output.{name}"], tol["forward"]) <= 1, name
    for name in case.grads:
        got = tensors[name].grad.numpy()
        assert scaled_error(got, arrays[f"grad.{name}"], tol["backward"]) <= 1, name


# ---------------------------------------------------------------------------- tolerance measure


def test_tolerance_table_covers_every_dtype_and_direction():
    for op in registry.OPS.values():
        for dtype in op.dtypes:
            assert set(TOLERANCES[dtype]) == {"forward", "backward"}
    for per_dtype in TOLERANCES.values():
        for tol in per_dtype.values():
            assert tol.rtol > 0 and tol.atol > 0


def test_scaled_error_is_in_units_of_the_tolerance():
    tol = Tolerance(rtol=1e-3, atol=1e-6)
    expected = np.array([1.0, -2.0, 0.0])
    assert scaled_error(expected, expected, tol) == 0.0
    got = expected + np.array([0.0, 2 * (1e-6 + 2e-3), 0.0])
    assert scaled_error(got, expected, tol) == pytest.approx(2.0)
    assert scaled_error(np.array([1.0, -2.0, 5e-7]), expected, tol) == pytest.approx(0.5)


def test_scaled_error_nan_and_inf():
    tol = Tolerance(rtol=1e-3, atol=1e-6)
    nan, inf = np.nan, np.inf
    assert scaled_error(np.array([nan, inf, 1.0]), np.array([nan, inf, 1.0]), tol) == 0.0
    assert scaled_error(np.array([1.0]), np.array([nan]), tol) == inf  # NaN expected, not given
    assert scaled_error(np.array([nan]), np.array([1.0]), tol) == inf  # NaN that should not be
    assert scaled_error(np.array([-inf]), np.array([inf]), tol) == inf
    assert scaled_error(np.array([1e300]), np.array([inf]), tol) == inf
    assert scaled_error(np.zeros(3), np.zeros(4), tol) == inf  # shape mismatch
    assert scaled_error(np.zeros(0), np.zeros(0), tol) == 0.0
