"""The op contract (design.md §3, §5, §9) for every registered weight reparameterization: the
reference runs unchanged on array-api-strict and on torch tensors, calls are pure (state
included), `vjp` equals forward then backward, dispatch refuses what it cannot run, and `out=`
behaves: the forward's `out` receives the reparameterized weight, the backward's the gradient of
the weight-sized input (dv, dweight, dw), bit for bit the no-out result, and a refused `out`
leaves everything as it was."""

import array_api_strict
import numpy as np
import pytest

import normref
from normref.kernels.numba import reparam as numba_reparam
from normref.registry import OPS

REPARAMS = [op for op in OPS.values() if op.family == "reparameterization"]


def inputs_for(op, case_index=0, dtype=np.float64, seed=0):
    """The op's positional inputs for one of its registry cases, and its hyperparameters."""
    rng = np.random.default_rng(seed)
    case = op.cases[case_index]
    arrays = []
    for name in op.inputs:
        shape = case.shapes.get(name)
        # the case's own distribution where it has one (the compander's a, b must be positive)
        mean, std = case.draw.get(name, (0.0, 1.0))
        value = None if shape is None else (mean + std * rng.normal(size=shape)).astype(dtype)
        arrays.append(value)
    return arrays, dict(case.hyper)


def run(op, arrays, hyper, dy, **kw):
    outputs = op.forward(*arrays, **hyper, **kw)
    return outputs[:-1], op.backward(dy, outputs[-1], **kw)


def upstream(op, arrays, hyper, seed, dtype=np.float64):
    """A random gradient for the op's first output (the reparameterized weight)."""
    shape = op.forward(*arrays, **hyper)[0].shape
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


CASES = [(op, i) for op in REPARAMS for i in range(len(op.cases))]
CASE_IDS = [f"{op.name}-{i}" for op, i in CASES]


@pytest.mark.parametrize("op, case_index", CASES, ids=CASE_IDS)
def test_reference_runs_on_array_api_strict(op, case_index):
    arrays, hyper = inputs_for(op, case_index)
    dy = upstream(op, arrays, hyper, 1)
    outputs, grads = run(op, arrays, hyper, dy)

    def strict(a):
        return None if a is None else array_api_strict.asarray(a)

    outputs_s, grads_s = run(op, [strict(a) for a in arrays], hyper, strict(dy))
    assert type(outputs_s[0]).__module__.startswith("array_api_strict")
    for ours, theirs in zip(outputs + grads, outputs_s + grads_s):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(np.asarray(theirs), ours, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("op", REPARAMS, ids=lambda op: op.name)
def test_reference_runs_on_torch_tensors_passed_straight_in(op):
    torch = pytest.importorskip("torch", reason="needs PyTorch to pass its tensors in")
    arrays, hyper = inputs_for(op, 1)
    dy = upstream(op, arrays, hyper, 2)
    outputs, grads = run(op, arrays, hyper, dy)

    def tensor(a):
        return None if a is None else torch.from_numpy(a)

    outputs_t, grads_t = run(op, [tensor(a) for a in arrays], hyper, tensor(dy))
    for ours, theirs in zip(outputs + grads, outputs_t + grads_t):
        if ours is not None:
            assert isinstance(theirs, torch.Tensor)
            np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("op, case_index", CASES, ids=CASE_IDS)
def test_calls_are_pure_and_state_comes_back_new(op, case_index):
    arrays, hyper = inputs_for(op, case_index, np.float32)
    copies = [None if a is None else a.copy() for a in arrays]
    dy = upstream(op, arrays, hyper, 3, np.float32)
    dy_copy = dy.copy()
    outputs, _ = run(op, arrays, hyper, dy, backend="auto")
    for a, c in zip(arrays, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dy, dy_copy)
    # an output never aliases an input that a caller could go on to update in place
    for out in outputs:
        for a in arrays:
            if out is not None and a is not None and out is not a:
                assert not np.shares_memory(out, a)


@pytest.mark.parametrize("op", REPARAMS, ids=lambda op: op.name)
def test_vjp_equals_forward_then_backward(op):
    arrays, hyper = inputs_for(op, 0)
    dy = upstream(op, arrays, hyper, 4)
    outputs, grads = run(op, arrays, hyper, dy)
    for name_or_fn in (op.name, op.function):
        got, pullback = normref.vjp(name_or_fn, *arrays, **hyper)
        first = got[0] if len(op.outputs) > 1 else got
        np.testing.assert_array_equal(first, outputs[0])
        for g, g2 in zip(grads, pullback(dy)):
            assert (g is None) == (g2 is None)
            if g is not None:
                np.testing.assert_array_equal(g2, g)


@pytest.mark.parametrize("op", REPARAMS, ids=lambda op: op.name)
def test_backends_an_op_lacks_are_refused_never_faked(op):
    arrays, hyper = inputs_for(op, 0)
    if "numba" in op.kernels:  # Numba has no float16: refused, not run on the reference
        half = [None if a is None else a.astype(np.float16) for a in arrays]
        with pytest.raises(TypeError, match="backend='numba' takes float32, float64, got float16"):
            op.forward(*half, **hyper, backend="numba")
    else:
        with pytest.raises(TypeError, match="backend='numba' takes no dtype"):
            op.forward(*arrays, **hyper, backend="numba")
    strict = [None if a is None else array_api_strict.asarray(a) for a in arrays]
    with pytest.raises(TypeError, match="backend='cuda' runs on CuPy arrays"):
        op.forward(*strict, **hyper, backend="cuda")
    with normref.use_backend("numba"):
        op.forward(*arrays, **hyper, backend="reference")  # a call's own backend wins
    with pytest.raises(ValueError, match="unknown backend"):
        op.forward(*arrays, **hyper, backend="fast")


def test_every_reparameterization_is_registered_with_its_spec():
    names = {op.name for op in REPARAMS}
    assert names == {
        "weight_norm",
        "spectral_norm",
        "weight_standardization",
        "scaled_weight_standardization",
        "weight_compander",
        "binary_connect",
    }
    for op in REPARAMS:
        assert op.cases and op.spec == f"specs/{op.name}.md"


# ---------------------------------------------------------------------------- out=

# every case of every op, on the NumPy reference and, where the op has one, the Numba kernel
BACKEND_CASES = [
    (op, i, backend)
    for op in REPARAMS
    for i in range(len(op.cases))
    for backend in ("reference", "numba")
    if backend == "reference" or "numba" in op.kernels
]
IDS = [f"{op.name}-{i}-{backend}" for op, i, backend in BACKEND_CASES]


def _case(op, case_index, seed=0):
    arrays, hyper = inputs_for(op, case_index, np.float32, seed)
    dy = upstream(op, arrays, hyper, seed + 1, np.float32)
    return arrays, hyper, dy


def _main(op):
    """Where the backward's `out` goes: the gradient of the weight-sized input (v for
    weight_norm, whose first input is the magnitude g; the first input elsewhere)."""
    return op.differentiable.index("v" if op.name == "weight_norm" else op.inputs[0])


def _outs(like):
    """A C-contiguous buffer and a strided one (a transposed view) of like's shape and dtype."""
    return np.full_like(like, 7.0), np.full(like.shape[::-1], 7.0, like.dtype).T


@pytest.mark.parametrize("op, case_index, backend", BACKEND_CASES, ids=IDS)
def test_out_equals_the_result_bitwise_and_is_returned(op, case_index, backend):
    arrays, hyper, dy = _case(op, case_index)
    outputs, grads = run(op, arrays, hyper, dy, backend=backend)
    for out in _outs(outputs[0]):
        *got, saved = op.forward(*arrays, **hyper, out=out, backend=backend)
        assert got[0] is out
        np.testing.assert_array_equal(out, outputs[0])
        for mine, theirs in zip(got[1:], outputs[1:]):  # spectral_norm's new u, v
            np.testing.assert_array_equal(mine, theirs)
        result = op.function(*arrays, **hyper, out=out, backend=backend)
        assert (result[0] if len(op.outputs) > 1 else result) is out
        np.testing.assert_array_equal(out, outputs[0])
    main = _main(op)
    for out in _outs(grads[main]):
        got = op.backward(dy, saved, out=out, backend=backend)
        assert got[main] is out
        for mine, theirs in zip(got, grads):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                np.testing.assert_array_equal(mine, theirs)


def _bad_outs(like):
    frozen = np.full_like(like, 7.0)
    frozen.flags.writeable = False
    return {
        "shape": np.full(like.shape + (1,), 7.0, like.dtype),
        "dtype": np.full(like.shape, 7.0, np.float64 if like.dtype != np.float64 else np.float32),
        "read-only": frozen,
    }


@pytest.mark.parametrize("bad", ["shape", "dtype", "read-only"])
@pytest.mark.parametrize("op, case_index, backend", BACKEND_CASES, ids=IDS)
def test_a_refused_out_leaves_out_and_inputs_untouched(op, case_index, backend, bad):
    arrays, hyper, dy = _case(op, case_index)
    copies = [None if a is None else a.copy() for a in arrays]
    w, *_, saved = op.forward(*arrays, **hyper, backend=backend)
    match = "out must be " + ("a writable array" if bad == "read-only" else "an array of shape")
    out = _bad_outs(w)[bad]
    with pytest.raises(ValueError, match=f"{op.name}: {match}"):
        op.forward(*arrays, **hyper, out=out, backend=backend)
    np.testing.assert_array_equal(out, 7.0)
    dy_copy = dy.copy()
    out = _bad_outs(w)[bad]
    with pytest.raises(ValueError, match=f"{op.name}: {match}"):
        op.backward(dy, saved, out=out, backend=backend)
    np.testing.assert_array_equal(out, 7.0)
    np.testing.assert_array_equal(dy, dy_copy)
    for a, c in zip(arrays, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c)


# (op, kernel function, the position of the argument it writes the main result into)
KERNEL_WRITES = [
    ("weight_norm", "weight_norm_forward", 2),
    ("weight_norm", "weight_norm_backward", 4),
    ("weight_standardization", "weight_standardization_forward", 2),
    ("weight_standardization", "weight_standardization_backward", 5),
]


@pytest.mark.parametrize("name, kernel, position", KERNEL_WRITES)
def test_numba_kernels_write_straight_into_a_contiguous_out(monkeypatch, name, kernel, position):
    """The point of out= is to skip the allocation and the copy: the kernel is handed `out`'s own
    memory (for weight_norm: dim=0 and dim=None, whose rows are v's C order)."""
    (op,) = [op for op in REPARAMS if op.name == name]
    written = []
    real = getattr(numba_reparam, kernel)

    def spy(*args):
        written.append(args[position])
        real(*args)

    monkeypatch.setattr(numba_reparam, kernel, spy)
    for index, case in enumerate(op.cases):
        if case.hyper.get("dim", 0) not in (0, None):
            continue
        arrays, hyper, dy = _case(op, index)
        out = np.empty_like(arrays[-1] if name == "weight_norm" else arrays[0])
        written.clear()
        *_, saved = op.forward(*arrays, **hyper, out=out, backend="numba")
        if kernel.endswith("backward"):
            op.backward(dy, saved, out=out, backend="numba")
        (buffer,) = written
        assert (buffer is out or buffer.base is out) and buffer.ctypes.data == out.ctypes.data
