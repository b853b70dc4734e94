"""normref's benchmarks: one runner (`python -m benchmarks`), one results table, timed against a
bandwidth floor measured in the same run (see run.py)."""
