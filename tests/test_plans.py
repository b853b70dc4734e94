"""Call plans (normref/_plans.py): a call that finds a plan must behave exactly as the same call
checked afresh, so every test here makes a plan with one call and then tries to misuse it."""

import numpy as np
import pytest

import normref
from normref import _plans
from normref.kernels.numba import norms as numba_norms

ROW_NORMS = [
    (normref.layer_norm_forward, normref.layer_norm_backward, "layer_norm_forward"),
    (normref.rms_norm_forward, normref.rms_norm_backward, "rms_norm_forward"),
]


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)


def _reference(forward, x, **kw):
    return forward(x, backend="reference", **kw)[0]


@pytest.mark.parametrize("forward, backward, kernel", ROW_NORMS)
def test_a_bad_argument_is_refused_after_a_good_call_like_it(forward, backward, kernel, x):
    out = np.empty_like(x)
    forward(x, eps=1, out=out)  # planned: an int eps, a writable out
    with pytest.raises(TypeError, match="eps"):
        forward(x, eps=True, out=out)  # True == 1 and hash(True) == hash(1)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        forward(x, eps=1, out=out)
    with pytest.raises(ValueError, match="eps"):
        forward(x, eps=-1.0)
    with pytest.raises(TypeError, match="dy"):
        backward(x.astype(np.float64), forward(x)[1])


@pytest.mark.parametrize("forward, backward, kernel", ROW_NORMS)
def test_strided_and_reshaped_inputs_after_a_contiguous_one(forward, backward, kernel, x):
    forward(x)  # planned for a C-contiguous (6, 10) x
    wide = np.random.default_rng(1).standard_normal((6, 20)).astype(np.float32)
    strided = wide[:, ::2]  # same shape and dtype, other strides
    np.testing.assert_allclose(forward(strided)[0], _reference(forward, strided), atol=1e-6)
    out = np.empty((6, 20), np.float32)[:, ::2]
    y = forward(x, out=out)[0]
    assert y is out
    np.testing.assert_allclose(out, _reference(forward, x), atol=1e-6)
    dx, *_ = backward(np.ones_like(strided), forward(strided)[1])
    dx_ref, *_ = backward(
        np.ones_like(strided), forward(strided, backend="reference")[1], backend="reference"
    )
    np.testing.assert_allclose(dx, dx_ref, atol=1e-5)


@pytest.mark.parametrize("forward, backward, kernel", ROW_NORMS)
def test_the_backend_context_is_part_of_the_signature(forward, backward, kernel, x, monkeypatch):
    runs = []
    entry = numba_norms.entry

    def counted(name, *shape_and_dtype):  # plans keep what entry gives: count its runs
        run = entry(name, *shape_and_dtype)
        return lambda *args: runs.append(name) or run(*args)

    monkeypatch.setattr(numba_norms, "entry", counted)
    _plans.clear()  # no plan made before the patch
    forward(x)  # planned on Numba
    assert runs == [kernel]
    with normref.use_backend("reference"):
        np.testing.assert_array_equal(forward(x)[0], _reference(forward, x))
    assert runs == [kernel]
    forward(x)
    assert runs == [kernel, kernel]
    _plans.clear()  # none made under the patch


@pytest.mark.parametrize("forward, backward, kernel", ROW_NORMS)
def test_unhashable_arguments_and_many_signatures(forward, backward, kernel, x):
    np.testing.assert_array_equal(forward(x, normalized_shape=[10])[0], forward(x)[0])
    for n in range(1, 2 * _plans._MAX_PLANS):  # more kinds of call than a cache keeps
        xn = x[:, :1].repeat(n, axis=1) + np.arange(n, dtype=np.float32)
        np.testing.assert_allclose(forward(xn)[0], _reference(forward, xn), atol=1e-5)


def test_signature_leaves_out_calls_with_other_arrays():
    x = np.zeros((2, 3))
    assert _plans.signature((x, None), None, 1e-5) is not None
    assert _plans.signature((x, x.tolist()), None, 1e-5) is None
    assert _plans.signature((x,), x.tolist(), 1e-5) is None
    outside = _plans.signature((x,), None)
    with normref.use_backend("reference"):  # the context is in the key
        assert _plans.signature((x,), None) != outside
