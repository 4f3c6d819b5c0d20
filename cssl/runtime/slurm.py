"""SLURM's signal before the time limit turned into an exact requeue (launch checks: :mod:`cssl.runtime.launch`).

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
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from cssl.core.errors import ConfigError, check
from cssl.runtime.launch import on_slurm


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
