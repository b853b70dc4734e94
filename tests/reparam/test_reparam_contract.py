"""The op contract (design.md §3, §5, §9) for every registered weight reparameterization: the
reference runs unchanged on array-api-strict and on torch tensors, calls are pure (state
included), `vjp` equals forward then backward, and dispatch refuses what it cannot run."""

import array_api_strict
import numpy as np
import pytest

import normref
from normref.registry import OPS

REPARAMS = [op for op in OPS.values() if op.family == "reparameterization"]


def inputs_for(op, case_index=0, dtype=np.float64, seed=0):
    """The op's positional inputs for one of its registry cases, and its hyperparameters."""
    rng = np.random.default_rng(seed)
    case = op.cases[case_index]
    arrays = [
        None if case.shapes.get(name) is None else rng.normal(size=case.shapes[name]).astype(dtype)
        for name in op.inputs
    ]
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
