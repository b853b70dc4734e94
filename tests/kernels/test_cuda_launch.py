"""launch.py without a GPU: the launch geometry, the source text handed to NVRTC, input checks,
and that neither normref nor launch.py imports CuPy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normref.kernels.cuda import launch

ROW_KERNELS = ("layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd")
MAX_CACHED = launch.MAX_THREADS * max(launch.VALUES_PER_THREAD)  # longest row kept in registers
LENGTHS = [*range(1, 260), 1023, 1024, 1025, 1500, 4095, 4096, 4097, 8191, 8192, 8193, 10**6]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("kernel", ROW_KERNELS)
def test_row_geometry(kernel, dtype):
    source = kernel.rsplit("_", 1)[0]
    names = launch.kernel_names(source, dtype)
    for n in LENGTHS:
        config = launch.launch_config(kernel, 7, n, dtype)
        threads = config.block[0]
        assert config.grid == (7, 1, 1) and config.block[1:] == (1, 1)
        assert threads % 32 == 0 and 32 <= threads <= launch.MAX_THREADS, n
        assert config.kernel in names
        vpt = re.search(r", (\d+)>$", config.kernel)
        if vpt is None:  # the long-row kernel, only for rows the registers cannot hold
            assert "_long<" in config.kernel and n > MAX_CACHED
        else:
            assert int(vpt[1]) * threads >= n, (n, config)
            # no smaller instantiation would have done
            assert int(vpt[1]) == 1 or int(vpt[1]) // 2 * threads < n, (n, config)


@pytest.mark.parametrize("rows", [1, 7, 32, 33, 70, 1000, 123457, 10**7])
@pytest.mark.parametrize("n", [1, 33, 4096, 10**5])
def test_param_grad_geometry(rows, n):
    part = launch.launch_config("param_grad_partial", rows, n, np.float16)
    finish = launch.launch_config("param_grad_finish", rows, n, np.float16)
    assert part.kernel == "normref::param_grad_partial<__half, float>"
    assert finish.kernel == "normref::param_grad_finish<float>"
    assert part.block == (launch.COL_TILE, launch.ROW_LANES, 1)
    assert part.grid[0] * launch.COL_TILE >= n > (part.grid[0] - 1) * launch.COL_TILE
    # the chunks cover every row once, none is empty, and the grid stays within CUDA's limits
    assert part.grid[1] == part.chunks == finish.chunks <= 65535
    assert part.chunks * part.rows_per_chunk >= rows > (part.chunks - 1) * part.rows_per_chunk
    assert finish.grid[0] * finish.block[0] >= n


def test_kernel_names():
    names = launch.kernel_names("layer_norm", np.float64)
    assert "normref::layer_norm_fwd<double, double, 8>" in names
    assert "normref::layer_norm_bwd_long<double, double>" in names
    assert "normref::param_grad_finish<double>" in names
    with pytest.raises(ValueError, match="unknown kernel source"):
        launch.kernel_names("batch_norm", np.float32)
    with pytest.raises(TypeError, match="float32, float16 or float64"):
        launch.kernel_names("rms_norm", np.int32)


def test_module_source_inlines_headers_with_line_directives():
    text = launch.module_source("rms_norm")
    assert not re.search(r'#\s*include\s+"', text)  # NVRTC gets one self-contained text
    assert "block_sum" in text and "#pragma once" not in text
    reduce_path = (launch.KERNEL_DIR / "reduce.cuh").as_posix()
    rms_path = (launch.KERNEL_DIR / "rms_norm.cu").as_posix()
    assert text.startswith(f'#line 1 "{rms_path}"')
    assert f'#line 1 "{reduce_path}"' in text


class _Unused:
    """A runtime that must not be reached."""

    def launch(self, *args):
        raise AssertionError("nothing should be launched")

    def empty(self, *args):
        raise AssertionError("nothing should be allocated")


def test_inputs_are_checked_before_any_launch():
    kernels = launch.bind(_Unused())
    rstd = np.empty(4, np.float32)
    with pytest.raises(TypeError, match="float32, float16 or float64"):
        kernels.rms_norm_forward(np.zeros((4, 3), np.int32), None, 1e-5, np.zeros((4, 3)), rstd)
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.rms_norm_forward(np.zeros((3, 4), np.float32).T, None, 1e-5, x, rstd)
    with pytest.raises(ValueError, match="1 <= n"):
        empty = np.zeros((4, 0), np.float32)
        kernels.layer_norm_forward(empty, None, None, 1e-5, empty, rstd, rstd)
    with pytest.raises(ValueError, match=r"\(3,\) float32 array, got shape \(3,\), float16"):
        kernels.rms_norm_forward(x, np.ones(3, np.float16), 1e-5, x, rstd)  # weight: not Acc
    with pytest.raises(ValueError, match=r"\(4,\) float32 array, got shape \(3,\)"):
        kernels.layer_norm_backward(x, x, rstd, rstd[:3], None, x, None, None)
    with pytest.raises(ValueError, match=r"\(4, 3\) float32 array, got shape \(4, 3\), float64"):
        kernels.layer_norm_forward(x, None, None, 1e-5, x.astype(np.float64), rstd, rstd)


def test_no_cupy_on_import():
    """Importing normref and launch.py, and computing launch configs and sources, loads no CuPy."""
    code = (
        "import sys, numpy as np, normref\n"
        "from normref.kernels.cuda import launch\n"
        "launch.launch_config('layer_norm_fwd', 4, 100, np.float32)\n"
        "launch.module_source('layer_norm')\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "name", ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]
)
def test_entry_hands_out_the_launchers(name):
    """What the call plans keep for a CuPy call (docs/contracts.md): the launcher itself, whatever
    the shape and dtype, as each launch works out its own geometry."""
    for rows, n, dtype in [(1, 1, np.float32), (7, 5000, np.float16), (64, 768, np.float64)]:
        assert launch.entry(name, rows, n, dtype) is getattr(launch, name)
