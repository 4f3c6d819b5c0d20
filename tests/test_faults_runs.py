"""Whole runs ended by a fault, then continued with the same command (``resume=auto``), against one
uninterrupted run (the 2-process SIGTERM case: tests/distributed/test_cluster.py):

- a step checkpoint that does not fit a real small file system (a tmpfs mounted here): one line, exit 1,
  the previous checkpoint intact and no partial file; with space freed the run ends with the tensors of
  the uninterrupted one;
- SIGTERM mid-epoch: the checkpoint of the finished step, exit 143, then an exact continuation;
- a second SIGTERM exits at once; a grace budget too short for any checkpoint exits at its end. Both leave
  the newest checkpoint as it was and no partial file.

SimCLR on one process, two epochs of 5 steps, step checkpoints every 2 steps, keep_last=1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cssl.runtime.checkpoint import read_checkpoint, resume_candidates
from tests.conftest import QUICK, fill, load_checkpoint, run_cli
from tests.interrupt import clean_env, finish, max_difference, start, train_cmd, wait_for, wait_or_kill

STEPS_PER_EPOCH = 5
COMMAND = (
    *QUICK,
    "data.batch_size=16",
    "trainer.max_epochs=2",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    "trainer.check_val_every_n_epoch=1",
    "checkpoint.every_n_steps=2",
    "checkpoint.keep_last=1",
    "seed=3",
    "resume=auto",  # the same command starts the run and continues it
)


def partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if ".tmp" in p.name)


def run_to_end(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *COMMAND, *extra, f"run_dir={run_dir}", env=clean_env(), timeout=300)


def stopped(proc: subprocess.Popen, log: Path, timeout: float = 60) -> tuple[int, float, str]:
    """Wait for a signalled run: (exit status, seconds it took, its output)."""
    started = time.monotonic()
    code = wait_or_kill(proc, timeout)
    return code, time.monotonic() - started, log.read_text(errors="replace")


def assert_same_as(reference: Path, run_dir: Path) -> None:
    a, b = (
        load_checkpoint(reference / "checkpoints" / "last.ckpt"),
        load_checkpoint(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    assert max_difference(a, b) <= 1e-6
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (reference, run_dir))
    for key in ("train_loss", "online_top1", "knn_top1", "train_online_top1"):
        assert sa[key] == pytest.approx(sb[key], abs=1e-6), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults") / "straight"
    proc = run_to_end(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_then_resume_once_there_is_room(reference: Path, small_disk) -> None:
    size = (reference / "checkpoints" / "last.ckpt").stat().st_size
    disk = small_disk(str(4 * size + 2**20))
    ballast = fill(disk, leave=int(2.5 * size))  # room for step 2 and last.ckpt, not for step 4 beside them
    run_dir = disk / "run"

    proc = run_to_end(run_dir)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    step4 = run_dir / "checkpoints" / "step00000004.ckpt"
    assert errors[0].startswith(f"error: could not write {step4}: disk full (about ")
    assert f"free on {disk})" in errors[0] and "checkpoint.keep_last=" in errors[0]
    assert f"{run_dir / 'checkpoints' / 'last.ckpt'} is intact" in errors[0]
    assert any(line.startswith("warning: checkpoints of about") for line in proc.stderr.splitlines())
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step00000002.ckpt"]
    for name in ("last.ckpt", "step00000002.ckpt"):
        assert read_checkpoint(run_dir / "checkpoints" / name)["global_step"] == 2
    assert partial_files(disk) == [] and not (run_dir / "summary.json").exists()

    ballast.unlink()  # space freed: the same command continues
    again = run_to_end(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in again.stdout + again.stderr
    assert_same_as(reference, run_dir)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_and_resume_continues_exactly(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "preempted"
    proc = start(train_cmd(*COMMAND, f"run_dir={run_dir}"), clean_env(), tmp_path / "first.log")
    wait_for(proc, lambda: (run_dir / "checkpoints" / "step00000002.ckpt").is_file())
    proc.send_signal(signal.SIGTERM)  # the main process only, as Kubernetes does
    code, _, log = stopped(proc, tmp_path / "first.log")
    assert code == 128 + signal.SIGTERM, log[-3000:]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    step = read_checkpoint(hpc)["global_step"]
    assert 2 < step < 2 * STEPS_PER_EPOCH
    lines = [line for line in log.splitlines() if line.startswith("stopped:")]
    assert lines == [
        f"stopped: SIGTERM at step {step}: {hpc} holds the state (written in {lines[0].split('(written in ')[1]}"
    ]
    assert "resume=auto continues exactly" in lines[0] and "Traceback" not in log
    assert resume_candidates(run_dir)[0] == hpc and partial_files(run_dir) == []
    assert not (run_dir / "summary.json").exists()

    again = start(train_cmd(*COMMAND, f"run_dir={run_dir}"), clean_env(), tmp_path / "again.log")
    assert str(hpc) in finish(again, tmp_path / "again.log")
    assert_same_as(reference, run_dir)


@pytest.mark.slow
def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "twice"
    proc = start(train_cmd(*COMMAND, f"run_dir={run_dir}"), clean_env(), tmp_path / "run.log")
    wait_for(proc, lambda: (run_dir / "checkpoints" / "step00000002.ckpt").is_file())
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    code, _, log = stopped(proc, tmp_path / "run.log")
    assert code == 128 + signal.SIGTERM, log[-3000:]
    lines = [line for line in log.splitlines() if line.startswith("stopped:")]
    assert len(lines) == 1 and lines[0].startswith("stopped: a second SIGTERM: exiting at once; ")
    newest = resume_candidates(run_dir)[0]
    assert f"the newest checkpoint stands ({newest})" in lines[0]
    assert read_checkpoint(newest)["global_step"] >= 2 and partial_files(run_dir) == []


@pytest.mark.slow
def test_a_grace_budget_too_short_for_a_checkpoint_leaves_the_newest_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "hurried"
    cmd = train_cmd(*COMMAND, "checkpoint.preempt_grace_s=0.01", f"run_dir={run_dir}")
    proc = start(cmd, clean_env(), tmp_path / "run.log")
    wait_for(proc, lambda: (run_dir / "checkpoints" / "step00000002.ckpt").is_file())
    proc.send_signal(signal.SIGTERM)
    code, _, log = stopped(proc, tmp_path / "run.log")
    assert code == 128 + signal.SIGTERM, log[-3000:]
    lines = [line for line in log.splitlines() if line.startswith("stopped:")]
    assert len(lines) == 1 and "checkpoint.preempt_grace_s=0.01" in lines[0], log[-3000:]
    newest = resume_candidates(run_dir)[0]
    assert f"the newest checkpoint stands ({newest})" in lines[0]
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt")) and partial_files(run_dir) == []
