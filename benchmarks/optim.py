"""Time one AdamW step on 10M float32 parameters: normref's fused Numba update_ against
torch.optim.AdamW (default, foreach=True, fused=True) on the CPU and against a bandwidth floor.

    python -m benchmarks.optim [--n 10000000] [--threads 2] [--rounds 21] [--json FILE]

The step's minimum traffic is 7 arrays of 4 bytes per element: read p, g, m, v; write p, m, v
(in place, nothing else). The floor is a trivial parallel Numba kernel moving exactly those bytes
(`_stream_adamw`), timed interleaved with normref in the same rounds, so that both see the same
drift of a shared machine (benchmarks/run.py explains the interleaving and the groups, one per
runtime; its `_time_by_runtime` does the timing here too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):  # `python benchmarks/optim.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from numba import njit, prange

import normref.optim as optim
from benchmarks.run import _threads, _time_by_runtime

ARRAYS = 7  # read p, g, m, v; write p, m, v
LR, WEIGHT_DECAY = 1e-3, 1e-2  # torch.optim.AdamW's defaults, and normref's adamw's


@njit(parallel=True)
def _stream_adamw(p, g, m, v):
    """The step's minimum traffic and nothing else: reads p, g, m, v, writes p, m, v. (x - y
    alternates between two values: no drift into denormals or overflow however often it runs.)"""
    for i in prange(p.shape[0]):
        x = g[i]
        p[i] = x - p[i]
        m[i] = x - m[i]
        v[i] = x - v[i]


def _inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)


def _normref_step(p, g, backend):
    opt = optim.adamw(LR, weight_decay=WEIGHT_DECAY)
    params, grads = [p.copy()], [g]
    state = opt.init(params)
    return lambda: opt.update_(params, grads, state, backend=backend)


def _torch_step(torch, p, g, **variant):
    param = torch.from_numpy(p.copy())
    param.grad = torch.from_numpy(g)
    opt = torch.optim.AdamW([param], lr=LR, weight_decay=WEIGHT_DECAY, **variant)
    return opt.step


def bench(n, threads, rounds, reference_rounds, with_torch=True):
    torch = _threads(threads, with_torch)
    p, g = _inputs(n)
    floor_arrays = [p.copy(), g, np.zeros_like(p), np.zeros_like(p)]
    impls = {"normref numba": _normref_step(p, g, "numba")}
    if torch is not None:
        variants = {
            "torch default": {},
            "torch foreach": {"foreach": True},
            "torch fused": {"fused": True},
        }
        impls |= {name: _torch_step(torch, p, g, **kw) for name, kw in variants.items()}
    reference = {"normref reference": _normref_step(p, g, "reference")}
    floor_fn = lambda: _stream_adamw(*floor_arrays)  # noqa: E731
    times, floors = _time_by_runtime(floor_fn, impls, reference, rounds, reference_rounds)
    nbytes = ARRAYS * 4 * n
    floor = statistics.median(floors.values())
    rows = [{"impl": "floor (streaming)", "median_s": floor, "gbps": nbytes / floor / 1e9}]
    for impl, t in times.items():
        of_floor = floors.get(impl, floor) / t  # against the floor sampled alternately with it
        row = {"impl": impl, "median_s": t, "gbps": nbytes / t / 1e9, "of_floor": of_floor}
        for other in ("torch fused", "torch default"):
            if other in times:
                row[f"vs {other}"] = times[other] / t  # > 1: faster than that torch step
        rows.append(row)
    return rows


def print_table(rows, n, threads):
    columns = ("impl", "median", "GB/s", "of floor", "vs torch fused", "vs torch default")
    print(f"AdamW step, {n:,} float32 params, {threads} threads; {ARRAYS} x 4 bytes per element")
    print(f"{columns[0]:<20}" + "".join(f"{c:>18}" for c in columns[1:]))
    for r in rows:
        cells = [f"{r['median_s'] * 1e3:.2f} ms", f"{r['gbps']:.1f}"]
        cells.append(f"{100 * r['of_floor']:.0f}%" if "of_floor" in r else "")
        for other in ("torch fused", "torch default"):
            key = f"vs {other}"
            cells.append(f"{r[key]:.2f}x" if key in r else "")
        print(f"{r['impl']:<20}" + "".join(f"{c:>18}" for c in cells))
    print("GB/s: the minimum traffic / median time. of floor: floor time / this time. "
          "vs torch: that torch step's time / this time (> 1: faster).")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.optim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=10_000_000, help="parameters (one tensor)")
    parser.add_argument("--threads", type=int, default=2, help="Numba and PyTorch threads")
    parser.add_argument("--rounds", type=int, default=21, help="timed rounds")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args(argv)
    rows = bench(args.n, args.threads, args.rounds, max(1, args.rounds // 7), not args.no_torch)
    print_table(rows, args.n, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
