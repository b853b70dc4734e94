"""Conformance: run the golden cases on an implementation and say whether it computes the same
function, and if not which convention it follows instead (design.md §7). `normref verify` is the
command-line entry; the pieces:

- runner: backends, `verify`, the report, and the target `normref` (this install's fast backends);
- adapter: the adapter protocol for other implementations, and `load_target` (torch, jax, a
  user's module); torch_adapter, jax_adapter: the built-in peers (imported only when asked for);
- trajectories: the generated cases of optimizers, gradient transforms and schedules;
  diagnosis: which variant a failure matches;
- display: the rich table (imported by the command only); pytest_plugin: `--normref-adapter`.

Importing this package loads NumPy and normref only: never rich, torch or jax.
"""

from normref.conformance.runner import (
    NOT_GIVEN,
    Backend,
    CaseResult,
    NormrefBackend,
    NotProvided,
    Outcome,
    Report,
    Row,
    normref_backends,
    verify,
)

__all__ = [
    "NOT_GIVEN",
    "Backend",
    "CaseResult",
    "NormrefBackend",
    "NotProvided",
    "Outcome",
    "Report",
    "Row",
    "normref_backends",
    "verify",
]
