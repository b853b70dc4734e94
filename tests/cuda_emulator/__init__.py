"""The CPU emulator of the CUDA thread model (include/cuda_emu.h), its builder and loader
(emulator.py), and the cases the CUDA kernel tests share (cases.py)."""
