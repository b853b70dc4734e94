"""The op contract (design.md §3, §5, §9), checked for every registered normalization: the reference
runs unchanged on any array-API library (every registry case, every output: running statistics
too), calls are pure, `vjp` and `out=` behave, dispatch refuses what it cannot run, and importing
normref loads no optional library."""

import subprocess
import sys

import array_api_strict
import numpy as np
import pytest

import normref
from normref.registry import OPS

NORMS = [op for op in OPS.values() if op.family == "normalization"]
CASES = [(op, index) for op in NORMS for index in range(len(op.cases))]


def inputs_for(op, case_index=0, dtype=np.float64, seed=0):
    """The op's positional inputs for one of its registry cases, and its hyperparameters."""
    rng = np.random.default_rng(seed)
    case = op.cases[case_index]
    arrays = []
    for name in op.inputs:
        shape = case.shapes.get(name)
        if shape is None:
            arrays.append(None)
        elif name.endswith("weight"):
            arrays.append((1 + 0.2 * rng.normal(size=shape)).astype(dtype))
        elif name.endswith("var"):  # a running variance
            arrays.append(rng.uniform(0.5, 1.5, size=shape).astype(dtype))
        else:
            arrays.append(rng.normal(size=shape).astype(dtype))
    return arrays, dict(case.hyper)


def run(op, arrays, hyper, dy, **kw):
    """(the forward's outputs, the backward's gradients): lists, y first."""
    *outputs, saved = op.forward(*arrays, **hyper, **kw)
    return outputs, list(op.backward(dy, saved, **kw))


@pytest.mark.parametrize("library", ["array_api_strict", "torch"])
@pytest.mark.parametrize("op, case_index", CASES, ids=[f"{op.name}-{i}" for op, i in CASES])
def test_reference_runs_unchanged_on_array_api_strict_and_torch(op, case_index, library):
    if library == "torch":
        torch = pytest.importorskip("torch", reason="needs PyTorch to pass its tensors in")
        convert = torch.from_numpy
    else:
        convert = array_api_strict.asarray
    arrays, hyper = inputs_for(op, case_index)
    dy = np.random.default_rng(1).normal(size=arrays[0].shape)
    outputs, grads = run(op, arrays, hyper, dy, backend="reference")

    def conv(a):
        return None if a is None else convert(a)

    outputs2, grads2 = run(op, [conv(a) for a in arrays], hyper, conv(dy))
    for ours, theirs in zip(outputs + grads, outputs2 + grads2):
        if isinstance(ours, np.ndarray):
            assert type(theirs) is type(conv(dy))
            np.testing.assert_allclose(np.asarray(theirs), ours, rtol=1e-13, atol=1e-13)
        else:
            assert theirs == ours  # None, or batch norm's num_batches_tracked


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("op", NORMS, ids=lambda op: op.name)
def test_calls_are_pure(op, backend):
    arrays, hyper = inputs_for(op, 0, np.float32)
    copies = [None if a is None else a.copy() for a in arrays]
    dy = np.random.default_rng(3).normal(size=arrays[0].shape).astype(np.float32)
    dy_copy = dy.copy()
    run(op, arrays, hyper, dy, backend=backend)
    for a, c in zip(arrays, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dy, dy_copy)


@pytest.mark.parametrize("op", NORMS, ids=lambda op: op.name)
def test_vjp_equals_forward_then_backward(op):
    arrays, hyper = inputs_for(op, 0)
    dy = np.random.default_rng(4).normal(size=arrays[0].shape)
    outputs, grads = run(op, arrays, hyper, dy, backend="reference")
    for name_or_fn in (op.name, op.function, op.forward):
        outputs2, pullback = normref.vjp(name_or_fn, *arrays, **hyper, backend="reference")
        outputs2 = outputs2 if len(outputs) > 1 else (outputs2,)
        assert len(outputs2) == len(outputs)
        for a, a2 in zip(outputs, outputs2):
            np.testing.assert_array_equal(a2, a)
        for g, g2 in zip(grads, pullback(dy)):
            assert (g is None) == (g2 is None)
            if g is not None:
                np.testing.assert_array_equal(g2, g)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("op", NORMS, ids=lambda op: op.name)
def test_out_receives_the_result_contiguous_or_strided(op, backend):
    arrays, hyper = inputs_for(op, 0, np.float32)
    x = arrays[0]
    dy = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    (y, *_), grads = run(op, arrays, hyper, dy, backend=backend)
    # its own memory; strided; a contiguous view into a larger buffer whose rest stays as it was
    larger = np.full((3 * x.size,), 7.0, np.float32)
    window = larger[x.size : 2 * x.size].reshape(x.shape)
    for out in (np.empty_like(x), np.empty(x.shape[::-1], np.float32).T, window):
        got, *_, saved = op.forward(*arrays, **hyper, out=out, backend=backend)
        assert got is out
        np.testing.assert_array_equal(out, y)
    assert np.all(larger[: x.size] == 7.0) and np.all(larger[2 * x.size :] == 7.0)
    dx_out = np.empty_like(x)
    assert op.backward(dy, saved, out=dx_out, backend=backend)[0] is dx_out
    np.testing.assert_array_equal(dx_out, grads[0])


@pytest.mark.parametrize("op", NORMS, ids=lambda op: op.name)
def test_a_refused_call_leaves_out_untouched(op):
    arrays, hyper = inputs_for(op, 0)
    out = np.full(arrays[0].shape, 7.0)
    with pytest.raises(ValueError):
        op.forward(*arrays, **hyper, eps=-1.0, out=out)
    np.testing.assert_array_equal(out, 7.0)


@pytest.mark.parametrize("op", NORMS, ids=lambda op: op.name)
def test_use_backend_applies_and_explicit_backends_never_fall_back(op):
    arrays, hyper = inputs_for(op, 0)
    strict = [None if a is None else array_api_strict.asarray(a) for a in arrays]
    with normref.use_backend("numba"):
        assert normref.current_backend() == "numba"
        with pytest.raises(TypeError, match="backend='numba' runs on NumPy arrays"):
            op.forward(*strict, **hyper)
        # a call's own backend wins over the context
        op.forward(*strict, **hyper, backend="reference")
    assert normref.current_backend() == "auto"
    with pytest.raises(TypeError, match="backend='cuda' runs on CuPy arrays"):
        op.forward(*arrays, **hyper, backend="cuda")
    taken = op.kernels["numba"].dtypes if "numba" in op.kernels else ()
    # a floating dtype the kernels do not take (long double is float128 on x86-64 Linux)
    other = next((d for d in (np.float16, np.longdouble) if np.dtype(d).name not in taken), None)
    if other is None:
        pytest.skip("this platform's long double is float64: no floating dtype left to refuse")
    cast = [None if a is None else a.astype(other) for a in arrays]
    numba_dtypes = ", ".join(taken) or "no dtype"
    name = np.dtype(other).name
    with pytest.raises(TypeError, match=f"backend='numba' takes {numba_dtypes}, got {name}"):
        op.forward(*cast, **hyper, backend="numba")
    with pytest.raises(ValueError, match="unknown backend"):
        with normref.use_backend("tpu"):
            pass


def test_importing_normref_loads_no_optional_array_library():
    code = (
        "import sys, normref\n"
        "optional = ('numba', 'cupy', 'torch', 'jax', 'rich')\n"
        "loaded = sorted(m for m in optional if m in sys.modules)\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("op", NORMS, ids=lambda op: op.name)
def test_empty_batch_gives_empty_outputs_and_zero_parameter_gradients(op, backend):
    arrays, hyper = inputs_for(op, 0, np.float32)
    x = arrays[0]
    empty = np.empty((0,) + x.shape[1:], np.float32)
    y, *_, saved = op.forward(empty, *arrays[1:], **hyper, backend=backend)
    grads = op.backward(np.empty_like(empty), saved, backend=backend)
    assert y.shape == empty.shape and grads[0].shape == empty.shape
    for g, a in zip(grads[1:], arrays[1:]):
        if a is not None:
            np.testing.assert_array_equal(g, np.zeros_like(a))
