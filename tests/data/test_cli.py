"""train.py on fabricated CIFAR-10, and on a missing one, as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import check_ok, run_cli
from tests.data import fabricate as F


def train(*args: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, timeout=600)


def cifar_args(root: Path, run_dir: Path) -> list[str]:
    return [
        "data=cifar10",
        f"data.root={root}",
        "data.verify_checksums=false",
        "data.batch_size=8",
        "trainer.max_steps=2",
        "logger=none",
        f"run_dir={run_dir}",
        "data.num_workers=0",
        # cheaper, same data path: ImageNet stem (16x fewer FLOPs at 32 px), small head, no progress bar
        "cifar_stem=false",
        "diagnostics.embedding=false",
        "method.proj_hidden_dim=64",
        "trainer.progress_bar=false",
    ]


@pytest.mark.slow
def test_train_on_fabricated_cifar10_writes_a_summary(tmp_path):
    F.write_cifar10(tmp_path / "data")  # 32 train / 16 test images
    check_ok(train(*cifar_args(tmp_path / "data", tmp_path / "run")))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == "cifar10" and summary["global_step"] == 2
    assert 0 <= summary["knn_top1"] <= 1 and 0 <= summary["online_top1"] <= 1


def test_train_without_the_data_exits_2_with_one_line(tmp_path):
    proc = train(*cifar_args(tmp_path / "empty", tmp_path / "run"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: data.root: cifar10 not found") and str(tmp_path / "empty") in lines[0]
    assert not (tmp_path / "run" / "summary.json").exists()
