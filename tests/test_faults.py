"""Faults of storage, memory and signals, one line each: a full disk (a real ENOSPC on a small tmpfs), a
quota, a read-only or forbidden folder (errno classification and a read-only mount), the space warning, the
preemption options, an out-of-memory step and a loader worker killed by the kernel.

Whole runs stopped by a full disk or SIGTERM and resumed exactly: tests/test_faults_runs.py (one process)
and tests/distributed/test_cluster.py (two).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch

from cssl.core import storage
from cssl.core.errors import ConfigError
from cssl.runtime import faults, preempt, run
from cssl.runtime.checkpoint import SpaceCheck, atomic_save, kept_checkpoints, read_checkpoint
from tests.conftest import QUICK, fill, run_inprocess, train_inprocess

MiB = 2**20


def partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if ".tmp" in p.name)


def failing(code: int, path: Path | None = None):
    def write(f) -> None:
        f.write(b"x" * 1000)
        raise OSError(code, os.strerror(code), str(path) if path else None)

    return write


@pytest.mark.parametrize(
    ("code", "words", "advice"),
    [
        (errno.ENOSPC, "disk full", "checkpoint.keep_last="),
        (errno.EDQUOT, "disk quota exceeded", "quota"),
        (errno.EROFS, "read-only file system", "run_dir="),
        (errno.EACCES, "permission denied", "permissions"),
        (errno.EPERM, "permission denied", "permissions"),
    ],
)
def test_a_failed_write_is_one_line_with_the_cause_and_leaves_the_previous_file(tmp_path, code, words, advice) -> None:
    path = tmp_path / "run" / "summary.json"
    storage.atomic_write_text(path, "previous\n")
    with pytest.raises(storage.StorageError) as err:
        storage.atomic_write(path, failing(code), needed=5 * MiB, then="resume=auto continues")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"could not write {path}: {words}")
    assert "about 5.0 MiB needed" in message and " free on " in message and advice in message
    assert message.endswith("resume=auto continues")
    assert err.value.exit_code == 1 and err.value.errno == code
    assert path.read_text() == "previous\n" and partial_files(tmp_path) == []


def test_torchs_wrapped_short_write_is_found_in_the_chain_or_from_the_free_space(tmp_path, monkeypatch) -> None:
    def wrapped(f) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 61218560 vs 61218448")  # noqa: B904

    with pytest.raises(storage.StorageError, match="disk full"):
        storage.atomic_write(tmp_path / "a.ckpt", wrapped, needed=10)

    def lost(f) -> None:  # torch's message alone, the errno gone: the free space decides
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 61218560 vs 61218448")

    monkeypatch.setattr(storage, "free_bytes", lambda path: 100)
    with pytest.raises(storage.StorageError, match="disk full"):
        storage.atomic_write(tmp_path / "a.ckpt", lost, needed=10_000)
    with pytest.raises(RuntimeError, match="inline_container"):  # room enough: not a storage fault
        storage.atomic_write(tmp_path / "a.ckpt", lost, needed=10)
    with pytest.raises(ValueError, match="other"):  # other failures are not disguised
        storage.atomic_write(tmp_path / "a.ckpt", lambda f: (_ for _ in ()).throw(ValueError("other")))
    assert partial_files(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_a_real_small_disk(small_disk) -> None:
    disk = small_disk("2m")
    previous = {"state_dict": {"w": torch.zeros(1000)}, "cssl": {"method": "simclr"}}
    atomic_save(previous, disk / "checkpoints" / "last.ckpt")
    big = {"state_dict": {"w": torch.zeros(1_000_000)}, "cssl": {"method": "simclr"}}  # 3.8 MiB
    with pytest.raises(storage.StorageError) as err:
        atomic_save(big, disk / "checkpoints" / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"could not write {disk / 'checkpoints' / 'last.ckpt'}: disk full (about 3.8 MiB needed")
    assert f"free on {disk}" in message and "resume=auto continues from it" in message
    assert torch.equal(read_checkpoint(disk / "checkpoints" / "last.ckpt")["state_dict"]["w"], torch.zeros(1000))
    assert partial_files(disk) == []


def test_summary_json_on_a_full_disk(small_disk) -> None:
    disk = small_disk("1m")
    run.write_summary(disk, {"global_step": 1})
    fill(disk, leave=0)
    with pytest.raises(storage.StorageError, match=r"summary\.json: disk full .*resume=auto\) writes it$"):
        run.write_summary(disk, {"global_step": 2, "padding": "x" * 100_000})
    assert json.loads((disk / "summary.json").read_text()) == {"global_step": 1}
    assert partial_files(disk) == []


def test_a_cache_or_index_that_does_not_fit_is_a_warning(small_disk, capsys) -> None:
    from cssl.data.lab import load_or_generate

    disk = small_disk("1m")
    fill(disk, leave=0)
    options = {
        "generator_seed": 0,
        "train_size": 20,
        "val_size": 10,
        "glyph_scale": [0.5, 1.0],
        "min_contrast": 0.5,
        "rotation": 0.0,
        "image_size": 32,
    }
    data = load_or_generate(disk, options)
    assert data["train_images"].shape[0] == 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: lab image cache not written, the run goes on: could not")
    assert "disk full" in err[0] and partial_files(disk) == []


def test_a_read_only_run_dir_is_refused_before_any_work(small_disk) -> None:
    disk = small_disk("1m", read_only=True)
    with pytest.raises(ConfigError, match=rf"^run_dir cannot be written: {disk}/run: read-only file system"):
        storage.check_writable(disk / "run")
    code, err = run_inprocess("train", [*QUICK, f"run_dir={disk / 'run'}"])
    assert code == 2 and err.strip().splitlines() == [f"error: {err.strip()[7:]}"]
    assert "read-only file system" in err and "set run_dir= to a writable file system" in err


def test_a_read_only_run_dir_on_the_command_line_is_one_line_exit_2(small_disk) -> None:
    from tests.conftest import run_cli

    disk = small_disk("1m", read_only=True)
    proc = run_cli("train.py", "logger=none", f"run_dir={disk / 'run'}", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: run_dir cannot be written:") and "read-only file system" in lines[0]


def test_a_forbidden_run_dir_is_refused_by_its_errno(tmp_path, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run"))

    monkeypatch.setattr(Path, "mkdir", forbidden)
    with pytest.raises(ConfigError, match=r"^run_dir cannot be written: .*permission denied.*fix its permissions"):
        storage.check_writable(tmp_path / "run")


def test_the_space_warning_before_the_first_checkpoint(small_disk, capsys) -> None:
    disk = small_disk("4m")
    files, what = kept_checkpoints(every_n_steps=2, every_n_minutes=0, keep_last=2)
    assert files == 4 and "keep_last=2" in what
    assert kept_checkpoints(0, 0, 2)[0] == 2
    assert storage.short_of_space(disk, MiB // 2, files, what) is None  # 2 MiB of 4
    message = storage.short_of_space(disk, 2 * MiB, files, what)
    assert message is not None and "\n" not in message
    assert "about 2.0 MiB each" in message and "need 8.0 MiB" in message and f"{disk} has 4.0 MiB free" in message
    assert "lower checkpoint.keep_last=" in message
    message = storage.short_of_space(disk, 5 * MiB, *kept_checkpoints(0, 0, 2))
    assert message == (
        f"a checkpoint of about 5.0 MiB does not fit: {disk} has 4.0 MiB free, and the first checkpoint will "
        "stop the run; free space or set run_dir= to a larger disk"
    )

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(600_000))  # 2.3 MiB of weights

    class Trainer:
        is_global_zero = True
        optimizers = [torch.optim.SGD(Module().parameters(), lr=0.1)]

    check = SpaceCheck(disk, files, what)
    check.on_train_batch_end(Trainer(), Module())
    check.on_train_batch_end(Trainer(), Module())  # once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: checkpoints of about 2.3 MiB each")


def test_a_log_file_on_a_full_disk_is_one_warning(small_disk, capsys) -> None:
    disk = small_disk("1m")
    logger = logging.getLogger("cssl-test-full-disk")
    handler = logging.FileHandler(disk / "train.log")
    logger.addHandler(handler)
    try:
        storage.guard_log_files()
        fill(disk, leave=0)
        for _ in range(3):
            logger.warning("x" * 20_000)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: log file not written any more, the run goes on:")
        assert "disk full" in err[0]
    finally:
        logger.removeHandler(handler)
        handler.stream = None  # nothing left to flush on a full disk


def test_wandb_on_a_full_disk_is_a_warning(capsys) -> None:
    from cssl.runtime.loggers import SafeWandbLogger

    logger = SafeWandbLogger.__new__(SafeWandbLogger)
    logger._broken, logger._save_dir = False, "/tmp"

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/wandb/run-1/run-1.wandb")

    assert logger._guard(full) is None and logger._broken
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training goes on: could not write /tmp/wandb/run-1/run-1.wandb: disk full" in err[0]


def test_an_embedding_map_that_does_not_fit_is_a_warning(small_disk, capsys, monkeypatch) -> None:
    import cssl.eval.embedding
    from cssl.pretrain import write_embedding_map

    monkeypatch.setattr(cssl.eval.embedding, "project_2d", lambda feats, seed=0: (feats[:, :2], "first 2 axes"))

    class Model:
        last_val_embedding = (torch.randn(60, 8), torch.arange(60) % 3)
        meta = {"method": "simclr"}
        logger = None

    disk = small_disk("1m")
    fill(disk, leave=0)
    write_embedding_map(Model(), disk / "embedding.png", 5)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: embedding map not written, the run goes on: could not write")
    assert not (disk / "embedding.png").exists() and partial_files(disk) == []


def test_preemption_options() -> None:
    assert preempt.preempt_signal("SIGTERM") == signal.SIGTERM and preempt.preempt_signal(None) is None
    for bad in ("SIGKILL", "TERM", 15):
        with pytest.raises(ConfigError, match="checkpoint.preempt_signal"):
            preempt.preempt_signal(bad)
    assert preempt.grace_seconds(25) == 25.0
    for bad in (0, -1, "soon", True):
        with pytest.raises(ConfigError, match="checkpoint.preempt_grace_s"):
            preempt.grace_seconds(bad)
    options = {"requeue_signal": "SIGUSR1", "preempt_signal_name": "SIGTERM", "grace_s": 25}
    slurm_stop = preempt.signal_stop(Path("."), on_slurm=True, **options)
    assert (slurm_stop.requeue, slurm_stop.preempt) == (signal.SIGUSR1, signal.SIGTERM)
    elsewhere = preempt.signal_stop(Path("."), on_slurm=False, **options)
    assert (elsewhere.requeue, elsewhere.preempt) == (None, signal.SIGTERM)
    same = preempt.signal_stop(Path("."), on_slurm=True, **{**options, "requeue_signal": "SIGTERM"})
    assert (same.requeue, same.preempt) == (signal.SIGTERM, None)  # under SLURM that signal requeues
    assert preempt.signal_stop(Path("."), on_slurm=False, **{**options, "preempt_signal_name": None}) is None


def test_the_configs_name_the_preemption_keys() -> None:
    from tests.conftest import compose

    cfg = compose("train", [])
    assert cfg.checkpoint.preempt_signal == "SIGTERM" and cfg.checkpoint.preempt_grace_s == 25
    code, err = run_inprocess("train", [*QUICK, "checkpoint.preempt_grace_s=0", "run_dir=/tmp/cssl-unused"])
    assert code == 2 and "checkpoint.preempt_grace_s must be" in err


def test_out_of_memory_in_a_training_step_is_one_line_and_writes_nothing_damaged(tmp_path, monkeypatch) -> None:
    from cssl.methods import method_class

    cls = method_class("simclr")
    step = cls.training_step

    def out_of_memory(self, batch, batch_idx):
        if self.trainer.global_step >= 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(cls, "training_step", out_of_memory)
    run_dir = tmp_path / "run"
    overrides = [
        *QUICK,
        "data.batch_size=16",
        "checkpoint.every_n_steps=1",
        "trainer.max_epochs=1",
        f"run_dir={run_dir}",
    ]
    code, err = run_inprocess("train", overrides)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: out of memory in a training step at data.batch_size=16 per device (")
    assert "host memory" in lines[0] and "asking for 2.00 GiB more" in lines[0]
    assert "data.batch_size=8 with trainer.accumulate_grad_batches=2" in lines[0]
    assert lines[0].endswith(
        "the checkpoints written so far are intact (another batch size starts best in a new run_dir)"
    )
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert partial_files(run_dir) == [] and not (run_dir / "summary.json").exists()


class _KilledByTheKernel(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does to a worker
        return torch.zeros(1)


def test_a_loader_worker_killed_by_the_kernel_is_one_line() -> None:
    loader = torch.utils.data.DataLoader(_KilledByTheKernel(), batch_size=2, num_workers=2)
    with pytest.raises(faults.OutOfMemory) as err:
        with faults.translated(None, batch_size=2, num_workers=2):
            next(iter(loader))
    message = str(err.value)
    assert "\n" not in message and message.startswith("a data loader worker (pid ")
    assert "killed by signal Killed" in message and "out-of-memory killer" in message
    assert "data.num_workers=1 (now 2)" in message and "data.batch_size (now 2)" in message


def test_other_failures_pass_through_unchanged() -> None:
    with pytest.raises(RuntimeError, match="^a bug$"):
        with faults.translated(None, batch_size=2):
            raise RuntimeError("a bug")
    with pytest.raises(FileNotFoundError):
        with faults.translated(None, batch_size=2):
            raise FileNotFoundError(errno.ENOENT, "missing", "x")
    with pytest.raises(storage.StorageError, match="could not write /x/metrics.csv: disk quota exceeded"):
        with faults.translated(None, batch_size=2):
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/x/metrics.csv")


@pytest.mark.slow
def test_a_summary_that_does_not_fit_then_resume_writes_it(small_disk, monkeypatch) -> None:
    disk = small_disk("16m")
    run_dir = disk / "run"
    overrides = [*QUICK, "data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    overrides += ["resume=auto", f"run_dir={run_dir}"]
    write_summary = run.write_summary
    ballast: list[Path] = []

    def full_disk_first(folder, summary):
        ballast.append(fill(disk, leave=0))  # the disk fills up while the run validates
        write_summary(folder, summary)

    monkeypatch.setattr(run, "write_summary", full_disk_first)
    code, err = run_inprocess("train", overrides)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"error: could not write {run_dir / 'summary.json'}: disk full (about ")
    assert lines[0].endswith("once there is room, the same command (with resume=auto) writes it")
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not (run_dir / "summary.json").exists() and partial_files(run_dir) == []

    monkeypatch.setattr(run, "write_summary", write_summary)
    ballast[0].unlink()
    train_inprocess(*overrides)
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 2


def test_the_stop_waits_for_the_optimiser_step_and_for_the_epochs_end(tmp_path, monkeypatch) -> None:
    """Not inside a gradient accumulation (those gradients are in no checkpoint), and at the epoch's last
    batch only after its validation (a resumed run would skip it)."""
    from types import SimpleNamespace

    stop = preempt.StopOnSignal(tmp_path, preempt=signal.SIGTERM)
    stops: list[tuple[int, list[int]]] = []
    monkeypatch.setattr(stop, "_stop", lambda trainer, flags: stops.append((trainer.global_step, flags)))
    progress = SimpleNamespace(is_last_batch=False)
    trainer = SimpleNamespace(
        global_step=4, world_size=1, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    )
    stop.flags[preempt.PREEMPT] = 1  # as the handler leaves it
    stop.on_train_batch_start(trainer)
    stop.on_train_batch_end(trainer)  # a micro-batch: no optimiser step
    assert stops == []
    stop.on_train_batch_start(trainer)
    trainer.global_step, progress.is_last_batch = 5, True
    stop.on_train_batch_end(trainer)  # the step is done, but it is the epoch's last batch
    assert stops == []
    stop.on_train_epoch_end(trainer, None)
    assert stops == [(5, [0, 1])]
