"""Time LayerNorm and RMSNorm (forward, forward+backward) for every backend against PyTorch and
against a memory-bandwidth floor, in one run.

    python -m benchmarks [--quick] [--threads 2] [--json FILE] [--shape 64x768] [--offset 16]

Why it is built this way:

- The floor is a trivial parallel streaming Numba kernel that moves the same bytes as the op's
  minimum traffic (forward: read x, write y; backward: read dy and x, write dx). Absolute bandwidth
  drifts by 1.6x on a shared machine, so the floor is timed *interleaved* with the op (floor, op,
  floor, op, ...), and the floor fraction is a ratio of medians from the same rounds.
- Every implementation (Numba with and without out=, PyTorch) is timed that way in a group of its
  own, the groups taking turns. Alone, an allocating implementation's fresh pages would not slow
  the others; and each pays the same price for alternating with the floor, whose dirty cache lines
  slowed the call after it by up to 20%: PyTorch timed alone, against Numba alternating, read
  1.2x faster than it is. Groups follow each other with no pause: switching between Numba's and
  PyTorch's thread pools cost nothing here, while a pause of tens of ms lets the VM park its CPUs
  and made the next calls up to 8x slower.
- The array-API reference is timed after all of them, not in turns with them: its float64
  temporaries (gigabytes at the large shapes, given back to the system after each call) slowed
  the floor and the kernels sampled after it by up to 1.6x.
- Small shapes are timed as batches of calls, so that a sample lasts about a millisecond.
- Every array starts on a cache line, as PyTorch's CPU allocator places its tensors (64 bytes);
  NumPy's allocator promises 16, and which of the four offsets into a line an array happened to get
  moved the 64x768 LayerNorm forward by 8% from run to run (a vector load that straddles two lines
  costs two). `--offset 16` puts every array 16 bytes past a line, the worst case, instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from numba import njit, prange

import normref
from normref._buffers import LINE, on_line

SHAPES = [(8192, 1024), (2048, 4096), (512, 16384), (64, 768)]
OPS = ("layer_norm", "rms_norm")
PASSES = ("fwd", "fwd+bwd")


@njit(parallel=True)
def _stream1(x, y):
    """y = 2x: reads one array, writes one."""
    for i in prange(x.shape[0]):
        xi, yi = x[i], y[i]
        for j in range(x.shape[1]):
            yi[j] = xi[j] * 2


@njit(parallel=True)
def _stream2(x, z, y):
    """y = 2x + z: reads two arrays, writes one."""
    for i in prange(x.shape[0]):
        xi, zi, yi = x[i], z[i], y[i]
        for j in range(x.shape[1]):
            yi[j] = xi[j] * 2 + zi[j]


@dataclass
class Row:
    op: str
    shape: tuple[int, ...]
    pass_: str
    impl: str
    median_s: float
    gbps: float
    floor_gbps: float
    floor_fraction: float
    vs_torch: float | None


def _sample(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _calls_per_sample(fn):
    """How many calls make a sample of at least a millisecond: doubled until one does (a single
    first call, slower than the rest, made samples of a few calls of the 64x768 ops)."""
    fn()
    calls = 1
    while _sample(fn, calls) * calls < 1e-3:
        calls *= 2
    return calls


def _time_groups(groups, blocks=3):
    """Median seconds per call of every fn. `groups`: [(fns, rounds wanted, warm)]. Within a group
    the fns are sampled round-robin (floor, op, floor, op, ...), the order rotating by one each
    round: the fn sampled right after the floor pays for the floor's dirty cache lines (a 20%
    slowdown of BatchNorm at 32x64x56x56), so no fn may always be the one. The groups take turns
    in `blocks` blocks so that slow drift of the machine reaches all of them, each turn starting
    with an untimed call of every fn when `warm` (the previous group left other data in the
    caches)."""
    calls = {name: _calls_per_sample(fn) for fns, _, _ in groups for name, fn in fns.items()}
    samples = {name: [] for name in calls}
    for block in range(blocks):
        for fns, wanted, warm in groups:
            turns = wanted // blocks + (block < wanted % blocks)
            if warm and turns:
                for fn in fns.values():
                    fn()
            order = list(fns.items())
            for turn in range(turns):
                start = (block + turn) % len(order)
                for name, fn in order[start:] + order[:start]:
                    samples[name].append(_sample(fn, calls[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


def _time_by_runtime(floor_fn, impls, reference_fns, rounds, reference_rounds):
    """(times, floors): the median seconds per call of every fn in `impls` and in `reference_fns`,
    and of the floor sampled alternately with each impl. Each impl forms a group with the floor,
    warmed at every turn; the reference's fns are timed after them all, in `reference_rounds`:
    their float64 temporaries (gigabytes at the large shapes, given back to the system after each
    call) slowed the floor and the kernels sampled after them by up to 1.6x."""
    groups = [({("floor", name): floor_fn, name: fn}, rounds, True) for name, fn in impls.items()]
    times = _time_groups(groups)
    floors = {name: times.pop(("floor", name)) for name in impls}
    if reference_fns:
        times |= _time_groups([(reference_fns, reference_rounds, False)], blocks=1)
    return times, floors


def _inputs(shape, seed=0, offset=0):
    """x and dy of `shape`; weight and bias with one entry per x[:, i] (features or channels); each
    starting `offset` bytes past a cache line."""
    rng = np.random.default_rng(seed)
    n = shape[1]
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    w = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    b = (0.1 * rng.standard_normal(n)).astype(np.float32)
    return tuple(_placed(a, offset) for a in (x, dy, w, b))


def _placed(a, offset):
    """A copy of `a` whose data starts `offset` bytes past a cache line."""
    placed = on_line(a.shape, a.dtype, offset)
    placed[...] = a
    return placed


def _empty_like(a):
    """An array like `a`, its data as far past a cache line as a's."""
    return on_line(a.shape, a.dtype, a.ctypes.data % LINE)


def _normref_fns(op, pass_, x, dy, w, b, backend, out):
    """The public API call for one cell of the table; out=True passes preallocated buffers."""
    y = _empty_like(x) if out else None
    dx = _empty_like(x) if out else None
    if op == "layer_norm":
        fwd = normref.layer_norm_forward
        bwd = normref.layer_norm_backward
        args = (x, w, b)
        kw = {"eps": 1e-5}
    else:
        fwd = normref.rms_norm_forward
        bwd = normref.rms_norm_backward
        args = (x, w)
        kw = {"eps": 1e-6}
    if pass_ == "fwd":
        return lambda: fwd(*args, **kw, out=y, backend=backend)

    def fwd_bwd():
        saved = fwd(*args, **kw, out=y, backend=backend)[1]
        bwd(dy, saved, out=dx, backend=backend)

    return fwd_bwd


def _torch_pass(torch, pass_, call, arrays, dy, requires_grad=None):
    """PyTorch's side of one cell: call(*tensors of arrays) without autograd for "fwd"; for
    "fwd+bwd", on leaf copies (those flagged in requires_grad, all by default, track gradients)
    followed by backward from dy, the gradients dropped after each call."""
    tensors = [torch.from_numpy(a) for a in arrays]
    if pass_ == "fwd":

        def fwd():
            with torch.no_grad():
                call(*tensors)

        return fwd
    flags = requires_grad or [True] * len(tensors)
    leaves = [t.clone().requires_grad_(flag) for t, flag in zip(tensors, flags)]
    tdy = torch.from_numpy(dy)

    def fwd_bwd():
        call(*leaves).backward(tdy)
        for leaf in leaves:
            leaf.grad = None

    return fwd_bwd


def _torch_fn(torch, op, pass_, x, dy, w, b):
    F = torch.nn.functional
    n = x.shape[1]

    def call(xx, ww, bb):
        if op == "layer_norm":
            return F.layer_norm(xx, (n,), ww, bb, 1e-5)
        return F.rms_norm(xx, (n,), ww, 1e-6)

    return _torch_pass(torch, pass_, call, (x, w, b), dy)


def _floor(pass_, x, dy, y=None, dx=None):
    """The bandwidth floor for a pass on 2-D x and dy: (a call that streams its bytes, how many
    bytes). y, dx: the buffers it writes (fresh ones by default)."""
    y = _empty_like(x) if y is None else y
    dx = _empty_like(x) if dx is None else dx
    if pass_ == "fwd":
        return (lambda: _stream1(x, y)), 2 * x.nbytes
    return (lambda: (_stream1(x, y), _stream2(dy, x, dx))), 5 * x.nbytes


def _bytes(op, pass_, shape, itemsize=4):
    """The op's minimum memory traffic: every input read once, every output written once."""
    rows, n = shape
    params = 2 if op == "layer_norm" else 1
    arrays, vectors = 2, params  # forward: x in, y out; weight (and bias) in
    if pass_ == "fwd+bwd":
        arrays += 3  # backward: dy and x in, dx out
        vectors += 1 + params  # weight in; dweight (and dbias) out
    return itemsize * (arrays * rows * n + vectors * n)


def _threads(threads, with_torch=True):
    """Set Numba's and PyTorch's thread counts; returns torch, or None without it (or with_torch
    off)."""
    import numba

    numba.set_num_threads(threads)
    if not with_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _rows(op, shape, pass_, times, floors, nbytes, floor_bytes):
    """One cell's table rows from _time_by_runtime's medians: every impl's time, GB/s of nbytes,
    fraction of the floor sampled alternately with it (the reference's: of the median floor), and
    PyTorch time / its time."""
    rows, median_floor = [], statistics.median(floors.values())
    for impl, t in times.items():
        floor_gbps = floor_bytes / floors.get(impl, median_floor) / 1e9
        gbps = nbytes / t / 1e9
        vs = times["torch"] / t if "torch" in times else None
        rows.append(Row(op, shape, pass_, impl, t, gbps, floor_gbps, gbps / floor_gbps, vs))
    return rows


def bench(shapes, ops, threads, rounds, reference_rounds, with_torch=True, offset=0):
    torch = _threads(threads, with_torch)
    results = []
    for shape in shapes:
        x, dy, w, b = _inputs(shape, offset=offset)
        for op in ops:
            for pass_ in PASSES:
                floor_fn, floor_bytes = _floor(pass_, x, dy)
                impls = {"numba (out=)": _normref_fns(op, pass_, x, dy, w, b, "numba", out=True)}
                if op == "layer_norm":
                    impls["numba"] = _normref_fns(op, pass_, x, dy, w, b, "numba", out=False)
                if torch is not None:
                    impls["torch"] = _torch_fn(torch, op, pass_, x, dy, w, b)
                reference = {"reference": _normref_fns(op, pass_, x, dy, w, b, "reference", False)}
                times, floors = _time_by_runtime(
                    floor_fn, impls, reference, rounds, reference_rounds
                )
                nbytes = _bytes(op, pass_, shape)
                results += _rows(op, shape, pass_, times, floors, nbytes, floor_bytes)
    return results


CAPTION = (
    "GB/s: the op's minimum traffic / median time. floor: a streaming Numba kernel moving the "
    "same bytes, timed interleaved in this run. vs torch: PyTorch time / this time."
)


def print_table(results, title, caption=CAPTION):
    """One rich table of benchmark rows (any family's), a section per (op, shape, pass)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for col in ("op", "shape", "pass", "impl", "median", "GB/s", "of floor", "vs torch"):
        justify = "left" if col in ("op", "pass", "impl") else "right"
        table.add_column(col, justify=justify, no_wrap=True)
    previous = None
    for r in results:
        key = (r.op, r.shape, r.pass_)
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        ms = r.median_s * 1e3
        table.add_row(
            r.op,
            "x".join(map(str, r.shape)),
            r.pass_,
            r.impl,
            f"{ms * 1e3:.1f} µs" if ms < 0.1 else f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms",
            f"{r.gbps:.1f}",
            f"{100 * r.floor_fraction:.0f}%",
            "" if r.vs_torch is None else f"{r.vs_torch:.2f}x",
        )
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=130)
    console.print(table)


def make_parser(prog, description):
    """The runners' shared command line: --quick, --threads, --json, --no-torch."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="Numba and PyTorch threads")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    return parser


def round_counts(args):
    """(rounds, reference rounds) for the parsed command line: few for --quick."""
    return (5, 1) if args.quick else (21, 3)


def report(results, title, caption, json_file=None):
    """Print the table; with json_file, also write the rows there as JSON."""
    print_table(results, title, caption)
    if json_file:
        rows = [{**asdict(r), "pass": r.pass_} for r in results]
        for row in rows:
            del row["pass_"]
        Path(json_file).write_text(json.dumps(rows, indent=1) + "\n")


def _shape(text):
    """'64x768' -> (64, 768)."""
    try:
        return tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape like 64x768, got {text!r}") from None


def main(argv=None):
    parser = make_parser("python -m benchmarks", __doc__.split(".")[0])
    parser.add_argument(
        "--shape", action="append", type=_shape, help="only this shape, e.g. 64x768 (repeatable)"
    )
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        choices=range(0, LINE, 4),
        metavar="BYTES",
        help="place every array this far past a cache line (default 0; NumPy guarantees 16)",
    )
    args = parser.parse_args(argv)
    shapes = args.shape or SHAPES
    results = bench(shapes, OPS, args.threads, *round_counts(args), not args.no_torch, args.offset)
    title = f"normref norms, float32, {args.threads} threads (Numba and PyTorch)"
    if args.offset:
        title += f", arrays {args.offset} bytes past a cache line"
    report(results, title, CAPTION, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
