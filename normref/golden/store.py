"""Loading the shipped golden cases: index.json plus one `.npz` per case (design.md §7).

Everything read is checked before use, and anything wrong is a `GoldenError` naming the file and the
problem: an index entry with missing, extra or ill-typed fields, an op or dtype normref does not
know, a tolerance that differs from the table, a missing file, a file whose sha256 differs from the
index (corrupt or edited), or a file whose arrays do not match the entry. Arrays are loaded with
`allow_pickle=False`, and from the same bytes that were hashed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normref import registry
from normref.golden.tolerances import TOLERANCES, Tolerance

__all__ = [
    "DATA_DIR",
    "GoldenError",
    "GoldenCase",
    "load_index",
    "load_cases",
    "case_id",
    "file_name",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
INDEX_NAME = "index.json"
FORMAT = "normref-golden"
VERSION = 1
# The array holding a JSON copy of the case's index entry (without its sha256): the file is hashed,
# so comparing the two detects an edited index entry, not only an edited file.
META_KEY = "meta.entry"

_FIELDS = {
    "id": str,
    "op": str,
    "case": int,
    "dtype": str,
    "hyper": dict,
    "inputs": dict,
    "dy": list,
    "outputs": dict,
    "grads": dict,
    "tolerance": dict,
    "file": str,
    "sha256": str,
}
_JSON_TYPE = {str: "string", int: "integer", dict: "object", list: "array"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class GoldenError(ValueError):
    """A golden file or index entry is missing, corrupt, edited or malformed."""


def case_id(op: str, index: int, dtype: str) -> str:
    """`layer_norm-00-float32`: op, case index within op.cases, dtype."""
    return f"{op}-{index:02d}-{dtype}"


def file_name(cid: str) -> str:
    return f"{cid}.npz"


def entry_meta(entry: Mapping[str, Any]) -> bytes:
    """The canonical JSON of an index entry minus its sha256 (which cannot be inside the file)."""
    body = {k: v for k, v in entry.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _tuples(value: Any) -> Any:
    """JSON lists back into the tuples the ops take (normalized_shape=(3, 5))."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class GoldenCase:
    """One validated index entry. `arrays()` reads and checks its file."""

    id: str
    op: str
    index: int
    dtype: str
    hyper: Mapping[str, Any]  # ready to pass to the op: lists already turned into tuples
    inputs: Mapping[str, tuple[int, ...]]  # present inputs only, in op.inputs order
    dy: tuple[int, ...]
    outputs: Mapping[str, tuple[int, ...]]  # in the order the forward returns them
    grads: Mapping[str, tuple[int, ...]]  # in op.differentiable order
    forward_tol: Tolerance
    backward_tol: Tolerance
    path: Path
    sha256: str
    entry: Mapping[str, Any]  # the raw index entry, for reports

    @property
    def info(self) -> registry.OpInfo:
        return registry.OPS[self.op]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the case (`input.x`, `input.dy`, `output.y`, `grad.x`, ...), checked
        against the sha256 and the shapes in the index."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise GoldenError(f"{self.path}: golden file is missing (case {self.id})") from None
        except OSError as e:
            raise GoldenError(f"{self.path}: cannot read golden file: {e}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise GoldenError(
                f"{self.path}: sha256 is {digest}, the index says {self.sha256}: the file is "
                "corrupt or was edited (regenerate with `normref golden build`)"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except Exception as e:  # a zip or .npy parse error: the bytes are wrong whatever it is
            raise GoldenError(
                f"{self.path}: not a readable .npz: {type(e).__name__}: {e}"
            ) from None
        self._check(arrays)
        del arrays[META_KEY]
        return arrays

    def _check(self, arrays: Mapping[str, np.ndarray]) -> None:
        def fail(what: str) -> GoldenError:
            return GoldenError(f"{self.path}: {what} (case {self.id})")

        meta = arrays.get(META_KEY)
        if meta is None or meta.dtype != np.uint8 or bytes(meta) != entry_meta(self.entry):
            raise fail("the index entry differs from the copy stored in the file (edited index?)")
        # name -> (shape, the dtypes it may have)
        expected: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
            META_KEY: ((len(meta),), ("uint8",))
        }
        for name, shape in self.inputs.items():
            expected[f"input.{name}"] = (shape, (self.dtype,))
        expected["input.dy"] = (self.dy, (self.dtype,))
        for name, shape in self.outputs.items():
            # float64 for values, int64 / bool for exact outputs (a count)
            expected[f"output.{name}"] = (shape, ("float64", "int64", "bool"))
        for name, shape in self.grads.items():
            expected[f"grad.{name}"] = (shape, ("float64",))
        if set(arrays) != set(expected):
            raise fail(f"holds arrays {sorted(arrays)}, expected {sorted(expected)}")
        for name, (shape, dtypes) in expected.items():
            got = arrays[name]
            if tuple(got.shape) != shape or got.dtype.name not in dtypes:
                raise fail(
                    f"array {name} is {got.dtype}{list(got.shape)}, "
                    f"expected {' or '.join(dtypes)}{list(shape)}"
                )


def load_index(directory: str | Path | None = None) -> list[GoldenCase]:
    """Every case listed in `directory`/index.json (default: the shipped data), validated.

    The files themselves are read (and hashed) only by `GoldenCase.arrays()`.
    """
    root = Path(DATA_DIR if directory is None else directory)
    index_path = root / INDEX_NAME
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenError(
            f"{index_path}: golden index is missing (generate it with `normref golden build`)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GoldenError(f"{index_path}: not a readable JSON index: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise GoldenError(f"{index_path}: not a normref golden index (no format {FORMAT!r})")
    if index.get("version") != VERSION:
        raise GoldenError(
            f"{index_path}: index version {index.get('version')!r}, this normref reads {VERSION}"
        )
    entries = index.get("cases")
    if not isinstance(entries, list):
        raise GoldenError(f"{index_path}: 'cases' must be a list")
    cases = [_parse_entry(index_path, root, i, e) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise GoldenError(f"{index_path}: case {case.id} is listed twice")
        seen.add(case.id)
    return cases


def load_cases(directory: str | Path | None = None) -> list[tuple[GoldenCase, dict]]:
    """Every case with its arrays: `load_index` followed by `arrays()` for each case."""
    return [(case, case.arrays()) for case in load_index(directory)]


def _parse_entry(index_path: Path, root: Path, position: int, entry: Any) -> GoldenCase:
    where = f"{index_path}: case #{position}"
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        where = f"{index_path}: case {entry['id']}"

    def fail(what: str) -> GoldenError:
        return GoldenError(f"{where}: {what}")

    if not isinstance(entry, dict):
        raise fail(f"entry must be a JSON object, got {type(entry).__name__}")
    missing = sorted(set(_FIELDS) - set(entry))
    extra = sorted(set(entry) - set(_FIELDS))
    if missing or extra:
        raise fail(f"fields wrong: missing {missing}, unexpected {extra}")
    for name, kind in _FIELDS.items():
        # bool is an int in Python; a JSON true is never a valid case index
        if not isinstance(entry[name], kind) or isinstance(entry[name], bool):
            raise fail(f"field {name!r} must be a JSON {_JSON_TYPE[kind]}, got {entry[name]!r}")

    op = registry.OPS.get(entry["op"])
    if op is None:
        raise fail(
            f"unknown op {entry['op']!r}; this normref has {', '.join(sorted(registry.OPS))}"
        )
    dtype = entry["dtype"]
    if dtype not in TOLERANCES:
        raise fail(f"dtype {dtype!r} is not one of {', '.join(TOLERANCES)}")
    if entry["id"] != case_id(op.name, entry["case"], dtype):
        raise fail(f"id {entry['id']!r} does not match op, case and dtype")
    if entry["file"] != file_name(entry["id"]):
        # also keeps the file inside the data directory: no path separators, no '..'
        raise fail(f"file {entry['file']!r} must be {file_name(entry['id'])!r}")
    if not _SHA256.fullmatch(entry["sha256"]):
        raise fail(f"sha256 {entry['sha256']!r} is not 64 lowercase hex digits")

    unknown = sorted(set(entry["hyper"]) - set(op.hyperparams))
    if unknown:
        raise fail(f"hyperparameters {unknown} are not hyperparameters of {op.name}")
    inputs = _shapes(fail, "inputs", entry["inputs"], op.inputs)
    if op.inputs and op.inputs[0] not in inputs:
        raise fail(f"the first input {op.inputs[0]!r} is required")
    grads = _shapes(fail, "grads", entry["grads"], op.differentiable)
    if not set(grads) <= set(inputs):
        raise fail(f"gradients {sorted(set(grads) - set(inputs))} of absent inputs")
    outputs = _shapes(fail, "outputs", entry["outputs"], None)
    if not outputs:
        raise fail("no outputs")
    dy = _shape(fail, "dy", entry["dy"])

    tols = {}
    for direction, table_tol in TOLERANCES[dtype].items():
        given = entry["tolerance"].get(direction)
        if given != table_tol._asdict():
            raise fail(
                f"tolerance[{direction!r}] = {given!r} differs from the table in "
                f"normref/golden/tolerances.py, {table_tol._asdict()} (rebuild the goldens)"
            )
        tols[direction] = table_tol
    if set(entry["tolerance"]) != set(tols):
        raise fail(f"tolerance must have exactly the keys {sorted(tols)}")

    return GoldenCase(
        id=entry["id"],
        op=op.name,
        index=entry["case"],
        dtype=dtype,
        hyper=_tuples(entry["hyper"]),
        inputs=inputs,
        dy=dy,
        outputs=outputs,
        grads=grads,
        forward_tol=tols["forward"],
        backward_tol=tols["backward"],
        path=root / entry["file"],
        sha256=entry["sha256"],
        entry=entry,
    )


def _shape(fail, field: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise fail(f"{field} must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _shapes(fail, field: str, value: dict, allowed: tuple[str, ...] | None) -> dict:
    """A {name: shape} field; names must come from `allowed` (when given), in that order."""
    names = list(value)
    if allowed is not None:
        if not set(names) <= set(allowed):
            raise fail(f"{field} {sorted(set(names) - set(allowed))} are not among {list(allowed)}")
        if names != [n for n in allowed if n in value]:
            raise fail(f"{field} must be listed in the order {list(allowed)}")
    return {name: _shape(fail, f"{field}[{name!r}]", shape) for name, shape in value.items()}
