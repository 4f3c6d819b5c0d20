"""data=shards end to end: train.py on the shards of a fabricated unlabelled folder, then cssl.preview;
linear evaluation on labelled shards; and a run killed (SIGKILL) after a mid-epoch checkpoint and restarted
with the same command ends with the tensors of an uninterrupted run, as the folder path's
(tests/test_resume_mid_epoch.py): the data module saves LitData's loader state at the trained batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cssl.runtime.checkpoint import resume_candidates
from cssl.shard import shard
from tests.conftest import QUICK, check_ok, load_checkpoint, run_cli
from tests.interrupt import clean_env, finish, max_difference, start, straight_and_killed, train_cmd

pytestmark = pytest.mark.slow  # whole runs in subprocesses

SMALL = (*QUICK, "data=shards", "data.image_size=32", "data.num_workers=1", "data.batch_size=8", "data.bank_limit=64")


def flat_folder(root: Path, n: int, *, classes: tuple[str, ...] = ()) -> Path:
    """``n`` JPEGs of ImageNet-like aspect (flat, or one folder per class)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        base = np.full((45, 60, 3), 40 + 60 * (i % 3), dtype=np.uint8)
        noise = rng.integers(0, 60, size=base.shape, dtype=np.uint8)
        Image.fromarray(base + noise).save(folder / f"img{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled_shards")
    src = flat_folder(root / "src", 72, classes=("a", "b", "c"))
    shard(str(src), str(root / "shards"), labels="folders", chunk_bytes="16kb", workers=1)
    return root / "shards"


def test_unlabelled_shards_train_and_preview(tmp_path: Path) -> None:
    src = flat_folder(tmp_path / "photos", 40)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    shards = tmp_path / "shards"
    check_ok(run_cli("cssl/shard.py", str(src), str(shards)))
    assert json.loads((shards / "manifest.json").read_text())["classes"] == []
    run_dir = tmp_path / "run"
    check_ok(run_cli("train.py", *SMALL, f"data.root={shards}", "trainer.max_epochs=1", f"run_dir={run_dir}"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    out = tmp_path / "preview"
    proc = check_ok(run_cli("cssl/preview.py", *SMALL, f"data.root={shards}", f"preview.out={out}", "preview.images=4"))
    assert "views.png" in proc.stdout and (out / "views.png").is_file()


def test_labelled_shards_pretrain_then_linear_eval(labelled: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "pre"
    check_ok(
        run_cli(
            "train.py",
            *SMALL,
            f"data.root={labelled}",
            "data.val_fraction=0.25",
            "trainer.max_epochs=1",
            f"run_dir={run_dir}",
        )
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["knn_top1"] is not None
    lin = tmp_path / "lin"
    check_ok(
        run_cli(
            "linear_eval.py",
            f"ckpt={run_dir}",
            "logger=none",
            "trainer.progress_bar=false",
            "data=shards",
            f"data.root={labelled}",
            "data.val_fraction=0.25",
            "data.image_size=32",
            "data.batch_size=8",
            "data.num_workers=1",
            "trainer.max_epochs=1",
            f"run_dir={lin}",
        )
    )
    result = json.loads((lin / "summary.json").read_text())
    assert 0.0 <= result["top1"] <= 1.0 and result["data"] == "shards"


STEPS = 5
RESUME = (
    *SMALL,
    "method=moco",
    "method.queue_size=32",
    "trainer.max_epochs=2",
    f"trainer.limit_train_batches={STEPS}",
    "trainer.check_val_every_n_epoch=1",
    "checkpoint.every_n_steps=2",
    "seed=3",
    "resume=auto",
    "data.val_fraction=0.25",
)


def test_sigkill_mid_epoch_then_same_command_ends_with_the_uninterrupted_tensors(labelled: Path, tmp_path) -> None:
    env = clean_env()
    command = (*RESUME, f"data.root={labelled}")
    straight, run_dir = straight_and_killed(command, tmp_path, env)
    killed_at = load_checkpoint(resume_candidates(run_dir)[0])
    assert killed_at["global_step"] % STEPS != 0  # killed inside an epoch
    saved = next(v for k, v in killed_at.items() if "ShardDataModule" in k)  # the data module's state
    assert saved["batches"] and saved["loader"]["num_samples_yielded"] == saved["batches"] * 8
    log = finish(start(train_cmd(*command, f"run_dir={run_dir}"), env, tmp_path / "again.log"), tmp_path / "again.log")
    assert "Restoring states from the checkpoint path" in log
    a = load_checkpoint(straight / "checkpoints" / "last.ckpt")
    b = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * STEPS
    assert max_difference(a, b) <= 1e-6
