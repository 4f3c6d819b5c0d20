"""The pieces of cluster robustness in one process: launch checks, the requeue signal option, the damaged
checkpoint fallback of resume=auto, the resumable training order and the per-rank metric states."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch.utils.data import DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from cssl.core.errors import ConfigError
from cssl.data.resumable import ResumableSampler, resumed_sampler
from cssl.pretrain import resolve_resume
from cssl.runtime import slurm
from cssl.runtime.checkpoint import MetricStates, atomic_save, newest_readable, resume_candidates
from cssl.runtime.launch import check_launch, device_count

TORCHRUN = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SRUN = {
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "2",
    "SLURM_PROCID": "0",
    "SLURM_JOB_NAME": "pretrain",
    "SLURM_NODELIST": "gpu[01-02]",
}


def test_good_launches_pass() -> None:
    check_launch(1, 1, "cpu", env={})  # a plain run
    check_launch(2, 1, "cpu", env={})  # Lightning starts the second process itself
    check_launch(1, 2, "cpu", env=TORCHRUN)
    check_launch(2, 1, "cpu", env=TORCHRUN)
    check_launch(2, 2, "gpu", env=SRUN)
    check_launch(2, 2, "gpu", env={**SRUN, "SLURM_JOB_NAME": "interactive", "SLURM_NTASKS": "9"})  # salloc shell
    # Lightning's own second process: LOCAL_RANK, WORLD_SIZE and the address it chose
    check_launch(2, 1, "cpu", env={"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"})


@pytest.mark.parametrize(
    ("devices", "nodes", "env", "message"),
    [
        (1, 2, {k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "but not MASTER_ADDR:"),
        (1, 1, TORCHRUN, "WORLD_SIZE=2 processes but trainer.devices x trainer.num_nodes = 1 x 1 = 1"),
        (1, 2, {"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
        (2, 1, SRUN, "SLURM started 4 tasks (SLURM_NTASKS) but trainer.devices x trainer.num_nodes = 2 x 1 = 2"),
        (
            8,
            2,
            SRUN,
            "= 8 x 2 = 16; set trainer.devices to the tasks per node (2) and trainer.num_nodes to the nodes (2)",
        ),
        (4, 1, {k: v for k, v in SRUN.items() if k != "SLURM_NTASKS_PER_NODE"}, "--ntasks-per-node"),
        (2, 2, {k: v for k, v in SRUN.items() if k != "SLURM_NODELIST"}, "without SLURM_NODELIST or MASTER_ADDR"),
    ],
)
def test_bad_launches_are_refused_in_one_line(devices, nodes, env, message) -> None:
    with pytest.raises(ConfigError, match="^launch: ") as err:
        check_launch(devices, nodes, "cpu", env=env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_device_count_reads_every_form_of_trainer_devices() -> None:
    assert [device_count(d, "cpu") for d in (1, 4, "3", [0, 1], "0,1,2", "auto")] == [1, 4, 3, 2, 3, 1]
    assert device_count(True, "cpu") is None


def test_requeue_signal_option() -> None:
    assert slurm.requeue_signal("SIGUSR1") == signal.SIGUSR1
    assert slurm.requeue_signal("sigterm") == signal.SIGTERM
    assert slurm.requeue_signal(None) is None
    for bad in ("SIGKILL", "USR1", 10):
        with pytest.raises(ConfigError, match="checkpoint.requeue_signal"):
            slurm.requeue_signal(bad)


def test_requeue_calls_scontrol_with_the_job_or_array_task(tmp_path, monkeypatch) -> None:
    calls = tmp_path / "calls"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert slurm.requeue()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm.requeue()
    assert calls.read_text().splitlines() == ["requeue 77", "requeue 70_3"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol: a warning, no exception
    assert not slurm.requeue()


def _checkpoint(path, step: int, mtime: float) -> None:
    atomic_save({"state_dict": {"w": torch.full((2,), float(step))}, "cssl": {"method": "simclr"}, "step": step}, path)
    os.utime(path, (mtime, mtime))


def test_resume_auto_passes_over_a_damaged_newest_checkpoint(tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert newest_readable(tmp_path, warn=print) is None  # nothing yet: a fresh start
    _checkpoint(folder / "step00000004.ckpt", 4, 100)
    _checkpoint(folder / "step00000006.ckpt", 6, 200)
    _checkpoint(folder / "last.ckpt", 6, 200)
    _checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 7, 300)  # a SLURM requeue's checkpoint in the run dir
    assert [p.name for p in resume_candidates(tmp_path)] == [
        "hpc_ckpt_1.ckpt",
        "last.ckpt",
        "step00000006.ckpt",
        "step00000004.ckpt",
    ]
    warnings: list[str] = []
    path, ckpt = newest_readable(tmp_path, warn=warnings.append)
    assert path.name == "hpc_ckpt_1.ckpt" and ckpt["step"] == 7 and not warnings

    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")  # zero bytes
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (300, 300))
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated
    os.utime(folder / "last.ckpt", (200, 200))
    path, ckpt = newest_readable(tmp_path, warn=warnings.append)
    assert path.name == "step00000006.ckpt" and ckpt["step"] == 6
    assert len(warnings) == 2 and "hpc_ckpt_1.ckpt" in warnings[0] and "last.ckpt" in warnings[1]
    assert all(w.startswith("resume=auto: passing over ") for w in warnings)
    assert resolve_resume("auto", tmp_path, "simclr") == str(folder / "step00000006.ckpt")

    for p in (folder / "step00000006.ckpt", folder / "step00000004.ckpt"):
        p.write_bytes(b"\x00" * 10)
    with pytest.raises(ConfigError, match="no checkpoint of .* can be read"):
        newest_readable(tmp_path, warn=warnings.append)


def test_an_explicitly_given_damaged_checkpoint_stays_an_error(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    _checkpoint(path, 1, 100)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="unreadable"):
        resolve_resume(str(path), tmp_path, "simclr")


def test_resumable_sampler_is_torchs_order_and_starts_mid_epoch() -> None:
    data = list(range(50))
    for world, rank in ((1, 0), (2, 1)):
        reference = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=7)
        reference.set_epoch(3)
        full = list(reference)
        sampler = ResumableSampler(data, num_replicas=world, rank=rank, seed=7)
        sampler.set_epoch(3)
        assert list(sampler) == full
        resumed = resumed_sampler(data, {"epoch": 3, "batches": 2}, batch_size=4, num_replicas=world, rank=rank, seed=7)
        assert resumed.epoch == 3 and list(resumed) == full[8:]
        assert list(resumed) == full  # the skip applies once: the next epoch pass is whole again
        assert len(resumed) == len(full)  # Lightning counts the whole epoch
    # saved by 2 processes after 3 batches of 4 (24 images), resumed on 1 and on 4 processes
    one = resumed_sampler(
        data, {"epoch": 1, "batches": 3, "processes": 2}, batch_size=4, num_replicas=1, rank=0, seed=7
    )
    assert one.start == 24
    four = resumed_sampler(
        data, {"epoch": 1, "batches": 3, "processes": 2}, batch_size=4, num_replicas=4, rank=0, seed=7
    )
    assert four.start == 4  # 24 / 4 = 6 images each, rounded down to whole batches


def test_metric_states_round_trip_per_rank() -> None:
    module = torch.nn.Module()
    module.acc = MulticlassAccuracy(3, average="micro")
    module.acc.update(torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]]), torch.tensor([0, 2]))
    checkpoint: dict = {}
    MetricStates().on_save_checkpoint(None, module, checkpoint)  # type: ignore[arg-type]
    expected = module.acc.compute().item()
    module.acc.reset()
    module.acc.update(torch.tensor([[0.9, 0.1, 0.0]]), torch.tensor([1]))
    MetricStates().on_load_checkpoint(None, module, checkpoint)  # type: ignore[arg-type]
    assert expected == 0.5 and module.acc.compute().item() == expected


def test_the_sbatch_script_asks_for_the_signal_that_the_run_handles() -> None:
    import re

    from tests.conftest import REPO, compose

    text = (REPO / "scripts" / "slurm" / "pretrain.sbatch").read_text()
    asked = re.search(r"^#SBATCH --signal=(?:B:)?(\w+)@(\d+)", text, re.M)
    assert asked is not None and int(asked.group(2)) >= 60  # time enough to finish a step and save
    assert re.search(r"^#SBATCH --requeue", text, re.M)
    command = text[text.index("srun --") : text.index('"$@"')]
    overrides = [line.strip().rstrip("\\").strip() for line in command.splitlines()[1:]]
    # values the shell fills in (job variables) become 2
    overrides = [o.split("=")[0] + "=2" if "$" in o else o for o in overrides if o]
    cfg = compose("train", overrides)
    assert cfg.resume == "auto" and cfg.checkpoint.every_n_minutes > 0
    assert slurm.requeue_signal(cfg.checkpoint.requeue_signal) == signal.Signals[asked.group(1)]


def test_warmup_of_a_max_steps_run_counts_one_ranks_batches() -> None:
    """With trainer.max_steps the schedule measures an epoch from the loader; under DDP the loader's
    DistributedSampler already holds one rank's share (it is not divided by the world size again)."""
    from types import SimpleNamespace

    from cssl.data import build_datamodule
    from cssl.models.optim import OptimSettings, configure_schedule, warmup_cosine

    data = build_datamodule("digits", batch_size=32)
    data.setup()
    n = len(data.sets["pretrain"])
    for world in (1, 2):
        trainer = SimpleNamespace(
            estimated_stepping_batches=1000,
            max_steps=1000,
            max_epochs=None,
            world_size=world,
            global_rank=0,
            accumulate_grad_batches=1,
            datamodule=data,
        )
        data.trainer = trainer
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = configure_schedule(trainer, optimizer, OptimSettings(name="sgd", warmup_epochs=2))
        per_rank = (-(-n // world)) // 32  # DistributedSampler's share, full batches only
        lam = schedule["lr_scheduler"]["scheduler"].lr_lambdas[0]
        assert [lam(s) for s in (0, 10, 500)] == [warmup_cosine(s, 2 * per_rank, 1000) for s in (0, 10, 500)]


def test_step_checkpoints_options(tmp_path) -> None:
    from datetime import timedelta

    from cssl.runtime.checkpoint import step_checkpoints

    assert step_checkpoints(tmp_path, every_n_steps=0, every_n_minutes=0, keep_last=2) == []
    (by_steps,) = step_checkpoints(tmp_path, every_n_steps=50, every_n_minutes=0, keep_last=3)
    assert by_steps._every_n_train_steps == 50 and by_steps.save_top_k == 3 and by_steps.save_last
    (by_time,) = step_checkpoints(tmp_path, every_n_steps=0, every_n_minutes=1.5, keep_last=-1)
    assert by_time._train_time_interval == timedelta(seconds=90) and by_time.save_top_k == -1
    for bad, key in (
        ({"every_n_steps": -1}, "every_n_steps"),
        ({"every_n_minutes": "often"}, "every_n_minutes"),
        ({"keep_last": 0}, "keep_last"),
        ({"every_n_steps": 5, "every_n_minutes": 5}, "not both"),
    ):
        options = {"every_n_steps": 0, "every_n_minutes": 0, "keep_last": 2, **bad}
        with pytest.raises(ConfigError, match=key):
            step_checkpoints(tmp_path, **options)


def test_slurm_environment_plugin_only_under_srun_with_lightnings_requeue_off(monkeypatch, tmp_path) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert slurm.environment_plugins() == []
    for key, value in SRUN.items():
        monkeypatch.setenv(key, value)
    (plugin,) = slurm.environment_plugins()
    assert plugin.auto_requeue is False and plugin.world_size() == 4 and plugin.global_rank() == 0
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    with pytest.raises(ConfigError, match="^launch: .*ntasks-per-node"):
        slurm.environment_plugins()
    for n in (3, 12):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
    assert slurm.hpc_index(tmp_path) == 12 and slurm.hpc_index(tmp_path / "none") == 0
