"""Time weight_norm and weight_standardization (forward, forward+backward) on conv weights, for
the Numba kernels, PyTorch CPU and the array-API reference, against a memory-bandwidth floor.

    python -m benchmarks.reparam [--quick] [--threads 2] [--json FILE] [--no-torch]

The weights are float32 conv weights (out_channels, in_channels, 3, 3): one row per output
channel, the statistics over the fan-in (in_channels * 9). The method is benchmarks/run.py's, whose
helpers this module imports: the floor is a streaming Numba kernel moving the op's minimum traffic
(forward: read the weight, write w; backward: read dw and the weight, write the gradient), timed
interleaved with the Numba calls, and every ratio is a ratio of medians from the same rounds; each
runtime's calls form a group of their own, the groups taking turns (run.py says why).

Rows per cell: "numba (out=)" is the public call (normref.weight_norm_forward(..., out=w,
backend="numba"), and the backward with out=), writing into preallocated buffers: a fresh 19 MB
output would cost more page faults than the kernel takes. "numba kernel" calls the kernel with
every output preallocated, so the gap between the two is the wrapper and the small per-channel
vectors it still allocates. The reference allocates its outputs. PyTorch: `torch._weight_norm`
(what nn.utils.parametrizations.weight_norm calls), and weight standardization as the authors'
code writes it (joe-siyuan-qiao/WeightStandardization, README: torch.std_mean over the fan-in,
(w - mean) / (std + 1e-5)); backward through autograd.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):  # `python benchmarks/reparam.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import normref
from benchmarks.run import (
    CAPTION,
    PASSES,
    _floor,
    _rows,
    _threads,
    _time_by_runtime,
    _torch_pass,
    make_parser,
    report,
    round_counts,
)

SHAPES = [(1024, 512, 3, 3), (256, 128, 3, 3)]  # fan-in 4608 and 1152
OPS = ("weight_norm", "weight_standardization")
EPS = 1e-5


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape, dtype=np.float32)
    dw = rng.standard_normal(shape, dtype=np.float32)
    g = (1 + 0.1 * rng.standard_normal((shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
    return v, dw, g


def _normref_fn(op, pass_, v, dw, g, backend, out):
    """The public API call for one cell of the table; out=True passes preallocated buffers."""
    w = np.empty_like(v) if out else None
    grad = np.empty_like(v) if out else None
    if op == "weight_norm":

        def fwd():
            return normref.weight_norm_forward(g, v, out=w, backend=backend)

        bwd = normref.weight_norm_backward
    else:

        def fwd():
            return normref.weight_standardization_forward(v, eps=EPS, out=w, backend=backend)

        bwd = normref.weight_standardization_backward
    if pass_ == "fwd":
        return fwd
    return lambda: bwd(dw, fwd()[-1], out=grad, backend=backend)


def _kernel_fn(op, pass_, v, dw, g):
    """The Numba kernels themselves on preallocated (rows, n) buffers: no allocation timed."""
    from normref.kernels.numba import reparam as kernels

    rows = v.shape[0]
    v2, dw2 = v.reshape(rows, -1), dw.reshape(rows, -1)
    out, grad = np.empty_like(v2), np.empty_like(v2)
    a, b, c = (np.empty(rows, np.float32) for _ in range(3))
    g1 = g.reshape(rows)
    if op == "weight_norm":

        def fwd():
            kernels.weight_norm_forward(v2, g1, out, a)

        def bwd():
            kernels.weight_norm_backward(dw2, v2, g1, a, grad, b)
    else:

        def fwd():
            kernels.weight_standardization_forward(v2, EPS, out, a, c)

        def bwd():
            kernels.weight_standardization_backward(dw2, v2, a, c, EPS, grad)

    if pass_ == "fwd":
        return fwd
    return lambda: (fwd(), bwd())


def _torch_fn(torch, op, pass_, v, dw, g):
    dims = list(range(1, v.ndim))

    def call(vv, gg):
        if op == "weight_norm":
            return torch._weight_norm(vv, gg, 0)
        std, mean = torch.std_mean(vv, dim=dims, keepdim=True)  # the authors' code
        return (vv - mean) / (std + EPS)

    return _torch_pass(torch, pass_, call, (v, g), dw, requires_grad=(True, op == "weight_norm"))


def _bytes(op, pass_, rows, n, itemsize=4):
    """The op's minimum memory traffic: weight in, w out (and dw, weight in, gradient out), plus the
    per-channel vectors: g in, norm out (g, norm in, dg out), or mean, std out (mean, std in)."""
    arrays, vectors = 2, 2
    if pass_ == "fwd+bwd":
        arrays += 3
        vectors += 3 if op == "weight_norm" else 2
    return itemsize * (arrays * rows * n + vectors * rows)


def bench(shapes, ops, threads, rounds, reference_rounds, with_torch=True):
    torch = _threads(threads, with_torch)
    results = []
    for shape in shapes:
        v, dw, g = _inputs(shape)
        rows, n = shape[0], v.size // shape[0]
        v2, dw2 = v.reshape(rows, n), dw.reshape(rows, n)
        fy, fdx = np.empty_like(v2), np.empty_like(v2)
        for op in ops:
            for pass_ in PASSES:
                floor_fn, floor_bytes = _floor(pass_, v2, dw2, fy, fdx)
                impls = {
                    "numba (out=)": _normref_fn(op, pass_, v, dw, g, "numba", out=True),
                    "numba kernel": _kernel_fn(op, pass_, v, dw, g),
                }
                if torch is not None:
                    impls["torch"] = _torch_fn(torch, op, pass_, v, dw, g)
                ref = {"reference": _normref_fn(op, pass_, v, dw, g, "reference", out=False)}
                times, floors = _time_by_runtime(floor_fn, impls, ref, rounds, reference_rounds)
                nbytes = _bytes(op, pass_, rows, n)
                results += _rows(op, (rows, n), pass_, times, floors, nbytes, floor_bytes)
    return results


def main(argv=None):
    args = make_parser("python -m benchmarks.reparam", __doc__.split("\n")[0]).parse_args(argv)
    results = bench(SHAPES, OPS, args.threads, *round_counts(args), not args.no_torch)
    report(
        results,
        f"normref weight reparameterizations, float32 conv weights, {args.threads} threads",
        "shape: out_channels x fan-in. " + CAPTION,
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
