"""Raw CUDA kernels (*.cu, reduce.cuh) and their CuPy launchers (launch.py).

This package imports nothing: CuPy loads on the first kernel launch (see launch.py).
"""
