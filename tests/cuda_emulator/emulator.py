"""Build the CUDA sources as C++ against include/cuda_emu.h and run their kernels through ctypes.

`build(source, names)` compiles one .cu file with g++ into a shared library that exports one C
entry per template instantiation (`names`: the same name expressions cupy.RawModule gets), and
returns an `EmulatedModule` whose `get_function(name)` is called like a CuPy kernel:
``kernel(grid, block, args)``. `launcher_runtime()` builds every module launch.py uses and returns
a runtime for `normref.kernels.cuda.launch.bind`, so the emulator runs launch.py's own launch
sequence and geometry with NumPy arrays.

Libraries land in build/ (gitignored), named by a hash of everything they are built from, so a test
session compiles only what changed; a file is moved into place whole, so concurrent sessions are
safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
INCLUDE = HERE / "include"
BUILD = HERE / "build"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++20", "-O1", "-pthread", "-shared", "-fPIC"]
CXXFLAGS += ["-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas"]  # #pragma unroll is nvcc's

_ERR_LEN = 512


def compiler() -> str | None:
    """The C++ compiler's path, or None when there is none."""
    return shutil.which(CXX)


def wrapper_source(source: Path, names: Sequence[str]) -> str:
    """The C++ translation unit: the .cu file, one `emu_k<i>` entry per name, and the float16
    conversions (exported for the emulator's own tests)."""
    lines = [
        '#include "cuda_emu.h"',
        f'#include "{source.as_posix()}"',
        "",
        'extern "C" {',
        "void emu_float_to_half(const float* in, std::uint16_t* out, long long n) {",
        "    for (long long i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).bits;",
        "}",
        "void emu_half_to_float(const std::uint16_t* in, float* out, long long n) {",
        "    for (long long i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});",
        "}",
        "void emu_set_jitter(int microseconds, unsigned seed) {",
        "    emu::jitter_us = microseconds;",
        "    emu::jitter_seed = seed;",
        "}",
    ]
    for i, name in enumerate(names):
        lines += [
            f"int emu_k{i}(const unsigned* dims, int nargs, void** args, const char* kinds,",
            "            const long long* sizes, char* err, int err_len) {",
            f"    return emu::launch(&{name}, dims, nargs, args, kinds, sizes, err, err_len);",
            "}",
        ]
    lines.append('}  // extern "C"')
    return "\n".join(lines) + "\n"


def _fingerprint(source: Path, wrapper: str, depends: Sequence[Path]) -> str:
    digest = hashlib.sha256(wrapper.encode())
    digest.update(" ".join([CXX, *CXXFLAGS]).encode())
    inputs = sorted(source.parent.glob("*.cu*")) + sorted(INCLUDE.glob("*.h"))
    inputs += [Path(p) for p in depends]
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class Build:
    """A compilation that may still be running: `result()` waits and loads the library.

    The library is rebuilt when the wrapper, the flags, the emulator headers, a .cu/.cuh file
    next to `source` or a file in `depends` changes."""

    def __init__(
        self,
        source: Path,
        names: Sequence[str],
        build_dir: Path = BUILD,
        depends: Sequence[Path] = (),
    ) -> None:
        self.names = tuple(names)
        wrapper = wrapper_source(source, self.names)
        build_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{source.stem}-{_fingerprint(source, wrapper, depends)}"
        self.library = build_dir / f"{stem}.so"
        self._process = None
        if self.library.exists():
            return
        for old in build_dir.glob(f"{source.stem}-*"):  # earlier versions, unused for an hour
            if old.stem != stem and time.time() - old.stat().st_mtime > 3600:
                old.unlink(missing_ok=True)
        cpp = build_dir / f"{stem}.cpp"  # kept, to read what was compiled
        fd, tmp = tempfile.mkstemp(suffix=".cpp", dir=build_dir)
        with os.fdopen(fd, "w") as file:
            file.write(wrapper)
        os.replace(tmp, cpp)  # whole, even if another session writes the same file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=build_dir)
        os.close(fd)
        self._tmp = Path(tmp)
        command = [CXX, *CXXFLAGS, f"-I{INCLUDE}", str(cpp), "-o", tmp]
        self._command = command
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def result(self) -> EmulatedModule:
        if self._process is not None:
            log, _ = self._process.communicate()
            if self._process.returncode != 0:
                self._tmp.unlink(missing_ok=True)
                raise RuntimeError(f"{' '.join(self._command)} failed:\n{log}")
            os.replace(self._tmp, self.library)
            self._process = None
        return EmulatedModule(ctypes.CDLL(str(self.library)), self.names)


def build(
    source: Path, names: Sequence[str], build_dir: Path = BUILD, depends: Sequence[Path] = ()
) -> EmulatedModule:
    return Build(source, names, build_dir, depends).result()


class EmulatedModule:
    """The kernels of one built source, looked up by name expression like cupy.RawModule's."""

    def __init__(self, library: ctypes.CDLL, names: Sequence[str]) -> None:
        self.library = library
        self._index = {name: i for i, name in enumerate(names)}
        for name in ("emu_float_to_half", "emu_half_to_float"):  # (in, out, count)
            getattr(library, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
            getattr(library, name).restype = None
        library.emu_set_jitter.argtypes = [ctypes.c_int, ctypes.c_uint]
        library.emu_set_jitter.restype = None

    def set_jitter(self, microseconds: int, seed: int = 0) -> None:
        """After every __syncthreads, each warp sleeps a pseudo-random 0..microseconds (the same
        for its 32 lanes; the pattern depends on `seed`): warps drift apart as on a GPU, which
        exposes missing barriers. 0 turns it off. Applies to every user of this library."""
        self.library.emu_set_jitter(microseconds, seed)

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self._index:
            raise KeyError(f"{name!r} was not instantiated in this module")
        return EmulatedKernel(name, getattr(self.library, f"emu_k{self._index[name]}"))


def _argument(value: Any) -> tuple[Any, bytes, int]:
    """(ctypes holder of the value, kind, size) for one kernel argument, as emu::launch checks."""
    if value is None:
        return ctypes.c_void_p(None), b"p", 0
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError("kernels index flat memory: pass C-contiguous arrays")
        return ctypes.c_void_p(value.ctypes.data), b"p", value.itemsize
    if isinstance(value, np.generic):
        kind = b"i" if np.issubdtype(value.dtype, np.integer) else b"f"
        if kind == b"f" and not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"unsupported scalar type {value.dtype}")
        holder = (ctypes.c_char * value.itemsize).from_buffer_copy(value.tobytes())
        return holder, kind, value.itemsize
    raise TypeError(
        f"pass every scalar with an explicit NumPy type (np.int32, np.float32, ...), "
        f"got {type(value).__name__}: CuPy would send a Python int as 64 bits"
    )


class EmulatedKernel:
    def __init__(self, name: str, entry: Any) -> None:
        self.name = name
        self._entry = entry

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any]) -> None:
        dims = (ctypes.c_uint * 6)(*(tuple(grid) + (1, 1))[:3], *(tuple(block) + (1, 1))[:3])
        holders, kinds, sizes = zip(*(_argument(a) for a in args)) if args else ((), (), ())
        argv = (ctypes.c_void_p * len(args))(*(ctypes.addressof(h) for h in holders))
        err = ctypes.create_string_buffer(_ERR_LEN)
        status = self._entry(
            dims,
            ctypes.c_int(len(args)),
            argv,
            ctypes.c_char_p(b"".join(kinds)),
            (ctypes.c_longlong * len(args))(*sizes),
            err,
            ctypes.c_int(_ERR_LEN),
        )
        if status != 0:
            raise RuntimeError(f"{self.name}: {err.value.decode()}")


class EmulatorRuntime:
    """launch.py's Runtime on the emulator: NumPy arrays, kernels from `modules` by source name.

    Workspace buffers come back filled with NaN, so a kernel that reads an element it never wrote
    shows up as NaN in the results. `launched` records every kernel name, in order.
    """

    def __init__(self, modules: dict[str, EmulatedModule]) -> None:
        self.modules = modules
        self.launched: list[str] = []

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.full(shape, np.nan, dtype=dtype)

    def launch(self, source: str, dtype: Any, config: Any, args: tuple) -> None:
        self.launched.append(config.kernel)
        self.modules[source].get_function(config.kernel)(config.grid, config.block, args)


def launcher_runtime(build_dir: Path = BUILD) -> EmulatorRuntime:
    """Every source launch.py knows, built with every instantiation it can launch (all dtypes)."""
    from normref.kernels.cuda import launch

    builds = {}  # started together: the compilations run in parallel
    for source, filename in launch.SOURCES.items():
        dtypes = (np.float32, np.float16, np.float64)
        names = dict.fromkeys(n for dt in dtypes for n in launch.kernel_names(source, dt))
        builds[source] = Build(launch.KERNEL_DIR / filename, names, build_dir)
    return EmulatorRuntime({source: b.result() for source, b in builds.items()})
