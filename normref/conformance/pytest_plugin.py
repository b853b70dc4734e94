"""pytest plugin: run normref's golden cases against an adapter inside another project's tests.

    pytest --normref-adapter=my_pkg.adapter              # one test per golden / generated case
    pytest --normref-adapter=my_pkg.adapter --normref-ops='layer_norm,adam*'

Installed normref registers this module under the `pytest11` entry point `normref`; without the
install, load it with `-p normref.conformance.pytest_plugin`. TARGET takes what `normref verify`
takes (normref/conformance/adapter.py): `package.module`, `package.module:attribute`, a path to a
`.py` file, `torch` or `jax`. A failing test prints what differs and the diagnosis (which
convention variant, if any, the case matches); a case the adapter does not provide is skipped, and
an op it lacks is one skipped test. Each case is judged on its own, as `normref verify --strict`
judges it: a float16 case off by rounding fails here even where verify's row says PRECISION
(select dtypes with -k, e.g. `-k "not float16"`). Without the option the plugin adds nothing and
imports nothing heavier than pytest itself.
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["pytest_addoption", "pytest_collection_modifyitems"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("normref", "normref conformance")
    group.addoption(
        "--normref-adapter",
        action="append",
        default=[],
        metavar="TARGET",
        help="run normref's golden cases on this adapter (repeatable)",
    )
    group.addoption(
        "--normref-ops",
        default="*",
        metavar="PATTERNS",
        help="comma-separated fnmatch patterns of the ops, optimizers, transforms and schedules "
        "to run (default: all)",
    )


class CaseFailure(Exception):
    """A case that ran and does not match; its text is the whole report."""


class NormrefCase(pytest.Item):
    """One golden case (or generated case: trajectory, transform, schedule) on one adapter."""

    def __init__(self, *, backend: Any, case: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend
        self.case = case

    def runtest(self) -> None:
        from normref.conformance.diagnosis import diagnose
        from normref.conformance.runner import FAIL, NOT_PROVIDED, _run_one

        result = _run_one(self.backend, self.case, self.case.arrays())
        if result.verdict == NOT_PROVIDED:
            pytest.skip(result.message)
        if result.verdict == FAIL:
            lines = [f"{self.case.id} on {self.backend.name}: {result.message}"]
            lines += [
                f"  {key}: {error:.3g}x the tolerance" for key, error in result.errors.items()
            ]
            lines.append(f"diagnosis: {diagnose([result]).summary}")
            raise CaseFailure("\n".join(lines))

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"normref case {self.case.id}"


class NotProvidedOp(pytest.Item):
    """An op, optimizer, transform or schedule the adapter lacks: one skipped test, so the gap
    shows in the summary."""

    def runtest(self) -> None:
        pytest.skip(f"{self.name} is not provided by the adapter")

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"normref {self.name}"


class AdapterCollector(pytest.Collector):
    """The tests of one adapter, named `normref[TARGET]::<case id>`."""

    def __init__(self, *, target: Any, ops: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.ops = ops

    def collect(self) -> list[pytest.Item]:
        from normref.conformance.runner import select
        from normref.conformance.trajectories import load_cases
        from normref.golden.store import load_index

        backend = self.target.backends[0]
        cases = [c for c in load_index() if select(c.op, self.ops)]
        cases += [c for c in load_cases() if select(c.op, self.ops)]
        provided = backend.provided
        items: list[pytest.Item] = []
        absent: dict[str, None] = {}
        for case in cases:
            if case.op in provided:
                items.append(
                    NormrefCase.from_parent(self, name=case.id, backend=backend, case=case)
                )
            else:
                absent[case.op] = None
        items += [NotProvidedOp.from_parent(self, name=op) for op in absent]
        return items


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect, so that they apply to these tests too
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    targets = config.getoption("normref_adapter")
    if not targets:
        return
    from normref.conformance.adapter import TargetError, load_target

    ops = [p.strip() for p in config.getoption("normref_ops").split(",") if p.strip()] or ["*"]
    for spec in targets:
        if spec == "normref":
            raise pytest.UsageError("--normref-adapter takes an adapter, not normref itself")
        try:
            target = load_target(spec)
        except TargetError as e:
            raise pytest.UsageError(f"--normref-adapter={spec}: {e}") from None
        name = f"normref[{spec}]"  # the node id too: not "::normref[...]" under the session
        collector = AdapterCollector.from_parent(
            session, name=name, nodeid=name, target=target, ops=ops
        )
        items.extend(collector.collect())
