"""The fused Numba optimizer kernels (normref/kernels/numba/optim.py) against the reference.

The kernels compute the reference `_math` expression in the same order with the same float32
coefficients, and NumPy's float32 sqrt and division are IEEE-rounded like LLVM's, so every
comparison here is bit for bit (NaNs compared as NaN: their payloads are not part of the contract).
`update_(backend="numba")` and `update_(backend="reference")` run from identical copies.
"""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import normref.optim as optim  # noqa: E402
from normref.kernels.numba import optim as kernels  # noqa: E402

# Each a fresh optimizer; together they take every branch of the three kernels.
CONFIGS = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd_momentum_dampening_l2": lambda: optim.sgd(
        0.05, momentum=0.9, dampening=0.25, weight_decay=1e-2
    ),
    "sgd_nesterov_maximize": lambda: optim.sgd(
        0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, maximize=True
    ),
    # momentum 0 at the first step (the buffer stays zeros), then on; decay every other step
    "sgd_scheduled": lambda: optim.sgd(
        lambda s: 0.1 / (1 + s),
        momentum=lambda s: 0.0 if s == 0 else 0.8,
        weight_decay=lambda s: 0.0 if s % 2 else 1e-2,
    ),
    "adam": lambda: optim.adam(1e-2),
    "adam_l2_amsgrad_maximize": lambda: optim.adam(
        1e-2, weight_decay=0.1, amsgrad=True, maximize=True
    ),
    "adam_lerp_high_weight": lambda: optim.adam(1e-2, betas=(0.3, 0.9)),  # 1 - b1 >= 0.5
    "adam_b1_zero": lambda: optim.adam(1e-2, betas=(0.0, 0.99)),  # lerp weight 1: mu = g
    "adamw": lambda: optim.adamw(1e-2),
    "adamw_amsgrad_scheduled": lambda: optim.adamw(
        lambda s: 1e-2 * 0.7**s,
        betas=(lambda s: 0.9 - 0.1 * s, 0.999),
        weight_decay=lambda s: 0.1 * s,  # 0 at the first step: no decay then
        amsgrad=True,
    ),
    "lion": lambda: optim.lion(1e-3),
    "lion_decay_scheduled": lambda: optim.lion(lambda s: 1e-3 * (s + 1), weight_decay=0.5),
}
DTYPES = (np.float32, np.float16)
# sizes off powers of two, odd, a scalar and one long enough for every thread to get a share
SHAPES = {"scalar": (), "one": (1,), "odd": (7,), "matrix": (33, 5), "deep": (3, 1, 17)}
SHAPES |= {"long": (1001,), "block": (257, 3)}
STEPS = 4


def assert_same_bits(got, want, what):
    """Equal bit for bit, except that a NaN need only be a NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(got)
    assert np.array_equal(nan, np.isnan(want)), f"{what}: NaNs at different places"
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    bad = (got.view(bits) != want.view(bits)) & ~nan
    if bad.any():
        at = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} elements differ; at {at}: {got[at]!r} vs "
            f"{want[at]!r}"
        )


def assert_same_state(got, want, what):
    assert int(got.step) == int(want.step), what
    for field in got._fields[1:]:
        g, w = getattr(got, field), getattr(want, field)
        assert (g is None) == (w is None), f"{what}: state.{field}"
        if g is not None:
            for key in w:
                assert_same_bits(g[key], w[key], f"{what}: state.{field}[{key!r}]")


def _copy(tree):
    return {k: v.copy() for k, v in tree.items()}


def _copy_state(state):
    fields = [None if f is None else _copy(f) for f in state[1:]]
    return type(state)(state.step.copy(), *fields)


def run_both(opt, params, grads_per_step):
    """(params, state) after the steps on the Numba kernels and on the reference, from copies,
    compared bit for bit after every step."""
    fast, ref = _copy(params), _copy(params)
    fast_state, ref_state = opt.init(fast), opt.init(ref)
    for i, grads in enumerate(grads_per_step):
        opt.update_(fast, grads, fast_state, backend="numba")
        opt.update_(ref, grads, ref_state, backend="reference")
        for key in ref:
            assert_same_bits(fast[key], ref[key], f"step {i}: params[{key!r}]")
        assert_same_state(fast_state, ref_state, f"step {i}")
    return fast, fast_state


def _random(rng, shape, dtype, scale=1.0):
    return np.asarray(scale * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("loop", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("config", CONFIGS)
def test_matches_the_reference_bit_for_bit(config, dtype, loop, monkeypatch):
    # every tensor through one loop: PARALLEL_MIN elements or more go to the parallel one
    monkeypatch.setattr(kernels, "PARALLEL_MIN", 0 if loop == "parallel" else 2**62)
    rng = np.random.default_rng([len(config), np.dtype(dtype).itemsize])
    params = {k: _random(rng, s, dtype) for k, s in SHAPES.items()}
    steps = [{k: _random(rng, s, dtype, 0.1) for k, s in SHAPES.items()} for _ in range(STEPS)]
    run_both(CONFIGS[config](), params, steps)


def test_many_tensors_of_random_shapes():
    rng = np.random.default_rng(7)
    shapes = {f"t{i}": tuple(rng.integers(1, 12, size=rng.integers(0, 4))) for i in range(40)}
    params = {k: _random(rng, s, np.float32) for k, s in shapes.items()}
    steps = [{k: _random(rng, s, np.float32) for k, s in shapes.items()} for _ in range(3)]
    for config in ("sgd_nesterov_maximize", "adamw_amsgrad_scheduled", "lion_decay_scheduled"):
        run_both(CONFIGS[config](), params, steps)


def test_large_tensors_next_to_small_ones():
    """The default split: tensors of PARALLEL_MIN elements and more run the parallel loop."""
    rng = np.random.default_rng(9)
    sizes = {"small": 5, "edge": kernels.PARALLEL_MIN - 1, "large": kernels.PARALLEL_MIN + 3}
    params = {k: _random(rng, n, np.float32) for k, n in sizes.items()}
    steps = [{k: _random(rng, n, np.float32) for k, n in sizes.items()} for _ in range(2)]
    run_both(CONFIGS["adamw_amsgrad_scheduled"](), params, steps)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize(
    "config", ["sgd_momentum_dampening_l2", "adam_l2_amsgrad_maximize", "adamw", "lion"]
)
def test_zero_inf_and_nan_grads(config, dtype):
    """Zero grads (every step, and at the first: Adam's 0 / eps), infinities and NaNs: the same
    bits as the reference, and a NaN grad makes exactly its own element of p NaN."""
    rng = np.random.default_rng(3)
    n = 301
    params = {"w": _random(rng, n, dtype), "z": np.zeros(n, dtype)}
    steps = []
    for _ in range(3):
        g = _random(rng, n, dtype)
        g[::7] = 0
        g[5], g[6] = np.inf, -np.inf
        g[10::50] = np.nan
        steps.append({"w": g, "z": np.zeros(n, dtype)})
    fast, _ = run_both(CONFIGS[config](), params, steps)
    nan = np.isnan(fast["w"])
    assert nan[10::50].all()
    assert np.isfinite(fast["z"]).all()


def test_non_contiguous_params_are_updated_in_place():
    """Strided views, Fortran order and a transposed grad are handled (copied to C order, updated,
    copied back): the same bits as the reference, written through the views into their bases."""
    rng = np.random.default_rng(11)
    for dtype in DTYPES:
        base = _random(rng, (9, 14), dtype)
        bases = {"fast": base.copy(), "ref": base.copy()}
        fortran = np.asfortranarray(_random(rng, (5, 6), dtype))

        def views(b, fortran=fortran):
            return {"strided": b[::2, 1::3], "column": b[:, 0], "fortran": fortran.copy(order="F")}

        fast, ref = views(bases["fast"]), views(bases["ref"])
        opt = optim.adamw(1e-2, amsgrad=True)
        fast_state, ref_state = opt.init(fast), opt.init(ref)
        for _ in range(2):
            grads = {k: _random(rng, v.shape[::-1], dtype).T for k, v in fast.items()}
            opt.update_(fast, grads, fast_state, backend="numba")
            opt.update_(ref, grads, ref_state, backend="reference")
        for key in ref:
            assert_same_bits(fast[key], ref[key], key)
        assert_same_state(fast_state, ref_state, "state")
        assert_same_bits(bases["fast"], bases["ref"], "the strided views' base")
        assert not np.array_equal(bases["fast"], base)


def test_read_only_grads_and_big_endian_arrays():
    """A read-only grad is only read. Big-endian arrays never reach the kernels through update_
    (dispatch names their dtype '>f4'), but the kernels take them: copied like strided views."""
    rng = np.random.default_rng(19)
    g = _random(rng, 40, np.float32)
    g.flags.writeable = False
    run_both(CONFIGS["adamw"](), {"w": _random(rng, 40, np.float32)}, [{"w": g}] * 2)
    opt = optim.lion(1e-2, weight_decay=0.1)
    p = _random(rng, 40, np.float32)
    big, ref = p.astype(">f4"), [p.copy()]
    mu, ref_state = np.zeros(40, ">f4"), opt.init(ref)
    kernels.lion_update_(big, g.astype(">f4"), mu.astype(np.float32), opt._coefficients(0))
    opt.update_(ref, [g], ref_state, backend="reference")
    assert big.dtype == np.dtype(">f4")
    assert_same_bits(big.astype(np.float32), ref[0], "big-endian params")


def test_mixed_dtypes_go_each_to_its_own_path():
    """auto: float32 and float16 params run the kernels, float64 and empty ones the reference,
    in one call; an explicit backend="numba" refuses the float64 one before writing anything."""
    rng = np.random.default_rng(5)
    params = {
        "f32": _random(rng, 10, np.float32),
        "f16": _random(rng, 10, np.float16),
        "f64": _random(rng, 10, np.float64),
        "empty": np.zeros((0, 3), np.float32),
    }
    grads = {k: _random(rng, v.shape, v.dtype) for k, v in params.items()}
    opt = optim.adam(1e-2)
    fast, ref = _copy(params), _copy(params)
    fast_state, ref_state = opt.init(fast), opt.init(ref)
    opt.update_(fast, grads, fast_state)  # auto
    opt.update_(ref, grads, ref_state, backend="reference")
    for key in ref:
        assert_same_bits(fast[key], ref[key], key)
    before, before_state = _copy(fast), _copy_state(fast_state)
    with pytest.raises(TypeError, match="backend='numba' takes float32, float16.*got float64"):
        opt.update_(fast, grads, fast_state, backend="numba")
    for key in before:
        assert_same_bits(fast[key], before[key], key)
    assert_same_state(fast_state, before_state, "refused call")


@pytest.mark.parametrize("config", ["sgd_nesterov_maximize", "adam_l2_amsgrad_maximize", "lion"])
def test_bfloat16_params_with_float32_state(config):
    """bfloat16 params (ml_dtypes): the kernels against the float32 reference on the same values,
    rounded once per step to bfloat16 (the reference's 16-bit semantics). The public update_ on
    bfloat16 params is tested in tests/optim."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(13)
    opt = CONFIGS[config]()
    p = _random(rng, 517, bf16)
    p32 = [p.astype(np.float32)]  # the reference's param: the bfloat16 values, in float32
    state, ref_state = opt.init(p32), opt.init(p32)  # float32 state, as init gives 16-bit params
    update = getattr(kernels, f"{opt.kernel}_update_")
    for step in range(STEPS):
        g = _random(rng, 517, bf16)
        g[3] = np.nan
        update(p, g, *(None if s is None else s[0] for s in state[1:]), opt._coefficients(step))
        opt.update_(p32, [g.astype(np.float32)], ref_state, backend="reference")
        rounded = p32[0].astype(bf16)  # the one rounding of the step
        assert_same_bits(p, rounded, f"step {step}: params")
        for field in state._fields[1:]:
            if getattr(state, field) is not None:
                assert_same_bits(getattr(state, field)[0], getattr(ref_state, field)[0], field)
        p32[0][...] = rounded.astype(np.float32)


# ---- the bit conversions ------------------------------------------------------------------------


def test_kernels_refuse_mismatched_arrays():
    k = optim.lion()._coefficients(0)
    with pytest.raises(ValueError, match="expected 4 float32 values, got 3"):
        kernels.lion_update_(np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(3), k)


def test_compiled_once_per_storage_type():
    """Options are run-time arguments: each loop compiles once per storage type (float32, the
    bits of 16-bit params), plus once more only for a read-only grad. (CI compiles from scratch;
    a specialisation per option would multiply its time.)"""
    for kernel in (loop for pair in kernels._LOOPS.values() for loop in pair):
        storage = {sig[0].dtype for sig in kernel.signatures}
        explained = {(sig[0].dtype, sig[1].mutable) for sig in kernel.signatures}
        assert storage <= {numba.float32, numba.uint16}, kernel.signatures
        assert len(explained) == len(kernel.signatures), kernel.signatures
