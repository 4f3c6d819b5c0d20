"""A run killed with SIGKILL after a mid-epoch checkpoint and restarted with the same command ends with the
tensors of an uninterrupted run (one process; the 2-process case is in tests/distributed/test_cluster.py).

MoCo on one process: a queue, a momentum encoder, shuffle BN (a permutation from the global generator), the
online probe and its epoch accuracy; two epochs of 5 steps, checkpoints every 2 steps, validation after
each epoch, so the resumed run crosses an epoch boundary and a validation.
"""

from __future__ import annotations

import json

import pytest

from cssl.runtime.checkpoint import resume_candidates
from tests.conftest import QUICK, load_checkpoint
from tests.interrupt import clean_env, finish, max_difference, start, straight_and_killed, train_cmd

pytestmark = pytest.mark.slow  # whole training runs in subprocesses

STEPS_PER_EPOCH = 5
COMMAND = (
    *QUICK,
    "method=moco",
    "method.queue_size=64",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    "trainer.check_val_every_n_epoch=1",
    "checkpoint.every_n_steps=2",
    "seed=3",
    "resume=auto",  # the same command starts the run and restarts it
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("midepoch")
    env = clean_env()
    _, run_dir = straight_and_killed(COMMAND, root, env)
    killed_at = load_checkpoint(resume_candidates(run_dir)[0])["global_step"]  # what resume=auto will take
    again = start(train_cmd(*COMMAND, f"run_dir={run_dir}"), env, root / "again.log")
    log = finish(again, root / "again.log")
    return {"root": root, "run_dir": run_dir, "killed_at": killed_at, "log": log}


def test_sigkill_mid_epoch_then_same_command_ends_with_the_uninterrupted_tensors(runs: dict) -> None:
    root = runs["root"]
    assert runs["killed_at"] % STEPS_PER_EPOCH != 0  # the run really was killed inside an epoch
    assert "Restoring states from the checkpoint path" in runs["log"]
    a, b = (
        load_checkpoint(root / "straight" / "checkpoints" / "last.ckpt"),
        load_checkpoint(runs["run_dir"] / "checkpoints" / "last.ckpt"),
    )
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    assert any("queue" in k for k in a["state_dict"]) and any("momentum" in k or "key" in k for k in a["state_dict"])
    assert max_difference(a, b) <= 1e-6
    sa = json.loads((root / "straight" / "summary.json").read_text())
    sb = json.loads((runs["run_dir"] / "summary.json").read_text())
    for key in ("train_loss", "online_top1", "knn_top1", "train_online_top1"):  # probe and metrics too
        assert sa[key] == pytest.approx(sb[key], abs=1e-6), key


def test_step_checkpoints_are_bounded_and_last_is_the_newest(runs: dict) -> None:
    folder = runs["root"] / "straight" / "checkpoints"
    # keep_last=2 of the step files (2, 4, ..., 10), and last.ckpt; every_n_epochs=10 writes no epoch file
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step00000008.ckpt", "step00000010.ckpt"]
    newest = max(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert newest.name == "last.ckpt" and load_checkpoint(newest)["global_step"] == 2 * STEPS_PER_EPOCH
