"""Signals that end a job early, turned into a checkpoint of a finished step (docs/distributed.md, "Surviving
the cluster").

- **Requeue** (``checkpoint.requeue_signal``, SIGUSR1; under SLURM only): SLURM's warning before the time
  limit (``#SBATCH --signal=SIGUSR1@120``). Write ``hpc_ckpt_<n>.ckpt``, ``scontrol requeue`` the job, stop
  with :class:`cssl.runtime.slurm.Requeued`.
- **Preemption** (``checkpoint.preempt_signal``, SIGTERM): Kubernetes, spot instances, ``scancel``, SLURM
  without ``--signal`` give SIGTERM and a few seconds before SIGKILL. Write ``hpc_ckpt_<n>.ckpt`` within
  ``checkpoint.preempt_grace_s`` and stop with :class:`Preempted` (exit status 128 + the signal's number,
  143 for SIGTERM: the job did not complete). When the grace budget runs out first (a long step, a slow
  disk), the process exits at the deadline without a new file and the newest checkpoint stands; a second
  SIGTERM exits at once. Either way no partial file is left.

The handler only raises a flag; at the batch end of the next optimiser step (not inside a gradient
accumulation, whose gradients no checkpoint holds) the ranks agree on it (one all-reduce of two flags: any
rank that got a signal counts), and write the checkpoint together, so a run resumed with ``resume=auto``
continues exactly. At the last batch of an epoch the stop waits for the epoch's
validation and end, which a resumed run would otherwise skip. Lightning's own handlers are replaced during
training: its SLURM handler saves from inside the handler, wherever the step is, and its SIGTERM handler
broadcasts from inside the handler and stops without a checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import LightningEnvironment

from cssl.core import storage
from cssl.core.errors import RunError, check, is_number
from cssl.runtime import slurm
from cssl.runtime.checkpoint import AtomicCheckpointIO, resume_candidates

REQUEUE, PREEMPT = 0, 1


class Preempted(RunError):
    """Raised on every rank once the preemption checkpoint is written (or given up for lack of time)."""

    prefix = "stopped"

    def __init__(self, message: str, *, exit_code: int, quiet: bool = False) -> None:
        super().__init__(message)
        self.exit_code, self.quiet = exit_code, quiet


def preempt_signal(name: Any) -> signal.Signals | None:
    """``checkpoint.preempt_signal``: a signal name such as ``SIGTERM``, or null (off)."""
    if name in (None, "", "null"):
        return None
    valid = sorted(s.name for s in signal.Signals if s.name not in ("SIGKILL", "SIGSTOP"))
    check(
        isinstance(name, str) and name.upper() in valid,
        f"checkpoint.preempt_signal must be null or a signal name such as SIGTERM, got {name!r}",
    )
    return signal.Signals[name.upper()]


def grace_seconds(value: Any) -> float:
    """``checkpoint.preempt_grace_s``: seconds from the signal to the exit, > 0."""
    check(
        is_number(value) and value > 0,
        f"checkpoint.preempt_grace_s must be a number of seconds > 0 (under the scheduler's grace period), got {value!r}",
    )
    return float(value)


def signal_stop(
    run_dir: Path, *, requeue_signal: Any, preempt_signal_name: Any, grace_s: Any, on_slurm: bool
) -> StopOnSignal | None:
    """The callback for ``checkpoint.requeue_signal`` (under SLURM) and ``checkpoint.preempt_signal``, or
    None when neither applies. A signal that is both requeues under SLURM and preempts elsewhere."""
    requeue = slurm.requeue_signal(requeue_signal)
    preempt = preempt_signal(preempt_signal_name)
    grace = grace_seconds(grace_s)
    requeue = requeue if on_slurm else None
    if preempt == requeue:
        preempt = None
    if requeue is None and preempt is None:
        return None
    return StopOnSignal(run_dir, requeue=requeue, preempt=preempt, grace_s=grace)


class StopOnSignal(pl.Callback):
    """On ``requeue`` or ``preempt``: at the next batch end, on all ranks, write ``run_dir/hpc_ckpt_<n>.ckpt``
    and stop (see the module's docstring).

    Args:
        run_dir: the run's folder (where ``resume=auto`` looks for ``hpc_ckpt_*.ckpt``).
        requeue: SLURM's time-limit signal (``scontrol requeue`` after the checkpoint), or None.
        preempt: the preemption signal (stop after the checkpoint), or None.
        grace_s: seconds from the preemption signal to the exit, checkpoint included.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        requeue: signal.Signals | None = None,
        preempt: signal.Signals | None = None,
        grace_s: float = 25.0,
    ) -> None:
        self.run_dir, self.requeue, self.preempt, self.grace_s = Path(run_dir), requeue, preempt, grace_s
        self.flags = [0, 0]  # REQUEUE, PREEMPT: signals this process received
        self.deadline: float | None = None
        self.done = False
        self._deferred: list[int] | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._pid: int | None = None
        self._timer: threading.Timer | None = None
        self._launcher: Any = None
        self._step_before = -1

    @property
    def signals(self) -> list[signal.Signals]:
        return [s for s in (self.requeue, self.preempt) if s is not None]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        self._pid, self._launcher = os.getpid(), trainer.strategy.launcher
        self._previous = {s: signal.getsignal(s) for s in self.signals}
        self._install()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()  # again: Lightning registers its SIGTERM handler between setup and here

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the final validation after training: Lightning's handler would end it with exit status 0; here a
        # preemption signal only starts the grace budget (no checkpoint to write: training is complete)
        if trainer.state.fn == "validate":
            self._install()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in ("fit", "validate"):
            self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()  # Lightning calls no teardown hook after an exception

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._deferred is not None or trainer.global_step == self._step_before:
            return  # in the middle of an accumulation the gradients so far are in no checkpoint: the step ends first
        flags = self._agree(trainer)
        if not any(flags):
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._deferred = flags  # validation and the epoch's end first: a resumed run would skip them
            return
        self._stop(trainer, flags)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred is not None:
            self._stop(trainer, self._deferred)

    # -- signals ------------------------------------------------------------------------------------------

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._pid == os.getpid() and threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker: the main process stops the run, the worker goes with it
        if signum == self.preempt:
            if self.flags[PREEMPT]:
                self._exit_now(f"a second {signal.Signals(signum).name}: exiting at once", signum)
            self.flags[PREEMPT] = 1
            self._arm(signal.Signals(signum))
        else:
            self.flags[REQUEUE] = 1  # only a flag: the checkpoint is written between steps

    def _arm(self, signum: signal.Signals) -> None:
        """Start the grace budget (once): at its end the process exits, whatever it is doing."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.grace_s
        self._timer = threading.Timer(self.grace_s, self._overrun, args=(signum,))
        self._timer.daemon = True
        self._timer.start()

    def _overrun(self, signum: signal.Signals) -> None:
        if not self.done:
            reason = f"{signum.name}: no checkpoint within checkpoint.preempt_grace_s={self.grace_s:g} s"
            self._exit_now(reason, signum)

    def _exit_now(self, reason: str, signum: int) -> None:
        """Exit at once: remove partial files, end the ranks this process started, say which file stands."""
        storage.remove_partial_files()
        for proc in getattr(self._launcher, "procs", None) or []:
            try:
                proc.send_signal(signal.SIGKILL)  # Lightning's own ranks: they would wait for this one forever
            except OSError:
                pass
        line = f"stopped: {reason}; {_newest(self.run_dir)}\n"
        os.write(2, line.encode(errors="replace"))
        os._exit(128 + int(signum))

    # -- the stop, at a batch end ------------------------------------------------------------------------

    def _agree(self, trainer: pl.Trainer) -> list[int]:
        """The flags of all ranks (any rank that got a signal counts); one all-reduce under DDP."""
        flags = list(self.flags)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = torch.tensor(flags, dtype=torch.int32, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            flags = [int(v) for v in shared.tolist()]
        return flags

    def _stop(self, trainer: pl.Trainer, flags: list[int]) -> None:
        requeue = bool(flags[REQUEUE]) and self.requeue is not None
        preempt = bool(flags[PREEMPT]) and self.preempt is not None
        if preempt:
            self._arm(self.preempt)  # a rank that learnt it from the others starts its own budget
        write, left, need = True, None, AtomicCheckpointIO.last_save_seconds
        if preempt and self.deadline is not None:
            left = self.deadline - time.monotonic()
            write = need is None or left > 1.5 * need + 0.5
            if trainer.world_size > 1:
                write = trainer.strategy.broadcast(write, src=0)  # rank 0 writes: its budget decides
        path = self.run_dir / f"hpc_ckpt_{slurm.hpc_index(self.run_dir) + 1}.ckpt"
        seconds = 0.0
        if write:
            trainer.strategy.barrier("hpc_ckpt_name")  # every rank picked the name before rank 0 writes it
            start = time.monotonic()
            trainer.save_checkpoint(path, weights_only=False)
            seconds = time.monotonic() - start
            if trainer.is_global_zero:
                for old in self.run_dir.glob("hpc_ckpt_*.ckpt"):
                    if old != path:
                        old.unlink(missing_ok=True)
        if requeue and trainer.is_global_zero:
            slurm.requeue()
        trainer.strategy.barrier("stop_on_signal")
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        step = trainer.global_step
        if requeue:
            raise slurm.Requeued(f"stopped at step {step} for a requeue; {path} holds the state")
        name = self.preempt.name
        if write:
            message = (
                f"{name} at step {step}: {path} holds the state (written in {seconds:.1f} s); "
                "the same command with resume=auto continues exactly"
            )
        else:
            message = (
                f"{name} at step {step}: {left:.1f} s of checkpoint.preempt_grace_s={self.grace_s:g} left and a "
                f"checkpoint takes about {need:.1f} s, so none was written; {_newest(self.run_dir)}"
            )
        # a rank that Lightning started is watched by rank 0's launcher, which kills every rank on a non-zero exit
        started_by_lightning = trainer.local_rank > 0 and isinstance(
            trainer.strategy.cluster_environment, LightningEnvironment
        )
        exit_code = 0 if started_by_lightning else 128 + int(self.preempt)
        raise Preempted(message, exit_code=exit_code, quiet=trainer.global_rank != 0)


def _newest(run_dir: Path) -> str:
    try:
        found = resume_candidates(run_dir)
    except OSError:
        found = []
    if not found:
        return "no checkpoint was written yet: the same command starts the run over"
    return f"the newest checkpoint stands ({found[0]}); the same command with resume=auto continues from it"
