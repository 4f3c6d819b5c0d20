"""Running on a cluster: launch checks, and SLURM's signal before the time limit turned into an exact requeue.

Three launchers start the processes of a multi-process run: Lightning itself (``trainer.devices`` > 1 on one
node), torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) and SLURM's srun (``SLURM_NTASKS``,
``SLURM_PROCID``, ...). A launch whose process count disagrees with ``trainer.devices x trainer.num_nodes``,
or that lacks the rendezvous address, would wait forever for processes that never come:
:func:`check_launch` turns it into a one-line error first.

On SLURM, ``#SBATCH --signal=SIGUSR1@120`` asks for SIGUSR1 two minutes before the time limit.
:class:`SlurmRequeue` then writes ``hpc_ckpt_<n>.ckpt`` in the run dir (Lightning's name and place for it),
calls ``scontrol requeue <job id>`` and stops; the requeued job finds the checkpoint with ``resume=auto``.
Lightning's own handler saves from inside the signal handler, wherever the step happens to be (mid-step,
or inside a collective on one rank and not on the others); here the handler only raises a flag, the ranks
agree on it at the next batch end, and the checkpoint is that of a finished step, so the requeued job
continues exactly where the first one stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from cssl.errors import ConfigError, check


def on_slurm(env: Mapping[str, str] | None = None) -> bool:
    """Whether srun started this process (Lightning's test: SLURM_NTASKS set, not an interactive job)."""
    env = os.environ if env is None else env
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def device_count(devices: Any, accelerator: str = "auto") -> int | None:
    """Processes per node that ``trainer.devices`` asks for (None where Lightning decides later)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        if devices == -1:
            return torch.cuda.device_count() if accelerator != "cpu" else None
        return devices
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        if devices.strip().lstrip("-").isdigit():
            return device_count(int(devices), accelerator)
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        if devices == "auto":
            gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
            return gpus or 1
    return None


def check_launch(devices: Any, num_nodes: Any, accelerator: str = "auto", env: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line, a launch that would hang: a process count that is not devices x nodes, or a
    torchrun-like launch without the rendezvous address.

    Raises:
        ConfigError: the launcher's variables disagree with the trainer options or are incomplete.
    """
    env = os.environ if env is None else env
    per_node = device_count(devices, accelerator)
    nodes = int(num_nodes) if isinstance(num_nodes, int) and not isinstance(num_nodes, bool) else None
    expected = per_node * nodes if per_node is not None and nodes is not None else None
    asked = f"trainer.devices x trainer.num_nodes = {per_node} x {nodes} = {expected}"
    if on_slurm(env):
        ntasks = int(env["SLURM_NTASKS"])
        check(
            ntasks == 1 or "SLURM_NTASKS_PER_NODE" in env,
            f"launch: SLURM started {ntasks} tasks without SLURM_NTASKS_PER_NODE; "
            "ask for them with #SBATCH --ntasks-per-node=<GPUs per node> (not --ntasks)",
        )
        check(
            expected is None or ntasks == expected,
            f"launch: SLURM started {ntasks} tasks (SLURM_NTASKS) but {asked}; "
            f"set trainer.devices to the tasks per node ({env.get('SLURM_NTASKS_PER_NODE', '?')}) and "
            f"trainer.num_nodes to the nodes ({env.get('SLURM_NNODES', '?')})",
        )
        check(
            int(env.get("SLURM_NNODES", "1")) == 1 or bool(env.get("MASTER_ADDR") or env.get("SLURM_NODELIST")),
            "launch: a multi-node SLURM job without SLURM_NODELIST or MASTER_ADDR has no address to meet at; "
            "start the ranks with srun inside the job",
        )
        return
    launched = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k in env]
    if not launched:
        return  # Lightning starts the processes itself (or a single process)
    world = env.get("WORLD_SIZE", "")
    check(world.isdigit(), f"launch: {', '.join(launched)} set but WORLD_SIZE={world!r}; start the ranks with torchrun")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    check(
        int(world) == 1 or not missing,
        f"launch: {', '.join(launched)} set (WORLD_SIZE={world}) but not {' and '.join(missing)}: the ranks "
        "would never meet; start them with torchrun (it sets both) or export them on every node",
    )
    check(
        expected is None or int(world) == expected,
        f"launch: the launcher started WORLD_SIZE={world} processes but {asked}; "
        "set trainer.devices to the processes per node (torchrun --nproc_per_node) and "
        "trainer.num_nodes to the nodes (torchrun --nnodes)",
    )


def environment_plugins() -> list[Any]:
    """Under SLURM, Lightning's SLURM environment with its own requeue handler off (:class:`SlurmRequeue`
    does it at a step boundary instead); nothing elsewhere."""
    if not on_slurm():
        return []
    try:
        return [SLURMEnvironment(auto_requeue=False)]
    except RuntimeError as err:
        raise ConfigError(f"launch: {str(err).splitlines()[0]}") from None


def requeue_signal(name: Any) -> signal.Signals | None:
    """``checkpoint.requeue_signal``: a signal name such as ``SIGUSR1``, or null (no requeue)."""
    if name in (None, "", "null"):
        return None
    valid = sorted(s.name for s in signal.Signals if s.name not in ("SIGKILL", "SIGSTOP"))
    check(
        isinstance(name, str) and name.upper() in valid,
        f"checkpoint.requeue_signal must be null or a signal name such as SIGUSR1, got {name!r}",
    )
    return signal.Signals[name.upper()]


class Requeued(Exception):
    """Raised on every rank once the requeue checkpoint is written; the entry point ends the run cleanly."""


class SlurmRequeue(pl.Callback):
    """On ``signum``: at the next batch end, on all ranks, write ``run_dir/hpc_ckpt_<n>.ckpt``, call
    ``scontrol requeue`` (rank 0) and stop with :class:`Requeued`.

    Args:
        run_dir: the run's folder (where ``resume=auto`` looks for ``hpc_ckpt_*.ckpt``).
        signum: the signal of ``#SBATCH --signal=<SIG>@<seconds>``.
    """

    def __init__(self, run_dir: Path, signum: signal.Signals) -> None:
        self.run_dir, self.signum = Path(run_dir), signum
        self.requested = False
        self._previous: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._previous = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # only a flag: the checkpoint is written between steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # SLURM signals the tasks one by one: the ranks agree at the same batch (any rank that got it)
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = self.run_dir / f"hpc_ckpt_{hpc_index(self.run_dir) + 1}.ckpt"
        trainer.strategy.barrier("hpc_ckpt_name")  # every rank picked the name before rank 0 writes it
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            for old in self.run_dir.glob("hpc_ckpt_*.ckpt"):
                if old != path:
                    old.unlink(missing_ok=True)
            requeue()
        trainer.strategy.barrier("requeue")
        raise Requeued(f"stopped at step {trainer.global_step} for a requeue; {path} holds the state")


def hpc_index(run_dir: Path) -> int:
    """The largest n of ``run_dir/hpc_ckpt_<n>.ckpt`` (0 if none)."""
    found = [re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt")]
    return max((int(m.group(1)) for m in found if m), default=0)


def requeue() -> bool:
    """``scontrol requeue <job id>`` for this job (``<array job>_<task>`` in an array); True on success."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        job_id = f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    else:
        job_id = os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job_id):
        rank_zero_warn(f"no SLURM job id to requeue (SLURM_JOB_ID={job_id!r}); resubmit the job by hand")
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        rank_zero_warn(f"scontrol requeue {job_id} failed ({type(err).__name__}); resubmit the job by hand")
        return False
    if result.returncode != 0:
        rank_zero_warn(f"scontrol requeue {job_id} failed: {result.stderr.strip()[:200]}; resubmit the job by hand")
        return False
    rank_zero_info(f"requeued SLURM job {job_id}")
    return True
