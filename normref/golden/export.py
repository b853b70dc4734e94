"""`normref golden export DIR`: every golden case as plain `.npy` files with a JSON manifest, so
that a C++, Rust or JavaScript project can test against the cases without Python
(specs/golden-format.md describes the layout).

What is written: every op case of the shipped golden data (read through the checked loader, so a
corrupt file stops the export) and every generated case of the registry's OPTIMIZERS table
(normref.conformance.trajectories: optimizer trajectories, gradient-transform calls, schedule
values), each in its own directory named by the case id, one `.npy` per array, and
`manifest.json` listing them with the op, hyperparameters, shapes, dtypes, tolerances and the
sha256 of every file. `.npy` is the simplest self-describing array format (a short text header,
then the raw little-endian data in C order); readers exist for every language.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from normref import registry
from normref.golden.store import GoldenError, load_index

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "MANIFEST", "ExportError", "export"]

EXPORT_FORMAT = "normref-golden-export"
EXPORT_VERSION = 2  # 2: the kinds "transform" and "schedule" (1 had "op" and "trajectory")
MANIFEST = "manifest.json"
RULE = "|got - expected| <= atol + rtol * |expected|, elementwise; NaN matches NaN"


class ExportError(Exception):
    """The export cannot be written (a directory that is neither empty nor an earlier export,
    or golden data that fails its checks)."""


def _json_able(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_able(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_able(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _write(root: Path, case_id: str, name: str, array: np.ndarray) -> dict[str, Any]:
    """Write one array as `<case id>/<name>.npy`; its manifest entry."""
    relative = f"{case_id}/{name}.npy"
    path = root / relative
    array = np.ascontiguousarray(array) if array.ndim else np.asarray(array)
    # little-endian whatever the machine, so that a reader needs to handle one byte order only
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
    return {
        "file": relative,
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def _tolerance(case: Any) -> dict[str, Any]:
    return {"forward": case.forward_tol._asdict(), "backward": case.backward_tol._asdict()}


def _op_entry(root: Path, case: Any, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    info = registry.OPS[case.op]

    def group(prefix: str, names: Any) -> dict[str, Any]:
        return {n: _write(root, case.id, f"{prefix}.{n}", arrays[f"{prefix}.{n}"]) for n in names}

    return {
        "id": case.id,
        "kind": "op",
        "op": case.op,
        "family": info.family,
        "dtype": case.dtype,
        "hyper": _json_able(case.hyper),
        "input_order": list(info.inputs),
        "inputs": group("input", case.inputs),
        "dy": _write(root, case.id, "input.dy", arrays["input.dy"]),
        "outputs": group("output", case.outputs),
        "grads": group("grad", case.grads),
        "tolerance": _tolerance(case),
    }


def _generated_entry(root: Path, case: Any, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A trajectory, transform or schedule case: what they share, then the arrays of its kind."""

    def column(key: str) -> list[dict[str, Any]]:
        return [
            _write(root, case.id, f"{key}.{i}", arrays[f"{key}.{i}"]) for i in range(case.count)
        ]

    entry = {
        "id": case.id,
        "kind": case.kind,
        "op": case.op,
        "family": case.info.family,
        "dtype": case.dtype,
        "hyper": _json_able(case.hyper),
    }
    if case.kind == "schedule":
        entry["steps"] = case.steps
        entry["expected"] = _write(root, case.id, "output.value", arrays["output.value"])
    else:
        # a trajectory's rows are its updates, a transform's its calls
        entry["calls" if case.kind == "transform" else "steps"] = case.steps
        entry["params"] = column("input.param")
        entry["grads"] = column("input.grads")
        outputs = "output.param" if case.kind == "trajectory" else "output.grads"
        entry["expected"] = column(outputs)
    entry["tolerance"] = _tolerance(case)
    return entry


def _prepare(root: Path) -> None:
    """Make `root` ready: created if missing; an earlier export in it is removed (its case
    directories and manifest only); anything else there refuses the export."""
    root.mkdir(parents=True, exist_ok=True)
    entries = list(root.iterdir())
    if not entries:
        return
    manifest = root / MANIFEST
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
        ours = old.get("format") == EXPORT_FORMAT
        listed = {c["id"] for c in old["cases"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours, listed = False, set()
    strangers = [p.name for p in entries if p.name != MANIFEST and p.name not in listed]
    if not ours or strangers:
        found = sorted(strangers)[:5] or [MANIFEST]
        raise ExportError(
            f"{root} is not empty and not an earlier export (found {found}); "
            "give an empty or new directory"
        )
    for p in entries:
        if p.is_dir():
            shutil.rmtree(p)
    manifest.unlink()


def export(directory: str | Path, *, data: str | Path | None = None) -> dict[str, Any]:
    """Write every op case (from the golden data in `data`, default the shipped data) and every
    generated case (trajectories, transforms, schedules) to `directory`; returns the manifest
    written."""
    from normref.conformance.trajectories import load_cases

    root = Path(directory)
    try:
        cases = list(load_index(data))
    except GoldenError as e:
        raise ExportError(str(e)) from None
    _prepare(root)
    entries = []
    for case in [*cases, *load_cases()]:
        try:
            arrays = case.arrays()
        except GoldenError as e:
            raise ExportError(str(e)) from None
        (root / case.id).mkdir()
        if getattr(case, "kind", "op") == "op":
            entries.append(_op_entry(root, case, arrays))
        else:
            entries.append(_generated_entry(root, case, arrays))
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "tolerance_rule": RULE,
        "cases": entries,
    }
    # the manifest last: an interrupted export has none, and is not mistaken for a complete one
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest
