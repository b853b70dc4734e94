"""The benchmark runner's own pieces (benchmarks/run.py): where it places its arrays, and that a
tiny run goes through."""

import numpy as np
import pytest

pytest.importorskip("numba")

from benchmarks import run  # noqa: E402


@pytest.mark.parametrize("offset", [0, 16, 48])
def test_arrays_start_where_asked(offset):
    x, dy, w, b = run._inputs((3, 10), offset=offset)
    for a in (x, dy, w, b, run._empty_like(x)):
        assert a.ctypes.data % 64 == offset
    want = np.random.default_rng(0).standard_normal((3, 10), dtype=np.float32)
    np.testing.assert_array_equal(x, want)


def test_a_tiny_run_prints_its_table(capsys):
    assert run.main(["--quick", "--shape", "4x24", "--no-torch", "--offset", "16"]) == 0
    out = capsys.readouterr().out
    assert "arrays 16 bytes past" in out
    assert out.count("layer_norm") >= 2 and "rms_norm" in out
