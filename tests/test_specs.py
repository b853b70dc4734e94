"""Every registered op has a spec page (specs/<op>.md) that agrees with the code: its front matter
names the op, its defaults equal the registry's and the public functions' signatures, its variants
are the registry's, and every fixed section is there (specs/README.md, design.md §8)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import normref
from normref.registry import OPS, OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"

# The fixed sections, as `## ` headings, in this order (specs/README.md, style.md point 5).
SECTIONS = (
    "Definition",
    "Symbols",
    "Forward",
    "Backward derivation",
    "Numerics",
    "Conventions of peers",
    "Edge cases",
    "References",
)
FRONT_MATTER_KEYS = {"name", "family", "paper", "defaults", "variants"}
# Keyword arguments of the public functions that are not hyperparameters of the math.
NOT_HYPERPARAMS = {"out", "backend"}

_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_FENCE = re.compile(r"^```.*?^```[^\n]*$", re.DOTALL | re.MULTILINE)

NAMES = sorted(OPS)


def _spec_path(name: str) -> Path:
    return ROOT / OPS[name].spec


def _parse(path: Path) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a spec."""
    text = path.read_text(encoding="utf-8")
    match = _FRONT_MATTER.match(text)
    assert match, f"{path.relative_to(ROOT)}: must start with YAML front matter between '---' lines"
    meta = yaml.safe_load(match.group(1))
    assert isinstance(meta, dict), f"{path.relative_to(ROOT)}: front matter must be a mapping"
    return meta, text[match.end() :]


def _headings(body: str, level: int) -> list[str]:
    """The headings of exactly `level` (2 for '## '), ignoring fenced code blocks."""
    marker = "#" * level + " "
    return [
        line[len(marker) :].strip()
        for line in _FENCE.sub("", body).splitlines()
        if line.startswith(marker)
    ]


def _section(body: str, title: str) -> str:
    """The text of one `## ` section, up to the next `## ` heading (code blocks included)."""
    match = re.search(
        rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", body, re.DOTALL | re.MULTILINE
    )
    assert match, f"no '## {title}' section"
    return match.group(1)


def _as_yaml(value: Any) -> Any:
    """A registry value as YAML can write it: YAML has lists, not tuples."""
    if isinstance(value, (tuple, list)):
        return [_as_yaml(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_yaml(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (1e-5 is not 1e-05 as a string, None is not 0)."""
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", NAMES)
def test_every_op_has_its_spec(name):
    info = OPS[name]
    assert info.spec == f"specs/{name}.md", (
        f"{name}: spec path {info.spec!r} is not specs/{name}.md"
    )
    assert _spec_path(name).is_file(), f"{name}: {info.spec} does not exist"


@pytest.mark.parametrize("name", NAMES)
def test_front_matter_names_the_op(name):
    meta, _ = _parse(_spec_path(name))
    missing = FRONT_MATTER_KEYS - set(meta)
    assert not missing, f"{name}: front matter lacks {sorted(missing)}"
    assert meta["name"] == name
    assert meta["family"] == OPS[name].family
    assert isinstance(meta["paper"], str) and meta["paper"].strip(), f"{name}: `paper` is empty"


@pytest.mark.parametrize("name", NAMES)
def test_defaults_equal_the_registry(name):
    meta, _ = _parse(_spec_path(name))
    expected = _as_yaml(dict(OPS[name].hyperparams))
    assert meta["defaults"] == expected, (
        f"{name}: spec defaults {meta['defaults']} != registry {expected}"
    )
    for key, value in expected.items():
        got = meta["defaults"][key]
        assert _same(got, value), (
            f"{name}: default {key} is {got!r} ({type(got).__name__}) in the spec, "
            f"{value!r} ({type(value).__name__}) in the registry; write floats as 1.0e-5"
        )


def _public_functions(name: str) -> list[Any]:
    """The op's public entry points that take its hyperparameters: normref.<op> and its forward."""
    info = OPS[name]
    public = getattr(normref, name, None)
    assert public is info.function, f"normref.{name} is not the registry's function for {name}"
    return [info.function, info.forward]


@pytest.mark.parametrize("name", NAMES)
def test_defaults_equal_the_signatures(name):
    meta, _ = _parse(_spec_path(name))
    hyper = dict(OPS[name].hyperparams)
    for fn in _public_functions(name):
        where = f"{fn.__module__}.{fn.__name__}"
        params = inspect.signature(fn).parameters
        keyword = {p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        keyword -= NOT_HYPERPARAMS
        assert keyword == set(hyper), (
            f"{where}: keyword-only arguments {sorted(keyword)} "
            f"!= registry hyperparameters {sorted(hyper)}"
        )
        for key, value in hyper.items():
            default = params[key].default
            assert _same(default, value), (
                f"{where}: {key}={default!r} in the signature, {value!r} in the registry"
            )
            assert _same(_as_yaml(default), meta["defaults"][key]), (
                f"{where}: {key}={default!r} in the signature, "
                f"{meta['defaults'][key]!r} in {OPS[name].spec}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_variants_equal_the_registry(name):
    meta, _ = _parse(_spec_path(name))
    variants = meta["variants"]
    assert isinstance(variants, list), f"{name}: `variants` must be a list"
    names = [v.get("name") for v in variants]
    assert len(names) == len(set(names)), f"{name}: duplicate variant names {names}"
    assert set(names) == {v.name for v in OPS[name].variants}
    for v in variants:
        assert isinstance(v.get("peers"), list) and v["peers"], f"{name}/{v['name']}: no peers"
        assert all(isinstance(p, str) and p.strip() for p in v["peers"]), (
            f"{name}/{v['name']}: peers"
        )
        assert isinstance(v.get("description"), str) and v["description"].strip(), (
            f"{name}/{v['name']}: no description"
        )


@pytest.mark.parametrize("name", NAMES)
def test_fixed_sections_in_order(name):
    _, body = _parse(_spec_path(name))
    found = [h for h in _headings(body, 2) if h in SECTIONS]
    assert found == list(SECTIONS), (
        f"{name}: sections {found}, expected {list(SECTIONS)} in this order"
    )


@pytest.mark.parametrize("name", NAMES)
def test_each_variant_is_explained(name):
    """Every registered variant has its own subsection under the peers' conventions."""
    _, body = _parse(_spec_path(name))
    conventions = _section(body, "Conventions of peers")
    titles = set(_headings(conventions, 4))
    for variant in OPS[name].variants:
        assert f"`{variant.name}`" in titles, (
            f"{name}: no '#### `{variant.name}`' under Conventions of peers"
        )


@pytest.mark.parametrize("name", NAMES)
def test_symbols_name_the_gradients(name):
    """The Symbols table names dy, every differentiable input and its gradient."""
    _, body = _parse(_spec_path(name))
    symbols = _section(body, "Symbols")
    info = OPS[name]
    needed = ["dy"] + [f"{s}" for s in info.differentiable] + [f"d{s}" for s in info.differentiable]
    for code_name in needed:
        assert f"`{code_name}`" in symbols, f"{name}: `{code_name}` missing from the Symbols table"


def test_no_spec_without_an_op():
    specs = {p.stem for p in SPECS.glob("*.md") if p.name not in {"README.md", "golden-format.md"}}
    # optimizers, transforms and schedules are checked in tests/optim/test_optim_specs.py
    registered = set(OPS) | {Path(info.spec).stem for info in OPTIMIZERS.values()}
    orphans = specs - registered
    assert not orphans, f"specs for ops that are not registered: {sorted(orphans)}"


def test_readme_indexes_every_spec_and_section():
    readme = (SPECS / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"({name}.md)" in readme, f"specs/README.md does not link {name}.md"
    for title in SECTIONS:
        assert f"## {title}" in readme, (
            f"specs/README.md does not describe the section '## {title}'"
        )
