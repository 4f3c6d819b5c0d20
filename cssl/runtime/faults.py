"""Failures of training that a user can act on, as one line instead of a traceback.

- out of memory on the device in a training step (``torch.OutOfMemoryError``; on the CPU torch's allocator
  error): the batch size, the memory of the device, and the way out;
- a loader worker killed by the kernel (its out-of-memory killer, usually): fewer workers or a smaller batch;
- a file that cannot be written (full disk, quota, read-only, permission; see :mod:`cssl.core.storage`).

Nothing is written on the way out: the newest checkpoint is the last complete one, and ``resume=auto``
continues from it.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cssl.core import storage
from cssl.core.errors import RunError
from cssl.runtime.preempt import Preempted

CONTINUE = "nothing was written after the newest checkpoint; the same command with resume=auto continues from it"


class OutOfMemory(RunError):
    """The device (or the host) ran out of memory in training."""


@contextmanager
def translated(
    trainer: Any, *, batch_size: int, accumulate: int = 1, precision: Any = "32-true", num_workers: int = 0
) -> Iterator[None]:
    """Run the body (``trainer.fit``); turn the failures above into one-line :class:`RunError` s. On rank 0 of
    a multi-process run that Lightning launched, the other ranks are ended too (they would wait forever in
    the next collective)."""
    try:
        yield
    except RunError as err:
        if not isinstance(err, Preempted):  # a preemption stops every rank by itself
            _end_other_ranks(trainer)
        raise
    except torch.OutOfMemoryError as err:
        _end_other_ranks(trainer)
        raise OutOfMemory(out_of_memory(err, batch_size, accumulate, precision)) from None
    except RuntimeError as err:
        text = str(err)
        if "DataLoader worker" in text and ("killed by signal" in text or "exited unexpectedly" in text):
            _end_other_ranks(trainer)
            raise OutOfMemory(worker_killed(err, batch_size, num_workers)) from None
        if "DefaultCPUAllocator" in text and "allocate" in text:
            _end_other_ranks(trainer)
            raise OutOfMemory(out_of_memory(err, batch_size, accumulate, precision)) from None
        fault = storage.find_os_error(err)
        if fault is None:
            raise
        _end_other_ranks(trainer)
        raise _storage(fault) from None
    except OSError as err:
        if err.errno not in storage.CAUSES:
            raise
        _end_other_ranks(trainer)
        raise _storage(err) from None


def out_of_memory(err: BaseException, batch_size: int, accumulate: int = 1, precision: Any = "32-true") -> str:
    """One line: where memory ran out, at which batch size, what the device has, and what to change."""
    asked = re.search(r"[Tt]ried to allocate ([0-9.]+ ?[KMGT]?i?B|\d+ bytes)", str(err))
    tried = f", asking for {asked.group(1)} more" if asked else ""
    smaller = max(1, batch_size // 2)
    ways = (
        f"set data.batch_size={smaller} with trainer.accumulate_grad_batches={accumulate * batch_size // smaller} "
        "(the same global batch and learning rate; in-batch methods then contrast fewer negatives per step)"
    )
    if str(precision) in ("32", "32-true"):
        ways += ", or trainer.precision=bf16-mixed"
    return (
        f"out of memory in a training step at data.batch_size={batch_size} per device ({device_memory()}{tried}); "
        f"{ways}; the checkpoints written so far are intact (another batch size starts best in a new run_dir)"
    )


def worker_killed(err: BaseException, batch_size: int, num_workers: int) -> str:
    """One line for a data loader worker that died (the kernel's out-of-memory killer, most often)."""
    text = " ".join(str(e) for e in _chain(err))  # torch names the signal in the exception it chains
    how = re.search(r"killed by signal: ([^.]+)", text)
    pids = re.search(r"pid\(?s?\)? ([\d, ]+)", text)
    which = f" (pid {pids.group(1).strip().rstrip(',')})" if pids else ""
    cause = f"killed by signal {how.group(1).strip()}" if how else "ended unexpectedly"
    fewer = max(0, num_workers // 2)
    return (
        f"a data loader worker{which} was {cause}, most likely by the kernel's out-of-memory killer "
        f"(host memory {host_memory()}); set data.num_workers={fewer} (now {num_workers}) or a smaller "
        f"data.batch_size (now {batch_size}); {CONTINUE}"
    )


def device_memory() -> str:
    """``cuda:0 has 79.1 GiB, 77.9 GiB held by tensors at the peak`` (the CPU: the host's memory)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        peak = torch.cuda.max_memory_allocated(index)
        return f"cuda:{index} has {storage.human(total)}, {storage.human(peak)} held by tensors at the peak"
    return f"on the CPU, host memory {host_memory()}"


def host_memory() -> str:
    try:
        return storage.human(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return "unknown"


def _chain(err: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and all(err is not e for e in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _storage(err: OSError) -> storage.StorageError:
    path = Path(err.filename) if err.filename else Path.cwd()
    return storage.storage_error(path, err, then=CONTINUE)


def _end_other_ranks(trainer: Any) -> None:
    """SIGKILL the ranks that Lightning started from this process (none elsewhere)."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    for proc in getattr(launcher, "procs", None) or []:
        try:
            proc.send_signal(signal.SIGKILL)
        except OSError:
            pass
