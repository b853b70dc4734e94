"""The `normref` command.

    normref verify [TARGET] [-v] [--strict] [--ops PATTERN] [--skip PATTERN] [--dtype DTYPE]
                   [--json FILE]
        check an implementation against every golden case (and optimizer trajectory) it provides;
        TARGET: normref (default: this install's fast backends), torch, jax, package.module,
        package.module:attribute, or path/to/adapter.py (normref/conformance/adapter.py)
    normref golden build [--out DIR]
        regenerate the golden cases (default: the package's data directory)
    normref golden export DIR
        write every case as plain .npy files with a JSON manifest (specs/golden-format.md)

Exit status: 0 when everything the target provides passed (PRECISION rows, where float64 passes
and only lower precisions are off by rounding, pass unless --strict; the target normref is always
strict), 1 on any failure, 2 for a usage error (an unknown option, a target that cannot be
imported or is no adapter, a pattern matching nothing).
Heavy imports (rich, the runner, torch, the generator) happen inside the command that needs them,
so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "golden_main"]


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
        help="what to check: normref (default: this install's fast backends), torch, jax, "
        "package.module[:attribute] or path/to/adapter.py",
    )
    verify.add_argument("-v", "--verbose", action="store_true", help="one row per case as well")
    verify.add_argument(
        "--strict",
        action="store_true",
        help="fail PRECISION rows too (float64 passes, a lower precision is off by rounding)",
    )
    verify.add_argument(
        "--ops",
        action="append",
        metavar="PATTERN",
        help="only ops and optimizers matching an fnmatch pattern (repeat, or comma-separate)",
    )
    verify.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out ops and optimizers matching a pattern (repeat, or comma-separate)",
    )
    verify.add_argument(
        "--dtype",
        action="append",
        metavar="DTYPE",
        help="only cases of this dtype: float64, float32, float16 (repeat, or comma-separate)",
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
    export = commands.add_parser(
        "export", help="write every case as .npy files + manifest.json (specs/golden-format.md)"
    )
    export.add_argument("dir", metavar="DIR", help="where to write (empty, or an earlier export)")
    export.set_defaults(handler=_golden_export)
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


def _golden_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from normref.golden.export import ExportError, export

    try:
        manifest = export(args.dir)
    except ExportError as e:
        print(f"normref golden export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(manifest['cases'])} cases to {args.dir} (manifest.json)")
    return 0


def _patterns(values: Sequence[str] | None, default: list[str]) -> list[str]:
    """Repeated and comma-separated option values, flattened."""
    if not values:
        return default
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from normref import registry
    from normref.conformance.adapter import TargetError, load_target
    from normref.conformance.runner import select, verify
    from normref.conformance.trajectories import optimizers
    from normref.golden.store import GoldenError
    from normref.golden.tolerances import TOLERANCES

    ops = _patterns(args.ops, ["*"])
    skip = _patterns(args.skip, [])
    dtypes = _patterns(args.dtype, []) or None
    bad = [d for d in dtypes or () if d not in TOLERANCES]
    if bad:
        parser.error(f"--dtype {', '.join(bad)}: dtypes are {', '.join(TOLERANCES)}")
    try:
        target = load_target(args.target)
    except TargetError as e:
        parser.error(str(e))
    names = list(registry.OPS) + (list(optimizers()) if target.optimizers else [])
    if not any(select(name, ops, skip) for name in names):
        parser.error(
            f"--ops {','.join(ops)} --skip {','.join(skip) or '-'} selects nothing; "
            f"names: {', '.join(names)}"
        )

    from normref.conformance.display import print_report, progress_bar

    try:
        with progress_bar() as progress:
            report = verify(
                target.backends,
                ops=ops,
                skip=skip,
                dtypes=dtypes,
                notes=target.notes,
                target=target.label,
                trajectories=target.optimizers,
                strict=args.strict or target.strict,
                progress=progress,
            )
    except GoldenError as e:
        print(f"normref verify: {e}", file=sys.stderr)
        if args.json:
            args.json.close()
        return 1
    print_report(report, verbose=args.verbose)
    if args.json:
        with args.json as f:
            json.dump(report.to_json(), f, indent=1)
            f.write("\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
