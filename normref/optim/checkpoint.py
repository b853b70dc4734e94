"""Optimizer checkpoints: `save(path, state)` / `load(path)` through NumPy's .npz, never pickle.

A checkpoint holds one tree: an optimizer state (any state NamedTuple normref defines, chains
included), or a params container. The file is a plain .npz (a zip of .npy files) with

- `__format__`: 0-d int64, the format version (FORMAT_VERSION);
- `__structure__`: 0-d unicode string, JSON describing the tree: state types by name, dicts, lists,
  tuples, None, and each array by the name of its .npy entry;
- `a0`, `a1`, ...: the arrays, stored as they are: dtype, byte order and every bit (NaN payloads
  included) survive the round trip, so resuming from a checkpoint continues the exact trajectory.

`load` reads with allow_pickle=False, refuses a file from a newer format version, a file that is not
a normref checkpoint, and one whose structure names arrays the file lacks, each with a clear error.
Arrays come back as NumPy arrays whatever library saved them (convert with your library's
`asarray`); the step counter comes back as the writable 0-d int64 array `update_` needs.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from normref.optim.base import STATE_TYPES

__all__ = ["FORMAT_VERSION", "save", "load"]

FORMAT_VERSION = 1
_FORMAT_KEY = "__format__"
_STRUCTURE_KEY = "__structure__"
# dtype kinds a .npy stores without pickle: bool, signed, unsigned, float, complex
_PLAIN_KINDS = "biufc"


def _path(op: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(
            f"{op}: path must end in .npz (checkpoints are NumPy .npz files), got {path}"
        )
    return path


def _to_numpy(x: Any, where: str) -> np.ndarray:
    """A host NumPy array with x's exact values and dtype."""
    if isinstance(x, np.ndarray):
        array = x
    else:
        array = _foreign_to_numpy(x, where)
    if array.dtype.kind not in _PLAIN_KINDS:
        raise TypeError(f"save: {where} has dtype {array.dtype}, which .npz stores only by pickle")
    return array


def _foreign_to_numpy(x: Any, where: str) -> np.ndarray:
    try:
        array = np.from_dlpack(x)  # torch CPU tensors, array-api-strict arrays: no copy, exact
    except (TypeError, AttributeError, RuntimeError, BufferError):
        try:
            array = np.asarray(x)
        except Exception as error:  # an array NumPy cannot read (a GPU array, bfloat16, ...)
            raise TypeError(
                f"save: cannot store {where} ({type(x).__name__}) as a NumPy array: {error}"
            ) from None
    return array


def _encode(tree: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """The JSON description of `tree`; its arrays are added to `arrays` under fresh names."""
    if tree is None:
        return None
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        name = type(tree).__name__
        if STATE_TYPES.get(name) is not type(tree):
            raise TypeError(f"save: {where} is a {name}, which is not a normref state type")
        return {
            "state": name,
            "fields": {f: _encode(getattr(tree, f), arrays, f"{where}.{f}") for f in tree._fields},
        }
    if isinstance(tree, dict):
        for key in tree:
            if not isinstance(key, str):
                raise TypeError(f"save: {where} has key {key!r}; checkpoint dict keys are strings")
        return {"dict": {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        kind = "list" if isinstance(tree, list) else "tuple"
        return {kind: [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(tree)]}
    if isinstance(tree, (bool, int, float, str)):
        raise TypeError(
            f"save: {where} is a Python {type(tree).__name__}; a checkpoint stores arrays "
            "(state.step is the 0-d int64 array init makes)"
        )
    name = f"a{len(arrays)}"
    arrays[name] = _to_numpy(tree, where)
    return {"array": name}


def save(path: str | os.PathLike, state: Any) -> None:
    """Write `state` (an optimizer state, or a params container) to the .npz file `path`.

    The file is written next to its destination and renamed into place, so an interrupted save
    never leaves a truncated checkpoint behind.
    """
    path = _path("save", path)
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(state, arrays, "state")
    payload = {
        _FORMAT_KEY: np.asarray(FORMAT_VERSION, dtype=np.int64),
        _STRUCTURE_KEY: np.asarray(json.dumps(structure)),
        **arrays,
    }
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:  # a file object: NumPy appends no second suffix
            np.savez(f, **payload)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _array_names(node: Any) -> list[str]:
    if node is None:
        return []
    if "array" in node:
        return [node["array"]]
    if "state" in node:
        return [n for child in node["fields"].values() for n in _array_names(child)]
    if "dict" in node:
        return [n for child in node["dict"].values() for n in _array_names(child)]
    children = node.get("list", node.get("tuple", []))
    return [n for child in children for n in _array_names(child)]


def _decode(node: Any, arrays: dict[str, np.ndarray], path: Path) -> Any:
    if node is None:
        return None
    if "array" in node:
        return arrays[node["array"]]
    if "state" in node:
        cls = STATE_TYPES.get(node["state"])
        if cls is None:
            raise ValueError(
                f"load: {path} holds a {node['state']}, a state type this normref does not know"
            )
        fields = node["fields"]
        if set(fields) != set(cls._fields):
            raise ValueError(
                f"load: {path} stores {node['state']} with fields {sorted(fields)}, "
                f"expected {list(cls._fields)}"
            )
        return cls(**{f: _decode(fields[f], arrays, path) for f in cls._fields})
    if "dict" in node:
        return {k: _decode(v, arrays, path) for k, v in node["dict"].items()}
    if "list" in node:
        return [_decode(v, arrays, path) for v in node["list"]]
    return tuple(_decode(v, arrays, path) for v in node["tuple"])


def load(path: str | os.PathLike) -> Any:
    """The tree `save` wrote to `path`, with NumPy arrays bit-identical to the saved ones."""
    path = _path("load", path)
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"load: {path} is not a readable .npz file: {error}") from None
    with data:
        names = set(data.files)
        if _FORMAT_KEY not in names or _STRUCTURE_KEY not in names:
            raise ValueError(f"load: {path} is not a normref checkpoint (no {_FORMAT_KEY} entry)")
        version = int(data[_FORMAT_KEY])
        if version > FORMAT_VERSION:
            raise ValueError(
                f"load: {path} has checkpoint format version {version}, newer than this normref "
                f"reads (up to {FORMAT_VERSION}); upgrade normref to read it"
            )
        if version < 1:
            raise ValueError(f"load: {path} has an invalid format version {version}")
        try:
            structure = json.loads(str(data[_STRUCTURE_KEY]))
            needed = _array_names(structure)
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise ValueError(f"load: {path} has a corrupt structure entry: {error}") from None
        missing = [n for n in needed if n not in names]
        if missing:
            raise ValueError(
                f"load: {path} is missing arrays {missing} that its structure refers to "
                "(a truncated or edited checkpoint)"
            )
        arrays = {n: data[n] for n in needed}
    return _decode(structure, arrays, path)
