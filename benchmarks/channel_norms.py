"""Time BatchNorm (training) and GroupNorm, forward and forward+backward, for Numba and the
array-API reference against PyTorch CPU and a memory-bandwidth floor, in one run.

    python -m benchmarks.channel_norms [--quick] [--threads 2] [--json FILE] [--no-torch]

Built on run.py's machinery, for the same reasons (see its docstring): the floor is a streaming
Numba kernel moving the op's minimum traffic (forward: read x, write y; backward: read dy and x,
write dx), timed interleaved with the Numba calls in the same rounds, and each runtime (Numba,
PyTorch) is visited in its own group after a pause so that the other's spinning threads are
asleep. Inputs are NCHW float32; BatchNorm trains with running statistics (both libraries update
them: normref returns new ones, PyTorch writes in place); GroupNorm uses 32 groups.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):  # `python benchmarks/channel_norms.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import normref
from benchmarks.run import CAPTION, PASSES, _stream1, _stream2, _time_groups, print_table

SHAPES = [(32, 64, 56, 56), (8, 256, 28, 28)]
OPS = ("batch_norm", "group_norm")
GROUPS = 32


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


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    w = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)
    return x, dy, w, b


def _normref_fn(op, pass_, x, dy, w, b, backend, out):
    """The public API call for one cell of the table; out=True passes preallocated buffers."""
    y = np.empty_like(x) if out else None
    dx = np.empty_like(x) if out else None
    c = x.shape[1]
    if op == "batch_norm":
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

        def fwd():
            return normref.batch_norm_forward(x, w, b, rm, rv, out=y, backend=backend)[-1]

        bwd = normref.batch_norm_backward
    else:

        def fwd():
            return normref.group_norm_forward(x, w, b, num_groups=GROUPS, out=y, backend=backend)[1]

        bwd = normref.group_norm_backward
    if pass_ == "fwd":
        return fwd
    return lambda: bwd(dy, fwd(), out=dx, backend=backend)


def _torch_fn(torch, op, pass_, x, dy, w, b):
    F = torch.nn.functional
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    c = x.shape[1]
    rm, rv = torch.zeros(c), torch.ones(c)

    def call(xx, ww, bb):
        if op == "batch_norm":
            return F.batch_norm(xx, rm, rv, ww, bb, training=True, momentum=0.1, eps=1e-5)
        return F.group_norm(xx, GROUPS, ww, bb, 1e-5)

    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    if pass_ == "fwd":

        def fwd():
            with torch.no_grad():
                call(tx, tw, tb)

        return fwd
    gx = tx.clone().requires_grad_(True)
    gw = tw.clone().requires_grad_(True)
    gb = tb.clone().requires_grad_(True)

    def fwd_bwd():
        call(gx, gw, gb).backward(tdy)
        gx.grad = gw.grad = gb.grad = None

    return fwd_bwd


def _bytes(pass_, shape, itemsize=4):
    """The op's minimum memory traffic: x in, y out (and dy, x in, dx out); the (C,) vectors
    (weight, bias, running statistics, their gradients) are too small to count."""
    return itemsize * math.prod(shape) * (2 if pass_ == "fwd" else 5)


def bench(shapes, ops, threads, rounds, reference_rounds, with_torch=True):
    import numba

    numba.set_num_threads(threads)
    torch = None
    if with_torch:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            torch = None
    results = []
    for shape in shapes:
        x, dy, w, b = _inputs(shape)
        planes = (shape[0] * shape[1], math.prod(shape[2:]))  # the floor streams rows of a plane
        x2, dy2 = x.reshape(planes), dy.reshape(planes)
        fy, fdx = np.empty_like(x2), np.empty_like(x2)
        for op in ops:
            for pass_ in PASSES:
                if pass_ == "fwd":

                    def floor_fn(x2=x2, fy=fy):
                        _stream1(x2, fy)
                else:

                    def floor_fn(x2=x2, dy2=dy2, fy=fy, fdx=fdx):
                        _stream1(x2, fy)
                        _stream2(dy2, x2, fdx)

                numba_fns = {
                    "floor": floor_fn,
                    "numba (out=)": _normref_fn(op, pass_, x, dy, w, b, "numba", out=True),
                    "numba": _normref_fn(op, pass_, x, dy, w, b, "numba", out=False),
                }
                groups = [(numba_fns, rounds)]
                if torch is not None:
                    groups.append(({"torch": _torch_fn(torch, op, pass_, x, dy, w, b)}, rounds))
                ref = _normref_fn(op, pass_, x, dy, w, b, "reference", out=False)
                groups.append(({"reference": ref}, reference_rounds))
                times = _time_groups([(fns, wanted, True) for fns, wanted in groups], rounds)
                nbytes = _bytes(pass_, shape)
                floor_gbps = nbytes / times.pop("floor") / 1e9
                for impl, t in times.items():
                    gbps = nbytes / t / 1e9
                    vs = times["torch"] / t if "torch" in times else None
                    results.append(
                        Row(op, shape, pass_, impl, t, gbps, floor_gbps, gbps / floor_gbps, vs)
                    )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.channel_norms", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="Numba and PyTorch threads")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to time")
    args = parser.parse_args(argv)
    rounds, reference_rounds = (5, 1) if args.quick else (21, 3)
    results = bench(SHAPES, args.ops, args.threads, rounds, reference_rounds, not args.no_torch)
    print_table(
        results,
        f"normref channel norms, float32 NCHW, {args.threads} threads (Numba and PyTorch)",
        "batch_norm: training, running statistics updated; group_norm: 32 groups. " + CAPTION,
    )
    if args.json:
        rows = [{**asdict(r), "pass": r.pass_} for r in results]
        for row in rows:
            del row["pass_"]
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
