"""bench/ddp.py --quick runs in seconds and prints the per-rank table for world sizes 1 and 2."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_bench_ddp_quick_prints_the_table() -> None:
    proc = run_cli("bench/ddp.py", "--quick", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    # B_g = 256: one process holds 512x512 logits (1 MiB), each of two ranks 256x512 (0.5 MiB)
    assert [r[1] for r in rows] == ["256", "128"]
    assert [r[2] for r in rows] == ["512x512", "256x512"]
    assert [float(r[3]) for r in rows] == [1.0, 0.5]
    assert all(float(r[6]) > 0 for r in rows)  # a time was measured
    assert float(rows[0][7]) == 1.0 and 0.4 < float(rows[1][7]) < 0.75  # saved memory about halves
