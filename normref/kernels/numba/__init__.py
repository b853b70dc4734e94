"""CPU kernels compiled with Numba, grouped by family (norms.py: LayerNorm and RMSNorm)."""
