"""The `normref` command.

    normref verify [normref] [-v] [--ops PATTERN] [--json FILE]
        check this install's fast backends against every golden case
    normref golden build [--out DIR]
        regenerate the golden cases (default: the package's data directory)

Exit status: 0 when everything passed, 1 on any failure, 2 for a usage error. Heavy imports (rich,
the runner, the generator) happen inside the command that needs them, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "golden_main"]

TARGETS = ("normref",)  # torch, jax and package.module:adapter come with their adapters


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "normref",
        description="normref: reference normalizations, golden cases and conformance checks.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    verify = commands.add_parser("verify", help="check an implementation against the golden cases")
    verify.add_argument(
        "target",
        nargs="?",
        default="normref",
        choices=TARGETS,
        help="what to check; 'normref' (default): this install's fast backends",
    )
    verify.add_argument("-v", "--verbose", action="store_true", help="one row per case as well")
    verify.add_argument(
        "--ops", default="*", metavar="PATTERN", help="only ops matching this fnmatch pattern"
    )
    verify.add_argument(
        "--json",
        metavar="FILE",
        # opened while parsing, so an unwritable path is a usage error before anything runs
        type=argparse.FileType("w", encoding="utf-8"),
        help="write every case and its errors to FILE",
    )
    # usage errors found after parsing (--ops matching nothing) are reported by `verify`'s parser
    verify.set_defaults(handler=lambda args, _: _verify(args, verify))

    golden = commands.add_parser("golden", help="golden cases")
    _add_golden_commands(golden)
    return parser


def _add_golden_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="golden_command", metavar="COMMAND")
    build = commands.add_parser("build", help="regenerate the golden cases")
    build.add_argument("--out", metavar="DIR", help="where to write (default: the package data)")
    build.set_defaults(handler=_golden_build)
    parser.set_defaults(handler=lambda args, _: _missing_command(parser))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    return _run(_parser(prog), argv)


def golden_main(argv: Sequence[str] | None = None) -> int:
    """`python -m normref.golden ...`: the `normref golden` commands under their own name."""
    parser = argparse.ArgumentParser(
        prog="python -m normref.golden", description="normref golden cases."
    )
    _add_golden_commands(parser)
    return _run(parser, argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            return _missing_command(parser)
        return handler(args, parser)
    except SystemExit as e:  # argparse exits on usage errors and --help; report it as a status
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def _missing_command(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: a command is required", file=sys.stderr)
    return 2


def _golden_build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from normref.golden.generate import build
    from normref.golden.store import DATA_DIR

    out = Path(args.out) if args.out else DATA_DIR
    index = build(out)
    size = sum((out / c["file"]).stat().st_size for c in index["cases"])
    print(f"wrote {len(index['cases'])} golden cases to {out} ({size / 1024:.0f} KiB)")
    return 0


def _verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from normref import registry
    from normref.conformance.runner import normref_backends, verify
    from normref.golden.store import GoldenError

    if not any(fnmatch.fnmatchcase(name, args.ops) for name in registry.OPS):
        parser.error(f"--ops {args.ops!r} matches no op; ops: {', '.join(registry.OPS)}")
    backends, notes = normref_backends()
    try:
        report = verify(backends, ops=args.ops, notes=notes, target=args.target)
    except GoldenError as e:
        print(f"normref verify: {e}", file=sys.stderr)
        if args.json:
            args.json.close()
        return 1
    _print_report(report, verbose=args.verbose)
    if args.json:
        with args.json as f:
            json.dump(report.to_json(), f, indent=1)
            f.write("\n")
    return 0 if report.ok else 1


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return "inf" if math.isinf(x) else f"{x:.3g}"


_STYLE = {"PASS": "green", "FAIL": "bold red", "UNAVAILABLE": "yellow"}


def _print_report(report: Any, *, verbose: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        # Rich assumes 80 columns when writing to a pipe or file; a log can afford a full row.
        console.width = max(console.width, 120)
    table = Table(title=f"normref verify {report.target}", title_justify="left")
    table.add_column("op")
    table.add_column("backend")
    table.add_column("cases", justify="right")
    table.add_column("worst error (× tol)", justify="right")
    table.add_column("verdict")
    for row in report.rows:
        style = _STYLE.get(row.verdict, "")
        table.add_row(
            row.op, row.backend, str(row.cases), _fmt(row.worst), f"[{style}]{row.verdict}[/]"
        )
        if verbose:
            for case in report.cases:
                if (case.op, case.backend) != (row.op, row.backend):
                    continue
                worst = _fmt(case.worst)
                if case.worst_in is not None:
                    worst += f" ({case.worst_in})"
                table.add_row(
                    f"  {case.id}",
                    "",
                    "",
                    worst,
                    f"[{_STYLE.get(case.verdict, '')}]{case.verdict}[/]",
                    style="dim",
                )
    console.print(table)
    for note in report.notes:
        console.print(note, markup=False)
    for row in report.rows:
        for message in row.messages:
            console.print(f"{row.verdict} {row.op} [{row.backend}]: {message}", markup=False)
    failed = [f"{r.op} [{r.backend}]" for r in report.rows if r.verdict != "PASS"]
    total = sum(r.cases for r in report.rows)
    if report.ok:
        console.print(f"[green]all {total} case runs passed[/]")
    elif not report.rows:
        console.print("[bold red]no golden case ran[/]")
    else:
        console.print(f"[bold red]not passed:[/] {escape(', '.join(failed))}")


if __name__ == "__main__":
    sys.exit(main())
