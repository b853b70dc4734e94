"""Fast kernels behind the op wrappers: numba/ (CPU) and cuda/ (CuPy raw CUDA kernels).

Nothing here is imported by ``import normref``; the dispatcher (normref/_dispatch.py) imports a
kernel module on first use.
"""
