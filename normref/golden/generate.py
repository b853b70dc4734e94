"""Deterministic generation of the golden cases (design.md §7): `python -m normref.golden build`.

For every op in `registry.OPS`, every `Case` in `op.cases` and every dtype in `op.dtypes`:

1. random inputs are drawn from a seed that depends only on the case id (op, case index, dtype),
   and rounded to the case's dtype: these rounded values ARE the case;
2. the expected outputs and gradients are the float64 reference (`backend="reference"`) applied to
   those exact inputs cast up to float64, so a float16 case expects the exact function of its
   float16 inputs, and the tolerance only has to cover the target's own arithmetic;
3. each case is written to one `.npz` whose bytes depend only on its arrays (fixed zip timestamps),
   and `index.json` lists every case with its shapes, hyperparameters, tolerances and sha256.

Nothing here names an op: a new op gets golden cases by being added to the registry with `cases`.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from normref import registry
from normref.golden.store import (
    DATA_DIR,
    FORMAT,
    INDEX_NAME,
    META_KEY,
    VERSION,
    case_id,
    entry_meta,
    file_name,
)
from normref.golden.tolerances import TOLERANCES

__all__ = ["build", "make_case", "write_npz", "seed_for"]

# Every zip entry carries this date, so the bytes of a file do not depend on when it was written.
# (np.savez stamps entries with the current time; 1980-01-01 is the earliest date zip can hold.)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def seed_for(cid: str) -> int:
    """The random seed of a case: a function of its id only, stable across runs and machines."""
    return zlib.crc32(cid.encode("ascii"))


def _draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random values for the input called `name`, in float64.

    Parameters get values near their neutral point but not at it, so a kernel that ignores or
    misplaces one is caught: weights (scales) near 1, biases (shifts) near 0; a variance (a running
    variance of a stateful norm) must be positive. Data is neither centred nor of unit variance, so
    a normalization has real work to do.
    """
    if name.endswith("var"):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith("weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name.endswith("bias"):
        return 0.1 * rng.standard_normal(shape)
    return 0.5 + 1.5 * rng.standard_normal(shape)


def _output_names(op: registry.OpInfo, count: int) -> tuple[str, ...]:
    """Names of the forward's outputs in the case files: the registry's, if it ever lists them,
    else `y` for a single output and y0, y1, ... for several."""
    names = getattr(op, "outputs", None)
    if names is not None:
        return tuple(names)
    return ("y", *(f"out{i}" for i in range(1, count)))


def _expected(cid: str, name: str, value: Any) -> np.ndarray:
    """An expected output as stored: floating values in float64 (the exact reference), integers
    and booleans exactly (a count, such as batch_norm's num_batches_tracked)."""
    if value is None:
        raise ValueError(
            f"{cid}: output {name!r} is None; a golden case must give the inputs that every "
            "output needs"
        )
    a = np.asarray(value)
    if a.dtype.kind == "f":
        return a.astype(np.float64)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.dtype.kind == "b":
        return a
    raise ValueError(f"{cid}: output {name!r} has dtype {a.dtype}, not a number")


def _json_able(value: Any) -> Any:
    """Hyperparameters as JSON: tuples become lists (the loader turns them back into tuples)."""
    if isinstance(value, (tuple, list)):
        return [_json_able(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_able(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def make_case(
    op: registry.OpInfo, index: int, case: registry.Case, dtype: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One golden case: its index entry (without file hash) and its arrays, by name."""
    cid = case_id(op.name, index, dtype)
    rng = np.random.Generator(np.random.PCG64(seed_for(cid)))
    hyper = {**op.hyperparams, **case.hyper}
    unknown = set(case.hyper) - set(op.hyperparams)
    if unknown:
        raise ValueError(f"{cid}: case hyperparameters {sorted(unknown)} are not in op.hyperparams")

    # Draw in op.inputs order; an absent input (shape None) draws nothing.
    inputs: dict[str, np.ndarray] = {}
    for name in op.inputs:
        shape = case.shapes.get(name)
        if shape is not None:
            if name in case.draw:
                mean, std = case.draw[name]
                value = mean + std * rng.standard_normal(tuple(shape))
            else:
                value = _draw(rng, name, tuple(shape))
            inputs[name] = value.astype(dtype)

    def up(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.astype(np.float64)

    # A hyperparameter whose default depends on the compute dtype (rms_norm's eps=None: the machine
    # epsilon) resolves here to float64's, while a target running the case in float32 uses
    # float32's. The difference is of the order of that epsilon relative to the result, far inside
    # the float32 and float16 tolerances, so the case keeps the op's own default rather than a
    # number chosen here.
    args = [up(inputs.get(name)) for name in op.inputs]
    *outputs, saved = op.forward(*args, **hyper, backend="reference")
    # The upstream gradient: random (never all ones, which would hide a missing dy factor), in the
    # case dtype like every input, and its rounded value is what the reference differentiates.
    dy = rng.standard_normal(tuple(outputs[0].shape)).astype(dtype)
    grads = op.backward(up(dy), saved, backend="reference")
    if not isinstance(grads, tuple):
        grads = (grads,)

    arrays: dict[str, np.ndarray] = {f"input.{k}": v for k, v in inputs.items()}
    arrays["input.dy"] = dy
    out_names = _output_names(op, len(outputs))
    for name, value in zip(out_names, outputs):
        arrays[f"output.{name}"] = _expected(cid, name, value)
    for name, value in zip(op.differentiable, grads):
        if name in inputs:  # backward returns None for an absent input
            arrays[f"grad.{name}"] = np.asarray(value, dtype=np.float64)
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        # random inputs should never reach an op's singular points; if they do, the draw is wrong
        raise ValueError(f"{cid}: the reference gave non-finite values")

    entry = {
        "id": cid,
        "op": op.name,
        "case": index,
        "dtype": dtype,
        "hyper": _json_able(hyper),
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "dy": list(dy.shape),
        "outputs": {n: list(arrays[f"output.{n}"].shape) for n in out_names},
        "grads": {n: list(arrays[f"grad.{n}"].shape) for n in op.differentiable if n in inputs},
        "tolerance": {direction: tol._asdict() for direction, tol in TOLERANCES[dtype].items()},
        "file": file_name(cid),
    }
    # A copy of the entry inside the (hashed) file, so an edited index entry is detected on load.
    arrays[META_KEY] = np.frombuffer(entry_meta(entry), dtype=np.uint8)
    return entry, arrays


def write_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of an `.npz` holding `arrays`, identical for identical arrays.

    The same layout np.savez writes (one `<name>.npy` per array, readable by np.load), but stored
    uncompressed (deflate output may differ between zlib builds) and with a fixed timestamp.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            npy = io.BytesIO()
            # (np.ascontiguousarray would turn a 0-d array, such as a count, into shape (1,))
            array = np.asarray(array)
            np.lib.format.write_array(npy, np.asarray(array, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.create_system = 3  # else it depends on the OS writing the file
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, npy.getvalue())
    return buffer.getvalue()


def build(out: str | Path | None = None, ops: Mapping[str, registry.OpInfo] | None = None) -> dict:
    """Generate every golden case into `out` (default: the package's data directory) and return
    the index written there. Files listed by a previous index there and no longer generated are
    removed; nothing else in the directory is touched."""
    out_dir = Path(DATA_DIR if out is None else out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ops = registry.OPS if ops is None else ops
    entries = []
    written = set()
    for op in ops.values():
        for index, case in enumerate(op.cases):
            for dtype in op.dtypes:
                entry, arrays = make_case(op, index, case, dtype)
                data = write_npz(arrays)
                (out_dir / entry["file"]).write_bytes(data)
                entry["sha256"] = hashlib.sha256(data).hexdigest()
                entries.append(entry)
                written.add(entry["file"])
    _remove_stale(out_dir, written)
    index = {"format": FORMAT, "version": VERSION, "cases": entries}
    # The index goes last: a build interrupted half-way leaves the old index, whose hashes then
    # refuse the files that changed, rather than a new index pointing at missing files.
    (out_dir / INDEX_NAME).write_text(_index_text(index), encoding="utf-8")
    return index


def _index_text(index: Mapping[str, Any]) -> str:
    """The index as JSON with one case per line: compact, yet a rebuild's diff shows which cases
    changed."""
    head = {k: v for k, v in index.items() if k != "cases"}
    lines = [json.dumps(head)[:-1] + ', "cases": [']
    lines += [" " + json.dumps(entry) + "," for entry in index["cases"]]
    if index["cases"]:
        lines[-1] = lines[-1][:-1]
    lines.append("]}")
    return "\n".join(lines) + "\n"


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    old_index = out_dir / INDEX_NAME
    if not old_index.is_file():
        return
    try:
        old = json.loads(old_index.read_text(encoding="utf-8"))
        old_files = {c["file"] for c in old["cases"]}
    except (ValueError, KeyError, TypeError):
        return  # not an index we wrote: leave the directory alone
    for name in old_files - keep:
        path = out_dir / name
        if isinstance(name, str) and path.name == name and path.suffix == ".npz" and path.is_file():
            path.unlink()
