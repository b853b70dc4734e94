"""Golden cases: inputs, expected outputs and gradients from the float64 reference, shipped with the
package (design.md §7). `load_index()` lists them, `GoldenCase.arrays()` reads one (hash-checked);
`python -m normref.golden build` (or `normref golden build`) regenerates them.

The generator is imported on demand (`normref.golden.generate`): loading cases needs only the store.
"""

from normref.golden.store import DATA_DIR, GoldenCase, GoldenError, load_cases, load_index
from normref.golden.tolerances import TOLERANCES, Tolerance, scaled_error, tolerance

__all__ = [
    "DATA_DIR",
    "GoldenCase",
    "GoldenError",
    "TOLERANCES",
    "Tolerance",
    "load_cases",
    "load_index",
    "scaled_error",
    "tolerance",
]
