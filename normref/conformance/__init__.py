"""Conformance: run the golden cases on an implementation and say whether it computes the same
function (design.md §7). Today's target is `normref` itself (this install's fast backends);
`normref verify` is the command-line entry."""

from normref.conformance.runner import (
    Backend,
    CaseResult,
    NormrefBackend,
    Outcome,
    Report,
    Row,
    normref_backends,
    verify,
)

__all__ = [
    "Backend",
    "CaseResult",
    "NormrefBackend",
    "Outcome",
    "Report",
    "Row",
    "normref_backends",
    "verify",
]
