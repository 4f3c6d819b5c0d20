"""bench/augment.py runs end to end in its quick mode and prints its table."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "augment.py"


def test_augment_bench_quick_prints_a_table_with_a_ratio_column(monkeypatch, capsys):
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--quick"])
    try:
        runpy.run_path(str(BENCH), run_name="__main__")  # as `python bench/augment.py --quick`, in-process
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["size", "cssl", "batched", "torchvision", "cssl/tv"]
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]] for line in lines[2:]}
    assert set(rows) == {32, 224}
    for cssl, tv, ratio in rows.values():
        assert cssl > 0 and tv > 0 and abs(ratio - cssl / tv) <= 0.01 + 0.01 * ratio
