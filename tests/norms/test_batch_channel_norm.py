"""Batch-Channel Normalization's reference: finite differences in training and eval, an independent
PyTorch autograd re-implementation of the authors' BCNorm(estimate=True) / EstBN, the running
estimates over many steps, the named variants, numerics, purity, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

from normref.norms.batch_channel_norm import (
    batch_channel_norm,
    batch_channel_norm_backward,
    batch_channel_norm_forward,
    batch_channel_norm_variant,
)
from normref.registry import OPS

torch = pytest.importorskip(
    "torch", reason="PyTorch is the independent implementation checked against"
)

# (shape, num_groups): 2-D input, one group per channel pair, a micro-batch of one, G = C.
SHAPES = [((3, 4), 2), ((2, 6, 5), 3), ((1, 4, 3, 2), 1), ((2, 4, 2, 2, 3), 4)]


def make(shape, groups, affine=True, dtype=np.float64, seed=0):
    """x, bn_weight, bn_bias, weight, bias, running_mean, running_var (positive), dy. The data is
    off-centre and of another spread than the estimates, so both steps have work to do."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (0.7 + 1.8 * rng.normal(size=shape)).astype(dtype)
    bw = (1 + 0.3 * rng.normal(size=c)).astype(dtype) if affine else None
    bb = rng.normal(size=c).astype(dtype) if affine else None
    w = (1 + 0.3 * rng.normal(size=groups)).astype(dtype) if affine else None
    b = rng.normal(size=groups).astype(dtype) if affine else None
    rm = rng.normal(size=c).astype(dtype)
    rv = (0.5 + rng.random(c)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, bw, bb, w, b, rm, rv, dy


def torch_bcn(x, bn_w, bn_b, w, b, rm, rv, *, num_groups, training, momentum, eps, batch_eps):
    """The authors' BCNorm(estimate=True) forward (Batch-Channel-Normalization README.md, classes
    BCNorm and EstBN), written as a function of torch tensors: returns (y, new_rm, new_rv), the
    state cloned first instead of updated in place. Autograd differentiates y."""
    rm, rv = rm.detach().clone(), rv.detach().clone()
    c, n = x.shape[1], x.shape[0]
    if training:
        with torch.no_grad():  # EstBN: the estimates are buffers, outside the graph
            t = x.transpose(0, 1).reshape(c, -1)
            batch_mean = t.mean(dim=1)
            t = t - rm.view(-1, 1)  # centred on the estimate from BEFORE this batch
            second = torch.mean(t * t, dim=1)
            rm.mul_(1 - momentum).add_(momentum * batch_mean)
            rv.mul_(1 - momentum).add_(momentum * second)
    shape = (1, c) + (1,) * (x.ndim - 2)
    out = (x - rm.view(shape)) / torch.sqrt(rv + batch_eps).view(shape)
    if bn_w is not None:
        out = bn_w.view(shape) * out
    if bn_b is not None:
        out = out + bn_b.view(shape)
    # BCNorm: group statistics through batch_norm on a (1, N*G, rest) view, always training=True
    out = out.reshape(1, n * num_groups, -1)
    out = torch.batch_norm(out, None, None, None, None, True, 0.0, eps, True)
    out = out.reshape(n, num_groups, -1)
    if w is not None:
        out = w.view(1, -1, 1) * out
    if b is not None:
        out = out + b.view(1, -1, 1)
    return out.reshape(x.shape), rm, rv


def hyper(groups, training=True, momentum=0.2, eps=1e-5, batch_eps=1e-5):
    return dict(
        num_groups=groups, training=training, momentum=momentum, eps=eps, batch_eps=batch_eps
    )


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_backward_matches_finite_differences(shape, groups, training, affine):
    """In training, the estimates are state (the authors compute them under no_grad), so the
    backward is the derivative with the updated estimates held fixed: the finite differences are
    those of eval mode at the new estimates, which gives the very same y."""
    x, bw, bb, w, b, rm, rv, dy = make(shape, groups, affine)
    kw = hyper(groups, training, eps=1e-3)
    y, new_rm, new_rv, saved = batch_channel_norm_forward(x, bw, bb, w, b, rm, rv, **kw)
    fixed = {**kw, "training": False}
    y_fixed = batch_channel_norm(x, bw, bb, w, b, new_rm, new_rv, **fixed)[0]
    np.testing.assert_array_equal(y, y_fixed)

    def f(x, bw, bb, w, b):
        return batch_channel_norm(x, bw, bb, w, b, new_rm, new_rv, **fixed, backend="reference")[0]

    analytic = batch_channel_norm_backward(dy, saved, backend="reference")
    numeric = numerical_vjp(f, [x, bw, bb, w, b], dy)
    assert_gradients_match(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_no_gradient_flows_through_the_estimates(momentum):
    """Differentiating the whole training call (estimates recomputed from the perturbed x) gives
    the same dx as the backward only when the estimates do not move with x (momentum 0). The
    parameter gradients agree either way: the estimates do not depend on the parameters."""
    x, bw, bb, w, b, rm, rv, dy = make((2, 4, 3), 2)
    kw = hyper(2, True, momentum)

    def f(x, bw, bb, w, b):
        return batch_channel_norm(x, bw, bb, w, b, rm, rv, **kw)[0]

    *_, saved = batch_channel_norm_forward(x, bw, bb, w, b, rm, rv, **kw)
    analytic = batch_channel_norm_backward(dy, saved)
    numeric = numerical_vjp(f, [x, bw, bb, w, b], dy)
    assert_gradients_match(analytic[1:], numeric[1:], rtol=1e-6, atol=1e-8)
    if momentum == 0.0:
        np.testing.assert_allclose(analytic[0], numeric[0], rtol=1e-6, atol=1e-8)
    else:
        assert np.max(np.abs(analytic[0] - numeric[0])) > 1e-3


# --- the independent implementation --------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 2e-5, 2e-5)]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_matches_the_authors_code_under_pytorch_autograd(
    shape, groups, training, affine, dtype, rtol, atol
):
    x, bw, bb, w, b, rm, rv, dy = make(shape, groups, affine, dtype, seed=1)
    kw = hyper(groups, training, momentum=0.25, eps=1e-4, batch_eps=1e-5)

    def tensor(a, grad):
        return None if a is None else torch.tensor(a, requires_grad=grad)

    tx, tbw, tbb, tw, tb = (tensor(a, True) for a in (x, bw, bb, w, b))
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty, t_rm, t_rv = torch_bcn(tx, tbw, tbb, tw, tb, trm, trv, **kw)
    ty.backward(torch.tensor(dy))

    y, new_rm, new_rv, saved = batch_channel_norm_forward(
        x, bw, bb, w, b, rm, rv, **kw, backend="reference"
    )
    grads = batch_channel_norm_backward(dy, saved, backend="reference")
    assert y.dtype == grads[0].dtype == new_rm.dtype == new_rv.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(new_rm, t_rm.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(new_rv, t_rv.numpy(), rtol=rtol, atol=atol)
    for ours, theirs in zip(grads, (tx, tbw, tbb, tw, tb)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=rtol, atol=atol * 10)


def test_running_estimates_follow_the_authors_code_over_ten_steps():
    """Micro-batches of one to three samples with moving mean and spread, then eval."""
    rng = np.random.default_rng(2)
    c, groups = 6, 3
    bw, bb = 1 + 0.2 * rng.normal(size=c), rng.normal(size=c)
    w, b = 1 + 0.2 * rng.normal(size=groups), rng.normal(size=groups)
    rm, rv = np.zeros(c), np.ones(c)  # EstBN's initial buffers
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    params = [torch.tensor(a) for a in (bw, bb, w, b)]
    kw = hyper(groups, True, momentum=0.1)
    for step in range(10):
        x = rng.normal(loc=step - 4.0, scale=0.5 + step, size=(1 + step % 3, c, 4, 5))
        y, rm, rv = batch_channel_norm(x, bw, bb, w, b, rm, rv, **kw)
        ty, trm, trv = torch_bcn(torch.tensor(x), *params, trm, trv, **kw)
        np.testing.assert_allclose(y, ty.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-14, atol=1e-15)
    x = rng.normal(size=(2, c, 4, 5))
    kw["training"] = False
    y, rm2, rv2 = batch_channel_norm(x, bw, bb, w, b, rm, rv, **kw)
    ty, *_ = torch_bcn(torch.tensor(x), *params, trm, trv, **kw)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-12, atol=1e-12)
    assert rm2 is rm and rv2 is rv


def test_the_update_by_hand():
    """One channel per group, N = 1: the equations of specs/batch_channel_norm.md, written out."""
    x = np.array([[[1.0, 3.0], [10.0, 30.0]]])
    rm, rv = np.array([0.5, 12.0]), np.array([2.0, 50.0])
    y, new_rm, new_rv = batch_channel_norm(x, None, None, None, None, rm, rv, **hyper(2, True, 0.5))
    batch_mean = np.array([2.0, 20.0])
    # about the old estimates 0.5 and 12, not about the batch means
    second = np.array([(0.5**2 + 2.5**2) / 2, (2.0**2 + 18.0**2) / 2])
    np.testing.assert_allclose(new_rm, 0.5 * rm + 0.5 * batch_mean, rtol=1e-15)
    np.testing.assert_allclose(new_rv, 0.5 * rv + 0.5 * second, rtol=1e-15)
    h = (x - new_rm[:, None]) / np.sqrt(new_rv[:, None] + 1e-5)
    hm = h.mean(axis=2, keepdims=True)
    expected = (h - hm) / np.sqrt(((h - hm) ** 2).mean(axis=2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-14)


def test_with_momentum_zero_it_is_group_norm_of_eval_batch_norm():
    """The two steps, built from normref's own ops: the estimates stay, so the batch step is
    batch_norm in eval mode, and the channel step without affine is group_norm."""
    from normref.norms.batch_norm import batch_norm
    from normref.norms.group_norm import group_norm

    x, bw, bb, _, _, rm, rv, _ = make((2, 6, 5), 3, seed=5)
    kw = hyper(3, True, momentum=0.0, eps=1e-4, batch_eps=1e-3)
    y, new_rm, new_rv = batch_channel_norm(x, bw, bb, None, None, rm, rv, **kw)
    h = batch_norm(x, bw, bb, rm, rv, training=False, eps=1e-3)[0]
    np.testing.assert_allclose(y, group_norm(h, num_groups=3, eps=1e-4), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(new_rm, rm)
    np.testing.assert_array_equal(new_rv, rv)


# --- variants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_the_variant_formula_without_flags_is_the_op(training):
    x, bw, bb, w, b, rm, rv, _ = make((2, 6, 5), 3)
    kw = hyper(3, training, momentum=0.3)
    ours = batch_channel_norm(x, bw, bb, w, b, rm, rv, **kw)
    theirs = batch_channel_norm_variant(x, bw, bb, w, b, rm, rv, **kw)
    for a, c in zip(ours, theirs):
        np.testing.assert_allclose(a, c, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("training", [True, False])
def test_batch_statistics_variant_is_the_authors_estimate_false_bcnorm(training):
    """BCNorm(estimate=False): nn.BatchNorm2d, then the same channel step."""
    x, bw, bb, w, b, rm, rv, _ = make((2, 6, 4, 3), 3, seed=3)
    kw = hyper(3, training, momentum=0.3, eps=1e-4, batch_eps=1e-3)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    h = torch.nn.functional.batch_norm(
        torch.tensor(x), trm, trv, torch.tensor(bw), torch.tensor(bb), training, 0.3, 1e-3
    )
    g = torch.nn.functional.group_norm(h, 3, None, None, 1e-4).reshape(2, 3, -1)
    expected = (g * torch.tensor(w).view(1, 3, 1) + torch.tensor(b).view(1, 3, 1)).reshape(x.shape)
    y, new_rm, new_rv = batch_channel_norm_variant(
        x, bw, bb, w, b, rm, rv, **kw, batch_statistics=True
    )
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new_rm, trm.numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(new_rv, trv.numpy(), rtol=1e-14, atol=1e-15)
    if training:  # and it is a different function from the op's
        assert not np.allclose(y, batch_channel_norm(x, bw, bb, w, b, rm, rv, **kw)[0])


def test_variance_about_batch_mean_variant_stores_the_batch_variance():
    x, bw, bb, w, b, rm, rv, _ = make((3, 4, 5), 2, seed=4)
    _, new_rm, new_rv = batch_channel_norm_variant(
        x, bw, bb, w, b, rm, rv, **hyper(2, True, 0.2), variance_about_batch_mean=True
    )
    np.testing.assert_allclose(new_rm, 0.8 * rm + 0.2 * x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(new_rv, 0.8 * rv + 0.2 * x.var(axis=(0, 2)), rtol=1e-14)
    _, _, op_rv = batch_channel_norm(x, bw, bb, w, b, rm, rv, **hyper(2, True, 0.2))
    assert np.all(op_rv > new_rv)  # about the old mean: the batch variance plus a squared offset


# --- numerics ------------------------------------------------------------------------------------


def test_a_micro_batch_of_one_value_per_channel_trains():
    """N = 1 and no spatial extent: batch_norm must refuse this, BCN is made for it."""
    x = np.array([[0.3, -1.2, 2.0, 0.7]])
    y, rm, rv = batch_channel_norm(x, None, None, None, None, np.zeros(4), np.ones(4), **hyper(2))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(rm)) and np.all(rv > 0)
    np.testing.assert_allclose(rm, 0.2 * x[0])
    np.testing.assert_allclose(rv, 0.8 + 0.2 * x[0] ** 2)


def test_float16_computes_in_float32_and_rounds_once():
    x, bw, bb, w, b, rm, rv, dy = make((4, 6, 10), 3, dtype=np.float16, seed=6)
    rm, rv = rm.astype(np.float32), rv.astype(np.float32)  # float32 state with float16 data
    kw = hyper(3)
    y, new_rm, new_rv, saved = batch_channel_norm_forward(x, bw, bb, w, b, rm, rv, **kw)
    assert y.dtype == np.float16 and new_rm.dtype == new_rv.dtype == np.float32
    assert saved.mean.dtype == saved.rstd.dtype == saved.group_rstd.dtype == np.float32
    up = [a.astype(np.float64) for a in (x, bw, bb, w, b, rm, rv)]
    y64, rm64, rv64 = batch_channel_norm(*up, **kw)
    np.testing.assert_allclose(y, y64, rtol=2**-10, atol=2**-14)  # one rounding to float16
    np.testing.assert_allclose(new_rm, rm64, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_rv, rv64, rtol=1e-6)
    grads = batch_channel_norm_backward(dy, saved)
    assert all(g.dtype == np.float16 for g in grads)
    *_, saved64 = batch_channel_norm_forward(*up, **kw)
    for g, g64 in zip(grads, batch_channel_norm_backward(dy.astype(np.float64), saved64)):
        np.testing.assert_allclose(g, g64, rtol=2**-10, atol=2**-14 * max(1, np.abs(g64).max()))
    # A float16 state comes back in float16, but y is normalized with the unrounded update.
    rm16, rv16 = rm.astype(np.float16), rv.astype(np.float16)
    y, new_rm, new_rv = batch_channel_norm(x, bw, bb, w, b, rm16, rv16, **kw)
    assert new_rm.dtype == new_rv.dtype == np.float16
    y64, rm64, _ = batch_channel_norm(*up[:5], rm16.astype(float), rv16.astype(float), **kw)
    np.testing.assert_allclose(y, y64, rtol=2**-10, atol=2**-14)
    np.testing.assert_allclose(new_rm, rm64, rtol=2**-10, atol=2**-14)


def test_large_offset_float32_in_the_channel_step():
    """h = x exactly (rstd = 1 in float32), so the channel step sees mean 1e4 and spread 1e-3."""
    rng = np.random.default_rng(7)
    x = (1e4 + 1e-3 * rng.normal(size=(2, 4, 8, 8))).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    kw = hyper(2, training=False, batch_eps=1e-30)
    y, *_, saved = batch_channel_norm_forward(x, None, None, None, None, rm, rv, **kw)
    dx = batch_channel_norm_backward(dy, saved)[0]
    up = [
        x.astype(np.float64),
        None,
        None,
        None,
        None,
        rm.astype(np.float64),
        rv.astype(np.float64),
    ]
    y64, *_, saved64 = batch_channel_norm_forward(*up, **kw)
    dx64 = batch_channel_norm_backward(dy.astype(np.float64), saved64)[0]
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, dx64, rtol=1e-3, atol=1e-4 * np.abs(dx64).max())


@pytest.mark.parametrize("training", [True, False])
def test_a_constant_input_gives_exactly_the_bias_and_finite_gradients(training):
    x = np.full((2, 4, 5), 7.25, dtype=np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    b = np.array([0.5, -2.0], np.float32)
    y, *_, saved = batch_channel_norm_forward(
        x, None, None, np.ones(2, np.float32), b, rm, rv, **hyper(2, training)
    )
    np.testing.assert_array_equal(y, np.broadcast_to(np.repeat(b, 2)[:, None], y.shape))
    dy = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
    dx, *_, db = batch_channel_norm_backward(dy, saved)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(db))


def test_nan_spreads_through_its_channel_in_training_and_its_group_in_eval():
    x, bw, bb, w, b, rm, rv, dy = make((3, 6, 5), 3)
    x[1, 2, 3] = np.nan  # channel 2, group 1
    y, new_rm, new_rv, saved = batch_channel_norm_forward(x, bw, bb, w, b, rm, rv, **hyper(3))
    # the NaN enters channel 2's estimates, hence group 1 of every sample
    assert np.isnan(new_rm[2]) and np.isnan(new_rv[2])
    assert np.all(np.isfinite(np.delete(new_rm, 2))) and np.all(np.isfinite(np.delete(new_rv, 2)))
    assert np.all(np.isnan(y[:, 2:4])) and np.all(np.isfinite(np.delete(y, [2, 3], axis=1)))
    dx, dbw, dbb, dw, db = batch_channel_norm_backward(dy, saved)
    assert np.all(np.isnan(dx[:, 2:4])) and np.all(np.isfinite(np.delete(dx, [2, 3], axis=1)))
    assert np.isnan(dw[1]) and np.all(np.isfinite(dw[[0, 2]])) and np.all(np.isfinite(db))

    y, *_, saved = batch_channel_norm_forward(x, bw, bb, w, b, rm, rv, **hyper(3, False))
    assert np.all(np.isnan(y[1, 2:4])) and np.sum(np.isnan(y)) == 10  # sample 1, group 1
    dx, *_ = batch_channel_norm_backward(dy, saved)
    assert np.all(np.isnan(dx[1, 2:4])) and np.sum(np.isnan(dx)) == 10


def test_an_empty_batch_leaves_the_estimates():
    x = np.empty((0, 4, 3))
    rm, rv = np.arange(4.0), np.ones(4)
    y, new_rm, new_rv, saved = batch_channel_norm_forward(
        x, np.ones(4), np.zeros(4), np.ones(2), np.zeros(2), rm, rv, **hyper(2)
    )
    assert y.shape == x.shape
    np.testing.assert_array_equal(new_rm, rm)
    np.testing.assert_array_equal(new_rv, rv)
    grads = batch_channel_norm_backward(np.empty_like(x), saved)
    assert grads[0].shape == x.shape and all(np.all(g == 0) for g in grads[1:])


# --- the contract: purity, array libraries, dtypes ---------------------------------------------


def test_calls_are_pure_and_state_comes_back_new():
    arrays = make((2, 6, 5), 3, dtype=np.float32)
    copies = [a.copy() for a in arrays]
    *inputs, dy = arrays
    y, new_rm, new_rv, saved = batch_channel_norm_forward(*inputs, **hyper(3))
    batch_channel_norm_backward(dy, saved)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)
    assert new_rm is not inputs[5] and not np.array_equal(new_rm, inputs[5])
    assert new_rv is not inputs[6] and not np.array_equal(new_rv, inputs[6])
    tensors = [torch.tensor(a) for a in inputs]
    batch_channel_norm(*tensors, **hyper(3))
    for t, a in zip(tensors, inputs):
        np.testing.assert_array_equal(t.numpy(), a)


def test_dtypes_of_state_and_parameters_are_kept():
    x, bw, bb, w, b, rm, rv, dy = make((2, 4, 3), 2, dtype=np.float32)
    _, new_rm, new_rv, saved = batch_channel_norm_forward(
        x, bw.astype(np.float64), bb, w, b.astype(np.float16), rm.astype(np.float64), rv, **hyper(2)
    )
    assert new_rm.dtype == np.float64 and new_rv.dtype == np.float32
    dx, dbw, dbb, dw, db = batch_channel_norm_backward(dy, saved)
    assert dx.dtype == np.float32 and dbw.dtype == np.float64 and db.dtype == np.float16


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.ones((4, 4), np.int64)}, TypeError, "x must be a real floating-point array"),
        ({"x": np.ones(4)}, ValueError, r"x must have at least 2 dimensions \(N, C, \*spatial\)"),
        ({"num_groups": None}, TypeError, "num_groups is required"),
        ({"num_groups": 3}, ValueError, "num_groups must divide the number of channels C = 4"),
        ({"num_groups": 0}, ValueError, "num_groups must be an integer >= 1"),
        ({"num_groups": 2.0}, TypeError, "num_groups must be an integer"),
        ({"bn_weight": np.ones(2)}, ValueError, r"bn_weight must have shape \(4,\)"),
        ({"bn_bias": np.ones(4, np.int32)}, TypeError, "bn_bias must be a real"),
        (
            {"weight": np.ones(4)},
            ValueError,
            r"weight must have shape \(2,\) \(one value per group",
        ),
        ({"bias": np.ones((1, 2))}, ValueError, r"bias must have shape \(2,\)"),
        ({"running_mean": None}, ValueError, "running_mean and running_var are required"),
        ({"running_var": None}, ValueError, "running_mean and running_var are required"),
        ({"running_var": np.ones(3)}, ValueError, r"running_var must have shape \(4,\)"),
        ({"momentum": None}, ValueError, "momentum is required when training"),
        ({"momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\]"),
        ({"momentum": "0.1"}, TypeError, "momentum must be a real number"),
        ({"training": 1}, TypeError, "training must be True or False"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"batch_eps": -1e-5}, ValueError, "batch_eps must be a finite number > 0"),
        ({"x": np.ones((2, 4, 0))}, ValueError, "every group must hold at least one value"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"out": np.empty((4, 4), np.float32)}, ValueError, "out must be an array of shape"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, match):
    args = {
        "x": np.ones((4, 4)),
        "bn_weight": None,
        "bn_bias": None,
        "weight": None,
        "bias": None,
        "running_mean": np.zeros(4),
        "running_var": np.ones(4),
        "num_groups": 2,
        "momentum": 0.1,
    } | kwargs
    arrays = [args.pop(k) for k in OPS["batch_channel_norm"].inputs]
    with pytest.raises(error, match=match):
        batch_channel_norm(*arrays, **args)


def test_momentum_is_not_needed_in_eval():
    x = np.random.default_rng(9).normal(size=(2, 4))
    y, rm, rv = batch_channel_norm(
        x, None, None, None, None, np.zeros(4), np.ones(4), num_groups=2, training=False
    )
    assert np.all(np.isfinite(y))


def test_backward_refuses_a_mismatched_gradient():
    x, bw, bb, w, b, rm, rv, _ = make((2, 4), 2)
    *_, saved = batch_channel_norm_forward(x, bw, bb, w, b, rm, rv, **hyper(2))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4\)"):
        batch_channel_norm_backward(np.ones((4, 2)), saved)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        batch_channel_norm_backward(np.ones((2, 4), np.float32), saved)
