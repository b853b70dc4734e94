"""BatchNorm's reference: finite differences in training and eval, PyTorch autograd, running
statistics over many steps against torch.nn.BatchNorm2d, numerics, purity, errors."""

import numpy as np
import pytest
from gradcheck import assert_gradients_match, numerical_vjp

from normref.norms.batch_norm import batch_norm, batch_norm_backward, batch_norm_forward

torch = pytest.importorskip(
    "torch", reason="PyTorch is the independent implementation checked against"
)
F = torch.nn.functional

# One shape per rank the brief names: (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W).
SHAPES = [(6, 3), (3, 2, 5), (2, 3, 3, 4), (2, 2, 2, 3, 2)]
# (training, running statistics given): training with and without tracking, eval with the running
# statistics, and eval without them (batch statistics, PyTorch's track_running_stats=False).
MODES = [(True, True), (True, False), (False, True), (False, False)]


def make(shape, affine=True, dtype=np.float64, seed=0):
    """x, weight, bias, running_mean, running_var (positive), dy; weight and bias None when not
    affine. Data off-centre and not of unit variance, so the normalization has work to do."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (0.7 + 1.8 * rng.normal(size=shape)).astype(dtype)
    w = (1 + 0.3 * rng.normal(size=c)).astype(dtype) if affine else None
    b = rng.normal(size=c).astype(dtype) if affine else None
    rm = rng.normal(size=c).astype(dtype)
    rv = (0.5 + rng.random(c)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, w, b, rm, rv, dy


def stats_for(mode, rm, rv):
    training, tracked = mode
    return (rm, rv) if tracked else (None, None)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"training={m[0]}-tracked={m[1]}")
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_finite_differences(shape, mode, affine):
    x, w, b, rm, rv, dy = make(shape, affine)
    rm, rv = stats_for(mode, rm, rv)
    training = mode[0]

    def f(x, w, b):
        return batch_norm(x, w, b, rm, rv, training=training, backend="reference")[0]

    *_, saved = batch_norm_forward(x, w, b, rm, rv, training=training, backend="reference")
    analytic = batch_norm_backward(dy, saved, backend="reference")
    assert_gradients_match(analytic, numerical_vjp(f, [x, w, b], dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 2e-5, 2e-5)]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"training={m[0]}-tracked={m[1]}")
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_pytorch_autograd(shape, mode, affine, dtype, rtol, atol):
    x, w, b, rm, rv, dy = make(shape, affine, dtype, seed=1)
    rm, rv = stats_for(mode, rm, rv)
    training, tracked = mode
    tx = torch.tensor(x, requires_grad=True)
    tw = None if w is None else torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    trm = None if rm is None else torch.tensor(rm)
    trv = None if rv is None else torch.tensor(rv)
    # F.batch_norm refuses eval mode without running statistics; its module then passes
    # training=True, which is what normref's training=False without statistics means.
    ty = F.batch_norm(tx, trm, trv, tw, tb, training=training or not tracked, eps=1e-5)
    ty.backward(torch.tensor(dy))

    y, new_rm, new_rv, count, saved = batch_norm_forward(
        x, w, b, rm, rv, training=training, backend="reference"
    )
    dx, dw, db = batch_norm_backward(dy, saved, backend="reference")
    assert y.dtype == dx.dtype == dtype and count is None
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol * 10)
    for ours, theirs in ((dw, tw), (db, tb)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=rtol, atol=atol * 10)
    # F.batch_norm updated trm, trv in place; normref returned the updates.
    for ours, theirs in ((new_rm, trm), (new_rv, trv)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert ours.dtype == dtype
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
def test_running_statistics_follow_torch_batchnorm2d_over_ten_steps(momentum):
    rng = np.random.default_rng(2)
    module = torch.nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(1 + 0.2 * rng.normal(size=3)))
        module.bias.copy_(torch.tensor(rng.normal(size=3)))
    w, b = module.weight.detach().numpy().copy(), module.bias.detach().numpy().copy()
    rm, rv, count = np.zeros(3), np.ones(3), 0
    for step in range(10):
        # batches of changing size, mean and spread, so every step moves the statistics
        x = rng.normal(loc=step - 4.0, scale=0.5 + step, size=(2 + step % 3, 3, 4, 5))
        module.train()
        y_t = module(torch.tensor(x)).detach().numpy()
        y, rm, rv, count = batch_norm(
            x, w, b, rm, rv, momentum=momentum, num_batches_tracked=count, backend="reference"
        )
        np.testing.assert_allclose(y, y_t, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(rm, module.running_mean.numpy(), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(rv, module.running_var.numpy(), rtol=1e-14, atol=1e-15)
        assert count == int(module.num_batches_tracked) == step + 1
    # eval mode uses what both have accumulated, and changes nothing
    module.eval()
    x = rng.normal(size=(3, 3, 4, 5))
    y, rm2, rv2, count2 = batch_norm(x, w, b, rm, rv, training=False, num_batches_tracked=count)
    np.testing.assert_allclose(y, module(torch.tensor(x)).detach().numpy(), rtol=1e-13, atol=1e-13)
    assert rm2 is rm and rv2 is rv and count2 == count == int(module.num_batches_tracked)


def test_running_statistics_use_the_unbiased_variance_and_torch_momentum():
    x = np.array([[1.0, 10.0], [3.0, 30.0], [8.0, 20.0]])
    _, rm, rv, count = batch_norm(x, running_mean=np.zeros(2), running_var=np.ones(2))
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=0))
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=0, ddof=1))
    assert count is None


def test_momentum_none_is_the_cumulative_average_of_the_batch_statistics():
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=i, size=(4, 2, 3)) for i in range(5)]
    rm, rv, count = np.full(2, 7.0), np.full(2, 7.0), 0  # the first batch replaces the init
    for x in batches:
        _, rm, rv, count = batch_norm(
            x, None, None, rm, rv, momentum=None, num_batches_tracked=count
        )
    np.testing.assert_allclose(rm, np.mean([x.mean(axis=(0, 2)) for x in batches], axis=0))
    np.testing.assert_allclose(rv, np.mean([x.var(axis=(0, 2), ddof=1) for x in batches], axis=0))
    assert count == 5


def test_calls_are_pure_and_state_comes_back_new():
    x, w, b, rm, rv, dy = make((4, 3, 5), dtype=np.float32)
    copies = [a.copy() for a in (x, w, b, rm, rv, dy)]
    y, new_rm, new_rv, count, saved = batch_norm_forward(x, w, b, rm, rv, num_batches_tracked=3)
    batch_norm_backward(dy, saved)
    for a, c in zip((x, w, b, rm, rv, dy), copies):
        np.testing.assert_array_equal(a, c)
    assert new_rm is not rm and new_rv is not rv and count == 4
    assert not np.array_equal(new_rm, rm) and not np.array_equal(new_rv, rv)
    # torch tensors, which F.batch_norm would update in place, are left alone too
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    batch_norm(torch.tensor(x), torch.tensor(w), torch.tensor(b), trm, trv)
    np.testing.assert_array_equal(trm.numpy(), rm)
    np.testing.assert_array_equal(trv.numpy(), rv)


def test_eval_mode_returns_the_state_untouched_and_its_gradient_ignores_the_batch():
    x, w, b, rm, rv, dy = make((5, 3, 2))
    y, new_rm, new_rv, count, saved = batch_norm_forward(
        x, w, b, rm, rv, training=False, num_batches_tracked=9
    )
    assert new_rm is rm and new_rv is rv and count == 9
    rstd = 1 / np.sqrt(rv + 1e-5)
    expected = (x - rm[:, None]) * rstd[:, None] * w[:, None] + b[:, None]
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-14)
    dx, dw, db = batch_norm_backward(dy, saved)
    np.testing.assert_allclose(dx, dy * (w * rstd)[:, None], rtol=1e-14)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2)), rtol=1e-14)


def test_strided_inputs_give_the_contiguous_result():
    x, w, b, rm, rv, dy = make((6, 3, 10))
    xs, dys = x[::2, :, 1::3], dy[::2, :, 1::3]  # views: every other sample, every third position
    for training in (True, False):
        y, *state, saved = batch_norm_forward(xs, w, b, rm, rv, training=training)
        y_c, *state_c, saved_c = batch_norm_forward(xs.copy(), w, b, rm, rv, training=training)
        np.testing.assert_array_equal(y, y_c)
        for a, c in zip(state, state_c):
            np.testing.assert_array_equal(a, c)
        grads = batch_norm_backward(dys, saved)
        for a, c in zip(grads, batch_norm_backward(dys.copy(), saved_c)):
            np.testing.assert_array_equal(a, c)


def test_eval_without_running_statistics_uses_the_batch_statistics():
    x, w, b, _, _, dy = make((4, 3, 5))
    y_eval, *_, s_eval = batch_norm_forward(x, w, b, training=False)
    y_train, *_, s_train = batch_norm_forward(x, w, b, training=True)
    np.testing.assert_array_equal(y_eval, y_train)
    for a, c in zip(batch_norm_backward(dy, s_eval), batch_norm_backward(dy, s_train)):
        np.testing.assert_array_equal(a, c)


def test_large_offset_float32_per_channel_over_batch_and_space():
    # mean 1e4, std 1e-3 in every channel, statistics over N*H*W = 4*16*16 = 1024 values
    rng = np.random.default_rng(4)
    shape = (4, 3, 16, 16)
    x = (1e4 + 1e-3 * rng.normal(size=shape)).astype(np.float32)
    w = (1 + 0.1 * rng.normal(size=3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    *out32, s32 = batch_norm_forward(x, w, b, rm, rv, backend="reference")
    g32 = batch_norm_backward(dy, s32, backend="reference")
    *out64, s64 = batch_norm_forward(
        *(a.astype(np.float64) for a in (x, w, b, rm, rv)), backend="reference"
    )
    g64 = batch_norm_backward(dy.astype(np.float64), s64, backend="reference")
    np.testing.assert_allclose(out32[0], out64[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out32[1], out64[1], rtol=1e-6)  # running mean: 1e3
    np.testing.assert_allclose(out32[2], out64[2], rtol=1e-6)  # running var: 0.9 + 1e-7
    for ours, exact in zip(g32, g64):
        scale = np.max(np.abs(exact))
        np.testing.assert_allclose(ours, exact, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("training", [True, False])
def test_constant_channels_give_exactly_the_bias_and_finite_gradients(training):
    x = np.full((3, 4, 5), 7.25, dtype=np.float32)
    x[:, 1] = -2.5
    b = np.arange(4, dtype=np.float32)
    rm = np.full(4, 7.25, np.float32)  # eval: the running mean equals the constant too
    rm[1] = -2.5
    rv = np.ones(4, np.float32)
    y, new_rm, new_rv, _, saved = batch_norm_forward(
        x, np.ones(4, np.float32), b, rm, rv, training=training
    )
    np.testing.assert_array_equal(y, np.broadcast_to(b[:, None], y.shape))
    if training:
        np.testing.assert_array_equal(new_rv, 0.9 * rv)  # unbiased variance 0
    dy = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    grads = batch_norm_backward(dy, saved)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_nan_propagates_to_its_channel_in_training_and_its_element_in_eval():
    x, w, b, rm, rv, dy = make((4, 3, 5))
    x[2, 1, 3] = np.nan
    y, new_rm, new_rv, _, saved = batch_norm_forward(x, w, b, rm, rv)
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isfinite(y[:, [0, 2]]))
    assert np.isnan(new_rm[1]) and np.isnan(new_rv[1])
    assert np.all(np.isfinite(new_rm[[0, 2]])) and np.all(np.isfinite(new_rv[[0, 2]]))
    dx, dw, db = batch_norm_backward(dy, saved)
    assert np.all(np.isnan(dx[:, 1])) and np.all(np.isfinite(dx[:, [0, 2]]))
    assert np.isnan(dw[1]) and np.all(np.isfinite(dw[[0, 2]])) and np.all(np.isfinite(db))

    y, *_, saved = batch_norm_forward(x, w, b, rm, rv, training=False)
    assert np.isnan(y[2, 1, 3]) and np.sum(np.isnan(y)) == 1
    dx, dw, db = batch_norm_backward(dy, saved)
    assert np.all(np.isfinite(dx)) and np.isnan(dw[1]) and np.all(np.isfinite(db))


def test_float16_computes_in_float32_and_rounds_once():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 3, 10)).astype(np.float16)
    w = (1 + 0.1 * rng.normal(size=3)).astype(np.float16)
    b = rng.normal(size=3).astype(np.float16)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)  # float32 state with float16 data
    y, new_rm, new_rv, _, saved = batch_norm_forward(x, w, b, rm, rv, backend="reference")
    assert y.dtype == np.float16 and saved.mean.dtype == saved.rstd.dtype == np.float32
    assert new_rm.dtype == new_rv.dtype == np.float32
    y64, rm64, rv64, _ = batch_norm(*(a.astype(np.float64) for a in (x, w, b, rm, rv)))
    # one rounding of a float32 result to float16: within one float16 ulp
    np.testing.assert_allclose(y, y64, rtol=2**-10, atol=2**-14)
    np.testing.assert_allclose(new_rm, rm64, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_rv, rv64, rtol=1e-6)
    dx, dw, db = batch_norm_backward(rng.normal(size=x.shape).astype(np.float16), saved)
    assert dx.dtype == dw.dtype == db.dtype == np.float16


def test_empty_batch_leaves_the_statistics_and_counts_the_step():
    x = np.empty((0, 3, 4))
    rm, rv = np.arange(3.0), np.ones(3)
    y, new_rm, new_rv, count, saved = batch_norm_forward(
        x, np.ones(3), np.zeros(3), rm, rv, num_batches_tracked=2
    )
    assert y.shape == x.shape and count == 3  # PyTorch's module counts it as well
    np.testing.assert_array_equal(new_rm, rm)
    np.testing.assert_array_equal(new_rv, rv)
    dx, dw, db = batch_norm_backward(np.empty_like(x), saved)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, 0.0)


def test_one_value_per_channel_is_refused_in_training_and_fine_in_eval():
    rm, rv = np.zeros(3), np.ones(3)
    for shape in [(1, 3), (1, 3, 1, 1)]:
        x = np.ones(shape)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            batch_norm(x, running_mean=rm, running_var=rv)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            batch_norm(x, training=False)  # batch statistics: no running statistics to use
        y, *_ = batch_norm(x, running_mean=rm, running_var=rv, training=False)
        assert np.all(np.isfinite(y))
    # one sample with several positions, or several samples of size 1: more than one value
    batch_norm(np.random.default_rng(7).normal(size=(1, 3, 2)))
    batch_norm(np.random.default_rng(7).normal(size=(2, 3)))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.ones((4, 3), np.int64)}, TypeError, "x must be a real floating-point array"),
        ({"x": np.ones(4)}, ValueError, r"x must have at least 2 dimensions \(N, C, \*spatial\)"),
        ({"weight": np.ones(4)}, ValueError, r"weight must have shape \(3,\)"),
        ({"bias": np.ones((1, 3))}, ValueError, r"bias must have shape \(3,\)"),
        ({"running_mean": np.zeros(2), "running_var": np.ones(2)}, ValueError, "running_mean"),
        ({"running_mean": np.zeros(3)}, ValueError, "must be given together"),
        ({"running_var": np.ones(3, np.int32)}, TypeError, "running_var must be a real"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": -1e-5}, ValueError, "eps must be a finite number > 0"),
        ({"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\]"),
        ({"momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\]"),
        ({"momentum": float("nan")}, ValueError, r"momentum must be in \[0, 1\]"),
        ({"momentum": [0.1]}, TypeError, "momentum must be a real number"),
        ({"training": "False"}, TypeError, "training must be True or False"),
        ({"num_batches_tracked": -1}, ValueError, "num_batches_tracked must be an integer >= 0"),
        ({"num_batches_tracked": 2.0}, TypeError, "num_batches_tracked must be an integer"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"out": np.empty((4, 3), np.float32)}, ValueError, "out must be an array of shape"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, match):
    args = {"x": np.ones((4, 3)), "weight": None, "bias": None} | kwargs
    x, w, b = args.pop("x"), args.pop("weight"), args.pop("bias")
    rm, rv = args.pop("running_mean", None), args.pop("running_var", None)
    with pytest.raises(error, match=match):
        batch_norm(x, w, b, rm, rv, **args)


def test_momentum_none_needs_the_count_only_when_the_statistics_are_updated():
    x = np.random.default_rng(8).normal(size=(4, 3))
    with pytest.raises(ValueError, match="momentum=None .* needs num_batches_tracked"):
        batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(3), momentum=None)
    batch_norm(x, momentum=None)  # nothing to update
    batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(3), momentum=None, training=False)


def test_a_refused_call_leaves_out_untouched():
    out = np.full((4, 3), 7.0)
    with pytest.raises(ValueError):
        batch_norm(np.ones((4, 3)), momentum=2.0, out=out)
    np.testing.assert_array_equal(out, 7.0)


def test_backward_refuses_a_mismatched_gradient():
    *_, saved = batch_norm_forward(np.random.default_rng(9).normal(size=(2, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\)"):
        batch_norm_backward(np.ones((3, 2)), saved)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        batch_norm_backward(np.ones((2, 3), np.float32), saved)
