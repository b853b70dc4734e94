"""Each schedule against torch.optim.lr_scheduler's values over a range of steps (value k = the lr
PyTorch's optimizer uses for its k-th step, 0-based), plus the closed forms and argument errors."""

import math

import pytest

from normref.optim import schedules

torch = pytest.importorskip("torch", reason="torch.optim.lr_scheduler is checked against")
lr_scheduler = torch.optim.lr_scheduler

BASE = 0.1


def torch_values(make_scheduler, steps, base=BASE, optimizer="sgd", key="lr"):
    """The hyperparameter value each of the first `steps` optimizer steps uses."""
    param = torch.zeros(1, requires_grad=True)
    if optimizer == "sgd":
        opt = torch.optim.SGD([param], lr=base, momentum=0.9)
    else:
        opt = torch.optim.Adam([param], lr=base)
    scheduler = make_scheduler(opt)
    values = []
    for _ in range(steps):
        group = opt.param_groups[0]
        values.append(group["betas"][0] if key == "beta1" else group[key])
        opt.step()
        scheduler.step()
    return values


def assert_values(schedule, expected, rtol=1e-13, atol=1e-16):
    got = [schedule(t) for t in range(len(expected))]
    for t, (a, b) in enumerate(zip(got, expected)):
        assert a == pytest.approx(b, rel=rtol, abs=atol), f"step {t}: {a} != {b}"


def test_constant():
    assert_values(
        schedules.constant(BASE),
        torch_values(lambda o: lr_scheduler.LambdaLR(o, lambda t: 1.0), 20),
    )


def test_step_decay_equals_step_lr():
    expected = torch_values(lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5), 40)
    assert_values(schedules.step_decay(BASE, 7, gamma=0.5), expected)
    assert schedules.step_decay(BASE, 7)(7) == pytest.approx(BASE * 0.1)  # default gamma


def test_exponential_decay_equals_exponential_lr():
    expected = torch_values(lambda o: lr_scheduler.ExponentialLR(o, gamma=0.93), 60)
    assert_values(schedules.exponential_decay(BASE, 0.93), expected, rtol=1e-12)


@pytest.mark.parametrize("initial, final", [(1e-3, 0.0), (2e-2, 1e-3)])
def test_cosine_with_warmup_equals_linear_then_cosine_annealing(initial, final):
    warmup, total = 8, 50

    def make(o):
        return lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, start_factor=initial / BASE, total_iters=warmup),
                lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=final),
            ],
            milestones=[warmup],
        )

    schedule = schedules.cosine_with_warmup(BASE, warmup, total, initial=initial, final=final)
    assert_values(schedule, torch_values(make, total), rtol=1e-12, atol=1e-15)
    assert schedule(total) == schedule(10 * total) == final  # PyTorch's cosine would rise again


def test_cosine_with_warmup_from_zero_matches_its_closed_form():
    """LinearLR cannot start at 0 (start_factor > 0): the transformers formula instead."""
    warmup, total = 10, 100
    schedule = schedules.cosine_with_warmup(3e-4, warmup, total)
    for t in range(total):  # past the end transformers' cosine rises again; this one stays at 0
        if t < warmup:
            expected = 3e-4 * t / warmup
        else:
            progress = (t - warmup) / (total - warmup)
            expected = 3e-4 * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        assert schedule(t) == pytest.approx(expected, rel=1e-14, abs=1e-20)


@pytest.mark.parametrize("initial, final", [(1e-3, 0.0), (5e-2, 2e-2)])
def test_linear_with_warmup_equals_two_linear_schedulers(initial, final):
    warmup, total = 5, 30

    def make(o):
        return lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, start_factor=initial / BASE, total_iters=warmup),
                lr_scheduler.LinearLR(
                    o, start_factor=1.0, end_factor=final / BASE, total_iters=total - warmup
                ),
            ],
            milestones=[warmup],
        )

    schedule = schedules.linear_with_warmup(BASE, warmup, total, initial=initial, final=final)
    assert_values(schedule, torch_values(make, total + 5), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("total", [100, 37, 7])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_equals_one_cycle_lr(total, anneal, three_phase):
    kw = dict(anneal_strategy=anneal, three_phase=three_phase)

    def make(o):
        return lr_scheduler.OneCycleLR(o, BASE, total_steps=total, **kw)

    lr = schedules.one_cycle(BASE, total, anneal=anneal, three_phase=three_phase)
    momentum = schedules.one_cycle_momentum(total, anneal=anneal, three_phase=three_phase)
    assert_values(lr, torch_values(make, total), rtol=0, atol=0)  # bit for bit
    assert_values(momentum, torch_values(make, total, key="momentum"), rtol=0, atol=0)
    assert_values(
        momentum, torch_values(make, total, optimizer="adam", key="beta1"), rtol=0, atol=0
    )
    assert lr(total + 10) == lr(total - 1)  # holds its last value; PyTorch raises past the end


def test_one_cycle_defaults_are_torchs():
    schedule = schedules.one_cycle(1.0, 1000)
    assert schedule(0) == pytest.approx(1 / 25)  # div_factor 25
    assert schedule(299) == 1.0  # pct_start 0.3: the peak at step 0.3 * 1000 - 1
    assert schedule(999) == pytest.approx(1 / 25 / 1e4)  # final_div_factor 1e4
    assert schedules.one_cycle_momentum(1000)(299) == 0.85


def test_the_first_update_reads_step_0():
    """The convention every optimizer uses: schedule(step) with step = updates already taken."""
    import numpy as np

    from normref import optim

    lr = schedules.linear_with_warmup(1.0, 2, 4)  # 0, 0.5, 1, 0.5, 0
    opt = optim.sgd(lr)
    p = [np.array([0.0])]
    state = opt.init(p)
    moves = []
    for _ in range(5):
        new, state = opt.update(p, [np.array([-1.0])], state)
        moves.append(float(new[0][0] - p[0][0]))
        p = new
    assert moves == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_schedules_are_pure_and_say_what_they_are():
    s = schedules.cosine_with_warmup(1e-3, 10, 100)
    assert s(42) == s(42)
    assert repr(s) == (
        "cosine_with_warmup(peak=0.001, warmup_steps=10, total_steps=100, initial=0.0, final=0.0)"
    )
    assert isinstance(schedules.constant(1)(3), float)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: schedules.constant(float("inf")), ValueError, "constant: value must be finite"),
        (
            lambda: schedules.step_decay(0.1, 0),
            ValueError,
            "step_decay: step_size must be an integer >= 1, got 0",
        ),
        (
            lambda: schedules.step_decay(0.1, 2.5),
            TypeError,
            "step_decay: step_size must be an integer",
        ),
        (
            lambda: schedules.exponential_decay(0.1, -0.5),
            ValueError,
            "exponential_decay: gamma must be a finite number >= 0",
        ),
        (
            lambda: schedules.cosine_with_warmup(0.1, 10, 10),
            ValueError,
            "total_steps must be > warmup_steps",
        ),
        (
            lambda: schedules.linear_with_warmup(0.1, -1, 10),
            ValueError,
            "warmup_steps must be an integer >= 0",
        ),
        (
            lambda: schedules.one_cycle(0.1, 100, pct_start=1.5),
            ValueError,
            r"one_cycle: pct_start must be in \[0, 1\]",
        ),
        (
            lambda: schedules.one_cycle(0.1, 100, anneal="exp"),
            ValueError,
            "anneal must be 'cos' or 'linear'",
        ),
        (
            lambda: schedules.one_cycle(0.1, 0),
            ValueError,
            "one_cycle: total_steps must be an integer >= 1",
        ),
        (
            lambda: schedules.constant(0.1)(-1),
            ValueError,
            "constant: step must be an integer >= 0, got -1",
        ),
        (lambda: schedules.constant(0.1)(1.5), TypeError, "constant: step must be an integer"),
    ],
)
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()
