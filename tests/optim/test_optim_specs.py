"""Every entry of normref.registry.OPTIMIZERS has a spec that agrees with the code: front matter
names it, its defaults equal the registry's and the factory's signature, its variants are the
registry's, the fixed sections are there in order, and every variant is explained. Also runs the
docstring examples of normref.optim."""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from normref.registry import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[2]
_UPDATE_SECTIONS = (
    "Definition",
    "Symbols",
    "Update",
    "Numerics",
    "Conventions of peers",
    "Edge cases",
    "References",
)
SECTIONS = {
    "optimizer": _UPDATE_SECTIONS,
    "gradient_transform": _UPDATE_SECTIONS,
    "schedule": (
        "Definition",
        "Symbols",
        "Values",
        "Numerics",
        "Conventions of peers",
        "Edge cases",
        "References",
    ),
}
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_FENCE = re.compile(r"^```.*?^```[^\n]*$", re.DOTALL | re.MULTILINE)
NAMES = sorted(OPTIMIZERS)


def _parse(spec: str) -> tuple[dict[str, Any], str]:
    text = (ROOT / spec).read_text(encoding="utf-8")
    match = _FRONT_MATTER.match(text)
    assert match, f"{spec}: must start with YAML front matter between '---' lines"
    return yaml.safe_load(match.group(1)), text[match.end() :]


def _shared(meta: dict[str, Any], name: str) -> bool:
    """A spec for several entries (clipping.md, schedules.md) keys its defaults by entry name."""
    return meta["name"] != name


def _defaults(meta: dict[str, Any], name: str) -> dict[str, Any]:
    return meta["defaults"][name] if _shared(meta, name) else meta["defaults"]


def _required(meta: dict[str, Any], name: str) -> list[str]:
    required = meta.get("required", [])
    return required.get(name, []) if isinstance(required, dict) else required


def _as_yaml(value: Any) -> Any:
    """A Python value as YAML writes it: lists, not tuples."""
    if isinstance(value, (tuple, list)):
        return [_as_yaml(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_yaml(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _headings(body: str, level: int) -> list[str]:
    marker = "#" * level + " "
    lines = _FENCE.sub("", body).splitlines()
    return [line[len(marker) :].strip() for line in lines if line.startswith(marker)]


def _section(body: str, title: str) -> str:
    match = re.search(
        rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", body, re.DOTALL | re.MULTILINE
    )
    assert match, f"no '## {title}' section"
    return match.group(1)


@pytest.mark.parametrize("name", NAMES)
def test_front_matter_names_the_entry(name):
    info = OPTIMIZERS[name]
    assert (ROOT / info.spec).is_file(), f"{name}: {info.spec} does not exist"
    meta, _ = _parse(info.spec)
    assert {"name", "family", "paper", "defaults", "variants"} <= set(meta)
    if _shared(meta, name):
        assert name in meta["defaults"], f"{name}: not among the entries of {info.spec}"
    else:
        assert info.spec == f"specs/{name}.md"
    assert meta["family"] == info.family
    assert isinstance(meta["paper"], str) and meta["paper"].strip()


@pytest.mark.parametrize("name", NAMES)
def test_defaults_equal_the_registry_and_the_signature(name):
    info = OPTIMIZERS[name]
    meta, _ = _parse(info.spec)
    spec_defaults = _defaults(meta, name)
    assert spec_defaults == _as_yaml(dict(info.hyperparams)), f"{name}: spec != registry"
    for key, value in info.hyperparams.items():
        assert _same(spec_defaults[key], _as_yaml(value)), f"{name}: {key} (write floats as 1.0e-3)"
    parameters = inspect.signature(info.factory).parameters
    with_default = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    without = [k for k, p in parameters.items() if p.default is p.empty]
    assert with_default.keys() == dict(info.hyperparams).keys()
    for key, value in info.hyperparams.items():
        assert _same(with_default[key], value), f"{name}: {key}={with_default[key]!r} in the code"
    assert tuple(without) == info.required == tuple(_required(meta, name))


@pytest.mark.parametrize("name", NAMES)
def test_variants_equal_the_registry(name):
    info = OPTIMIZERS[name]
    meta, body = _parse(info.spec)
    variants = [v for v in meta["variants"] if not _shared(meta, name) or v.get("of") == name]
    names = [v["name"] for v in variants]
    assert len(names) == len(set(names)) and set(names) == {v.name for v in info.variants}
    for v in variants:
        assert isinstance(v.get("peers"), list) and all(
            isinstance(p, str) and p for p in v["peers"]
        )
        assert isinstance(v.get("description"), str) and v["description"].strip()
    titles = set(_headings(_section(body, "Conventions of peers"), 4))
    for v in info.variants:
        assert f"`{v.name}`" in titles, f"{name}: no '#### `{v.name}`' under Conventions of peers"


@pytest.mark.parametrize("spec", sorted({info.spec for info in OPTIMIZERS.values()}))
def test_fixed_sections_in_order(spec):
    meta, body = _parse(spec)
    expected = SECTIONS[meta["family"]]
    found = [h for h in _headings(body, 2) if h in expected]
    assert found == list(expected), f"{spec}: sections {found}, expected {list(expected)}"


@pytest.mark.parametrize(
    "module",
    ["normref.optim.sgd", "normref.optim.adam", "normref.optim.clipping"],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
