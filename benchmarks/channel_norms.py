"""Time BatchNorm (training) and GroupNorm, forward and forward+backward, for Numba and the
array-API reference against PyTorch CPU and a memory-bandwidth floor, in one run.

    python -m benchmarks.channel_norms [--quick] [--threads 2] [--json FILE] [--no-torch]

Built on run.py's machinery, for the same reasons (see its docstring): the floor is a streaming
Numba kernel moving the op's minimum traffic (forward: read x, write y; backward: read dy and x,
write dx), and each implementation (Numba with and without out=, PyTorch) is timed in a group of
its own, alternating with the floor, the groups taking turns; the reference after them. Inputs
are NCHW float32; BatchNorm trains with running statistics (both libraries update them: normref
returns new ones, PyTorch writes in place); GroupNorm uses 32 groups.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):  # `python benchmarks/channel_norms.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import normref
from benchmarks.run import (
    CAPTION,
    PASSES,
    _empty_like,
    _floor,
    _inputs,
    _rows,
    _threads,
    _time_by_runtime,
    _torch_pass,
    make_parser,
    report,
    round_counts,
)

SHAPES = [(32, 64, 56, 56), (8, 256, 28, 28)]
OPS = ("batch_norm", "group_norm")
GROUPS = 32


def _normref_fn(op, pass_, x, dy, w, b, backend, out):
    """The public API call for one cell of the table; out=True passes preallocated buffers."""
    y = _empty_like(x) if out else None
    dx = _empty_like(x) if out else None
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
    c = x.shape[1]
    rm, rv = torch.zeros(c), torch.ones(c)

    def call(xx, ww, bb):
        if op == "batch_norm":
            return F.batch_norm(xx, rm, rv, ww, bb, training=True, momentum=0.1, eps=1e-5)
        return F.group_norm(xx, GROUPS, ww, bb, 1e-5)

    return _torch_pass(torch, pass_, call, (x, w, b), dy)


def _bytes(pass_, shape, itemsize=4):
    """The op's minimum memory traffic: x in, y out (and dy, x in, dx out); the (C,) vectors
    (weight, bias, running statistics, their gradients) are too small to count."""
    return itemsize * math.prod(shape) * (2 if pass_ == "fwd" else 5)


def bench(shapes, ops, threads, rounds, reference_rounds, with_torch=True):
    torch = _threads(threads, with_torch)
    results = []
    for shape in shapes:
        x, dy, w, b = _inputs(shape)
        planes = (shape[0] * shape[1], math.prod(shape[2:]))  # the floor streams rows of a plane
        x2, dy2 = x.reshape(planes), dy.reshape(planes)
        fy, fdx = _empty_like(x2), _empty_like(x2)
        for op in ops:
            for pass_ in PASSES:
                floor_fn, floor_bytes = _floor(pass_, x2, dy2, fy, fdx)
                impls = {
                    "numba (out=)": _normref_fn(op, pass_, x, dy, w, b, "numba", out=True),
                    "numba": _normref_fn(op, pass_, x, dy, w, b, "numba", out=False),
                }
                if torch is not None:
                    impls["torch"] = _torch_fn(torch, op, pass_, x, dy, w, b)
                ref = {"reference": _normref_fn(op, pass_, x, dy, w, b, "reference", out=False)}
                times, floors = _time_by_runtime(floor_fn, impls, ref, rounds, reference_rounds)
                nbytes = _bytes(pass_, shape)
                results += _rows(op, shape, pass_, times, floors, nbytes, floor_bytes)
    return results


def main(argv=None):
    parser = make_parser("python -m benchmarks.channel_norms", __doc__.split("\n")[0])
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to time")
    args = parser.parse_args(argv)
    results = bench(SHAPES, args.ops, args.threads, *round_counts(args), not args.no_torch)
    report(
        results,
        f"normref channel norms, float32 NCHW, {args.threads} threads (Numba and PyTorch)",
        "batch_norm: training, running statistics updated; group_norm: 32 groups. " + CAPTION,
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
