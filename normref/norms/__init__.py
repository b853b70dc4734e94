"""Normalizations: one module per op, each with `<op>`, `<op>_forward` and `<op>_backward`."""
