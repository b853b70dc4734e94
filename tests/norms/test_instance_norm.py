"""InstanceNorm's reference: finite differences with input and running statistics, PyTorch
autograd and running-statistics updates (F.instance_norm, nn.InstanceNorm2d over many steps),
numerics, purity, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

from normref.norms.instance_norm import (
    instance_norm,
    instance_norm_backward,
    instance_norm_forward,
)

torch = pytest.importorskip(
    "torch", reason="PyTorch is the independent implementation checked against"
)
F = torch.nn.functional

SHAPES = [(3, 2, 5), (2, 3, 3, 4), (2, 2, 2, 3, 2), (1, 3, 7)]
# (use_input_stats, running statistics given)
MODES = [(True, True), (True, False), (False, True)]


def make(shape, affine=True, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (0.7 + 1.8 * rng.normal(size=shape)).astype(dtype)
    w = (1 + 0.3 * rng.normal(size=c)).astype(dtype) if affine else None
    b = rng.normal(size=c).astype(dtype) if affine else None
    rm = rng.normal(size=c).astype(dtype)
    rv = (0.5 + rng.random(c)).astype(dtype)
    return x, w, b, rm, rv, rng.normal(size=shape).astype(dtype)


def mode_id(mode):
    return f"input_stats={mode[0]}-tracked={mode[1]}"


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", MODES, ids=mode_id)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_finite_differences(shape, mode, affine):
    x, w, b, rm, rv, dy = make(shape, affine)
    use_input_stats, tracked = mode
    rm, rv = (rm, rv) if tracked else (None, None)

    def f(x, w, b):
        return instance_norm(x, w, b, rm, rv, use_input_stats=use_input_stats)[0]

    *_, saved = instance_norm_forward(x, w, b, rm, rv, use_input_stats=use_input_stats)
    analytic = instance_norm_backward(dy, saved)
    assert_gradients_match(analytic, numerical_vjp(f, [x, w, b], dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 2e-5, 2e-5)]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", MODES, ids=mode_id)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_pytorch_autograd(shape, mode, affine, dtype, rtol, atol):
    x, w, b, rm, rv, dy = make(shape, affine, dtype, seed=1)
    use_input_stats, tracked = mode
    rm, rv = (rm, rv) if tracked else (None, None)
    tx = torch.tensor(x, requires_grad=True)
    tw = None if w is None else torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    trm = None if rm is None else torch.tensor(rm)
    trv = None if rv is None else torch.tensor(rv)
    ty = F.instance_norm(tx, trm, trv, tw, tb, use_input_stats=use_input_stats, eps=1e-5)
    ty.backward(torch.tensor(dy))

    y, new_rm, new_rv, saved = instance_norm_forward(
        x, w, b, rm, rv, use_input_stats=use_input_stats, backend="reference"
    )
    dx, dw, db = instance_norm_backward(dy, saved, backend="reference")
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol * 10)
    for ours, theirs in ((dw, tw), (db, tb)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=rtol, atol=atol * 10)
    for ours, theirs in ((new_rm, trm), (new_rv, trv)):  # F.instance_norm updated them in place
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert ours.dtype == dtype
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=rtol, atol=atol)


def test_running_statistics_follow_torch_instancenorm2d_over_ten_steps():
    rng = np.random.default_rng(2)
    module = torch.nn.InstanceNorm2d(
        3, affine=True, track_running_stats=True, momentum=0.2, dtype=torch.float64
    )
    with torch.no_grad():
        module.weight.copy_(torch.tensor(1 + 0.2 * rng.normal(size=3)))
        module.bias.copy_(torch.tensor(rng.normal(size=3)))
    w, b = module.weight.detach().numpy().copy(), module.bias.detach().numpy().copy()
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(10):
        x = rng.normal(loc=step - 4.0, scale=0.5 + step, size=(1 + step % 3, 3, 4, 5))
        module.train()
        y_t = module(torch.tensor(x)).detach().numpy()
        y, rm, rv = instance_norm(x, w, b, rm, rv, momentum=0.2)
        np.testing.assert_allclose(y, y_t, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(rm, module.running_mean.numpy(), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(rv, module.running_var.numpy(), rtol=1e-14, atol=1e-15)
    module.eval()
    x = rng.normal(size=(2, 3, 4, 5))
    y, rm2, rv2 = instance_norm(x, w, b, rm, rv, use_input_stats=False)
    np.testing.assert_allclose(y, module(torch.tensor(x)).detach().numpy(), rtol=1e-13, atol=1e-13)
    assert rm2 is rm and rv2 is rv


def test_running_statistics_average_the_per_instance_updates():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 2, 6))
    rm, rv = rng.normal(size=2), 1 + rng.random(2)
    _, new_rm, new_rv = instance_norm(x, running_mean=rm, running_var=rv, momentum=0.3)
    np.testing.assert_allclose(new_rm, 0.7 * rm + 0.3 * x.mean(axis=2).mean(axis=0))
    np.testing.assert_allclose(new_rv, 0.7 * rv + 0.3 * x.var(axis=2, ddof=1).mean(axis=0))


def test_strided_inputs_give_the_contiguous_result():
    x, w, b, rm, rv, dy = make((4, 3, 9), seed=9)
    xs, dys = x[::2, :, ::4], dy[::2, :, ::4]
    for use_input_stats in (True, False):
        y, *state, saved = instance_norm_forward(xs, w, b, rm, rv, use_input_stats=use_input_stats)
        y_c, *state_c, saved_c = instance_norm_forward(
            xs.copy(), w, b, rm, rv, use_input_stats=use_input_stats
        )
        for a, c in zip([y, *state], [y_c, *state_c]):
            np.testing.assert_array_equal(a, c)
        grads = instance_norm_backward(dys, saved)
        for a, c in zip(grads, instance_norm_backward(dys.copy(), saved_c)):
            np.testing.assert_array_equal(a, c)


def test_calls_are_pure():
    x, w, b, rm, rv, dy = make((3, 2, 5), dtype=np.float32)
    copies = [a.copy() for a in (x, w, b, rm, rv, dy)]
    y, new_rm, new_rv, saved = instance_norm_forward(x, w, b, rm, rv)
    instance_norm_backward(dy, saved)
    for a, c in zip((x, w, b, rm, rv, dy), copies):
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(new_rm, rm) and not np.array_equal(new_rv, rv)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    instance_norm(torch.tensor(x), None, None, trm, trv)
    np.testing.assert_array_equal(trm.numpy(), rm)
    np.testing.assert_array_equal(trv.numpy(), rv)


def test_large_offset_float32():
    rng = np.random.default_rng(4)
    shape = (2, 3, 32, 32)
    x = (1e4 + 1e-3 * rng.normal(size=shape)).astype(np.float32)
    w = (1 + 0.1 * rng.normal(size=3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    *out32, s32 = instance_norm_forward(x, w, b, rm, rv)
    g32 = instance_norm_backward(dy, s32)
    *out64, s64 = instance_norm_forward(*(a.astype(np.float64) for a in (x, w, b, rm, rv)))
    g64 = instance_norm_backward(dy.astype(np.float64), s64)
    np.testing.assert_allclose(out32[0], out64[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out32[1], out64[1], rtol=1e-6)
    np.testing.assert_allclose(out32[2], out64[2], rtol=1e-6)
    for ours, exact in zip(g32, g64):
        scale = np.max(np.abs(exact))
        np.testing.assert_allclose(ours, exact, rtol=1e-3, atol=1e-4 * scale)


def test_constant_instances_give_exactly_the_bias_and_finite_gradients():
    x = np.full((2, 3, 4, 4), 7.25, dtype=np.float32)
    x[1] = -3.0
    b = np.arange(3, dtype=np.float32)
    y, _, new_rv, saved = instance_norm_forward(
        x, np.ones(3, np.float32), b, np.zeros(3, np.float32), np.ones(3, np.float32)
    )
    np.testing.assert_array_equal(y, np.broadcast_to(b[:, None, None], y.shape))
    np.testing.assert_array_equal(new_rv, np.float32(0.9))
    dy = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    assert all(np.all(np.isfinite(g)) for g in instance_norm_backward(dy, saved))


def test_nan_propagates_to_its_instance_only():
    x, w, b, rm, rv, dy = make((3, 2, 5), seed=6)
    x[1, 0, 2] = np.nan
    y, new_rm, new_rv, saved = instance_norm_forward(x, w, b, rm, rv)
    assert np.all(np.isnan(y[1, 0])) and np.isnan(y).sum() == 5
    assert np.isnan(new_rm[0]) and np.isnan(new_rv[0]) and np.isfinite(new_rm[1] + new_rv[1])
    dx, dw, db = instance_norm_backward(dy, saved)
    assert np.all(np.isnan(dx[1, 0])) and np.isnan(dx).sum() == 5
    assert np.isnan(dw[0]) and np.isfinite(dw[1]) and np.all(np.isfinite(db))


def test_float16_computes_in_float32_and_rounds_once():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 3, 10)).astype(np.float16)
    w = (1 + 0.1 * rng.normal(size=3)).astype(np.float16)
    b = rng.normal(size=3).astype(np.float16)
    rm, rv = np.zeros(3, np.float16), np.ones(3, np.float16)
    y, new_rm, new_rv, saved = instance_norm_forward(x, w, b, rm, rv)
    assert y.dtype == new_rm.dtype == new_rv.dtype == np.float16
    assert saved.mean.dtype == saved.rstd.dtype == np.float32
    exact = instance_norm(*(a.astype(np.float64) for a in (x, w, b, rm, rv)))
    for ours, theirs in zip((y, new_rm, new_rv), exact):
        np.testing.assert_allclose(ours, theirs, rtol=2**-10, atol=2**-14)
    dx, dw, db = instance_norm_backward(rng.normal(size=x.shape).astype(np.float16), saved)
    assert dx.dtype == dw.dtype == db.dtype == np.float16


def test_empty_batch_leaves_the_running_statistics():
    # PyTorch averages the updates over no sample and stores NaN; normref keeps the statistics
    x = np.empty((0, 3, 4))
    rm, rv = np.arange(3.0), np.ones(3)
    y, new_rm, new_rv, saved = instance_norm_forward(x, np.ones(3), np.zeros(3), rm, rv)
    assert y.shape == x.shape and new_rm is rm and new_rv is rv
    dx, dw, db = instance_norm_backward(np.empty_like(x), saved)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, 0.0)


def test_one_spatial_value_is_refused_with_input_statistics_only():
    rm, rv = np.zeros(3), np.ones(3)
    for shape in [(4, 3), (4, 3, 1), (2, 3, 1, 1), (2, 3, 0)]:
        with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
            instance_norm(np.ones(shape))
    y, *_ = instance_norm(np.ones((4, 3)), None, None, rm, rv, use_input_stats=False)
    np.testing.assert_allclose(y, 1 / np.sqrt(1 + 1e-5))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.ones((2, 3, 4), np.int64)}, TypeError, "x must be a real floating-point"),
        ({"x": np.ones(4)}, ValueError, r"x must have at least 2 dimensions"),
        ({"weight": np.ones(4)}, ValueError, r"weight must have shape \(3,\)"),
        ({"running_mean": np.zeros(3)}, ValueError, "must be given together"),
        ({"running_mean": np.zeros(2), "running_var": np.ones(2)}, ValueError, "running_mean"),
        ({"use_input_stats": False}, ValueError, "running_mean and running_var are required"),
        ({"use_input_stats": 0}, TypeError, "use_input_stats must be True or False"),
        ({"momentum": None}, TypeError, "momentum must be a real number"),
        ({"momentum": 1.01}, ValueError, r"momentum must be in \[0, 1\]"),
        ({"momentum": -1e-3}, ValueError, r"momentum must be in \[0, 1\]"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"out": np.empty((2, 3, 4), np.float32)}, ValueError, "out must be an array of shape"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, match):
    args = {"x": np.ones((2, 3, 4)), "weight": None, "bias": None} | kwargs
    x, w, b = args.pop("x"), args.pop("weight"), args.pop("bias")
    rm, rv = args.pop("running_mean", None), args.pop("running_var", None)
    with pytest.raises(error, match=match):
        instance_norm(x, w, b, rm, rv, **args)


def test_backward_refuses_a_mismatched_gradient():
    *_, saved = instance_norm_forward(np.random.default_rng(8).normal(size=(2, 3, 4)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3, 4\)"):
        instance_norm_backward(np.ones((2, 4, 3)), saved)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        instance_norm_backward(np.ones((2, 3, 4), np.float32), saved)
