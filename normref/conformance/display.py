"""How `normref verify` shows a report: a progress bar while the cases run, then a rich table
with one row per op (cases, worst error in units of the tolerance, verdict, diagnosis).
Imported only by the command, so `import normref` never loads rich."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from normref.conformance.runner import FAIL, NOT_PROVIDED, PASS, PRECISION, Report

__all__ = ["console", "print_report", "progress_bar"]

_STYLE = {
    PASS: "green",
    PRECISION: "yellow",
    FAIL: "bold red",
    "UNAVAILABLE": "yellow",
    NOT_PROVIDED: "dim",
}


def console(stderr: bool = False) -> Console:
    out = Console(highlight=False, stderr=stderr)
    if not out.is_terminal:
        # Rich assumes 80 columns when writing to a pipe or file; a log can afford a full row.
        out.width = max(out.width, 160)
    return out


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A `progress(done, total, label)` callback drawing a bar on stderr; it draws nothing when
    stderr is not a terminal (a log or a test), and disappears when the run ends."""
    bar = Progress(
        TextColumn("verify"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console(stderr=True),
        transient=True,
    )
    task = bar.add_task("", total=None)

    def update(done: int, total: int, label: str) -> None:
        bar.update(task, completed=done, total=total, description=escape(label))

    with bar:
        yield update


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _row_note(row: Any) -> str:
    """The last column: the diagnosis of a failure, else what limits a pass."""
    if row.verdict == FAIL:
        return row.diagnosis or (row.messages[0] if row.messages else "")
    if row.verdict == NOT_PROVIDED or row.verdict == "UNAVAILABLE":
        return row.messages[0] if row.messages else ""
    notes = (
        ["float64 passes; a lower precision is off by rounding"] if row.verdict == PRECISION else []
    )
    if row.not_provided:
        notes.append(f"{row.not_provided} case(s) not provided")
    if row.checked == "forward":
        notes.append("forward only")
    return "; ".join(notes)


def print_report(report: Report, *, verbose: bool, out: Console | None = None) -> None:
    out = out or console()
    table = Table(title=f"normref verify {report.target}", title_justify="left")
    table.add_column("op")
    table.add_column("backend")
    table.add_column("cases", justify="right")
    table.add_column("worst (× tol)", justify="right")
    table.add_column("verdict")
    table.add_column("diagnosis / notes", overflow="fold")
    for row in report.rows:
        style = _STYLE.get(row.verdict, "")
        table.add_row(
            row.op,
            escape(row.backend),
            str(row.cases),
            _fmt(row.worst),
            f"[{style}]{row.verdict}[/]",
            escape(_row_note(row)),
        )
        if verbose:
            for case in report.cases:
                if (case.op, case.backend) != (row.op, row.backend):
                    continue
                worst = _fmt(case.worst)
                if case.worst_in is not None and case.worst is not None:
                    worst += f" ({case.worst_in})"
                table.add_row(
                    f"  {case.id}",
                    "",
                    "",
                    escape(worst),
                    f"[{_STYLE.get(case.verdict, '')}]{case.verdict}[/]",
                    escape(case.message if case.verdict != PASS else ""),
                    style="dim",
                )
    out.print(table)
    for note in report.notes:
        out.print(note, markup=False)
    for row in report.rows:
        if row.verdict in (PASS, NOT_PROVIDED):
            continue
        for message in row.messages:
            out.print(f"{row.verdict} {row.op} [{row.backend}]: {message}", markup=False)
    failed = [
        f"{r.op} [{r.backend}]"
        for r in report.rows
        if r.verdict not in report.passing + (NOT_PROVIDED,)
    ]
    rounded = [r.op for r in report.rows if r.verdict == PRECISION]
    absent = [r.op for r in report.rows if r.verdict == NOT_PROVIDED]
    total = sum(r.cases for r in report.rows)
    if absent:
        out.print(f"not provided by the target: {', '.join(absent)}", markup=False)
    if rounded:
        out.print(
            f"[yellow]precision only[/] (float64 passes, lower precisions round differently; "
            f"{'failures under' if report.strict else 'passing without'} --strict): "
            f"{escape(', '.join(rounded))}"
        )
    if report.ok and rounded:
        out.print(f"[green]passed:[/] {total} case runs, with the precision differences above")
    elif report.ok:
        out.print(f"[green]all {total} case runs passed[/]")
    elif not any(r.cases for r in report.rows):
        out.print("[bold red]no golden case ran[/]")
    else:
        out.print(f"[bold red]not passed:[/] {escape(', '.join(failed))}")
