"""Timing a run's parts on this machine: a loader worker, the device augmentation, the training step, memory
and the DDP all-gather. Shared by ``python -m cssl.doctor`` and ``bench/gpu_acceptance.py``.

The training step is timed through Lightning's own loop (``Trainer.fit``) on one batch replayed from memory,
so that precision, channels-last, compile, logging and each method's after-step work count as in a real run;
the replayed batch goes through the data module's ``on_after_batch_transfer`` (the device augmentation, or
the device decoder of ``data.decode=gpu``) exactly as a loader's batch would.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

GIB = 2**30


def median_seconds(fn: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` over ``repeats`` calls, after one warm-up call: wall time, or another ``clock``
    (e.g. ``time.thread_time``: what this thread's core spends, whatever else runs on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def resolve_device(accelerator: str) -> torch.device:
    """The device a run with ``trainer.accelerator`` trains on (its first one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's info lines and Python warnings off (measurements print their own table)."""
    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block (a loader worker runs with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- memory -------------------------------------------------------------------------------------------------
def _proc_kib(path: str, key: str) -> int | None:
    """A ``key: value kB`` line of a /proc file (None where there is no such file or line)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak anew: CUDA's allocator statistics, or this process's peak RSS on the host
    (Linux's ``clear_refs``; where that is refused the peak stays the process's lifetime peak)."""
    if device.type == "cuda":
        gc.collect()  # blocks cached for an earlier model would otherwise count as this one's reserve
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory(device: torch.device) -> tuple[int | None, int | None, str]:
    """(peak bytes since :func:`reset_peak_memory`, bytes the run may use, what was measured).

    CUDA: the allocator's reserved peak against the device's total memory. CPU: the process's peak resident
    set against its current resident set plus the host's available memory (other jobs' use included).
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(torch.cuda.max_memory_reserved(device)), int(total), "CUDA memory reserved by torch"
    status, meminfo = "/proc/self/status", "/proc/meminfo"
    peak, rss = _proc_kib(status, "VmHWM"), _proc_kib(status, "VmRSS")
    available = _proc_kib(meminfo, "MemAvailable")
    total = None if rss is None or available is None else (rss + available) * 1024
    return (None if peak is None else peak * 1024), total, "host memory (process peak RSS)"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA's OutOfMemoryError, or the CPU allocator's)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if oom and isinstance(err, oom):
        return True
    text = str(err)
    return isinstance(err, RuntimeError | MemoryError) and ("out of memory" in text or "can't allocate memory" in text)


# -- the training step ------------------------------------------------------------------------------------
class Replay(Dataset):
    """``batch`` (already collated) ``count`` times."""

    def __init__(self, batch: Any, count: int) -> None:
        self.batch, self.count = batch, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Any:
        return self.batch


class ReplayData(pl.LightningDataModule):
    """One collated batch, ``steps`` times, made into views on the device by ``source``'s
    ``on_after_batch_transfer`` (the data module of the run: its device augmentation or device decoder)."""

    def __init__(self, batch: Any, steps: int, source: pl.LightningDataModule | None = None) -> None:
        super().__init__()
        self.batch, self.steps, self.source = batch, steps, source

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Replay(self.batch, self.steps), batch_size=None, num_workers=0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.source is None:
            return batch
        self.source.trainer = self.trainer  # the source's hook checks trainer.training
        return self.source.on_after_batch_transfer(batch, dataloader_idx)


def bare_trainer(callbacks: list[pl.Callback], **options: Any) -> pl.Trainer:
    """A Trainer that only trains: no logger, checkpoints, progress bar, model summary or validation (the
    timing runs of the doctor, the acceptance run and bench/throughput.py)."""
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **options,
    )


class StepTimer(pl.Callback):
    """Wall time at the start of the first step and at the end of every step (device synchronised), each
    step's returned loss (kept on the device, read at the end) and the peak memory. With several processes
    (``ddp_spawn``) rank 0 writes what it found to ``path`` for the parent process."""

    def __init__(self, device: torch.device, path: str | None = None) -> None:
        self.device, self.path = device, path
        self.start = 0.0
        self.ends: list[float] = []
        self.losses: list[torch.Tensor] = []
        self.found: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.ends and not self.start:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, *args: Any) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.losses.append(loss.detach().float())

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        device = pl_module.device
        peak, total, kind = peak_memory(device)
        losses = [float(v) for v in torch.stack(self.losses).cpu()] if self.losses else []
        self.found = {"start": self.start, "ends": self.ends, "losses": losses, "memory": [peak, total, kind]}
        if self.path and trainer.global_rank == 0:
            with open(self.path, "w") as f:
                json.dump(self.found, f)


@dataclass
class StepResult:
    """What :func:`measure_training` found (images per second of one device; ``None`` where not measured)."""

    batch_size: int
    images_per_second: float | None = None
    step_seconds: float | None = None  # mean over the timed steps, augmentation and transfer included
    first_step_seconds: float | None = None  # the first step: allocation, cuDNN tuning, compilation
    memory_peak: int | None = None
    memory_total: int | None = None
    memory_kind: str = ""
    losses: list[float] = field(default_factory=list)
    out_of_memory: bool = False
    error: str | None = None

    @property
    def losses_finite(self) -> bool:
        return bool(self.losses) and all(math.isfinite(v) for v in self.losses)


TRAINER_KEYS = ("precision", "gradient_clip_val", "accumulate_grad_batches", "log_every_n_steps", "deterministic")


def measure_training(
    model: pl.LightningModule,
    batch: Any,
    *,
    batch_size: int,
    source: pl.LightningDataModule | None = None,
    accelerator: str = "auto",
    devices: int = 1,
    steps: int = 10,
    warmup: int = 2,
    trainer_options: dict[str, Any] | None = None,
) -> StepResult:
    """Images per second of ``model``'s training through Lightning: ``warmup`` + ``steps`` steps on
    ``batch`` replayed, augmented on the device by ``source`` (see :class:`ReplayData`).

    ``devices`` > 1: DDP over that many processes started by Lightning (``ddp_spawn``: NCCL on GPUs, gloo on
    the CPU), each replaying the batch; the rate is then that of all processes. ``trainer_options``: Trainer
    arguments of the run that change a step's cost (``precision``, gradient clipping and accumulation,
    ``log_every_n_steps``, ``deterministic``); others are ignored. An allocation failure is returned as
    ``out_of_memory=True``, not raised.
    """
    device = resolve_device(accelerator)
    options = {k: v for k, v in (trainer_options or {}).items() if k in TRAINER_KEYS and v is not None}
    result = StepResult(batch_size=batch_size * devices)
    total = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        timer = StepTimer(device, os.path.join(tmp, "steps.json") if devices > 1 else None)
        with quiet():
            trainer = bare_trainer(
                [timer],
                accelerator="cuda" if device.type == "cuda" else "cpu",
                devices=devices,
                strategy="ddp_spawn" if devices > 1 else "auto",
                max_steps=total,
                max_epochs=-1,
                **options,
            )
        reset_peak_memory(device)
        try:
            with quiet():
                trainer.fit(model, datamodule=ReplayData(batch, total, source))
        except Exception as err:  # an allocation failure is a finding; anything else is the caller's problem
            if not is_out_of_memory(err):
                raise
            result.out_of_memory, result.error = True, " ".join(str(err).split())[:300]
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result.memory_peak, result.memory_total, result.memory_kind = peak_memory(device)
            return result
        found = timer.found
        if devices > 1:
            with open(timer.path) as f:  # type: ignore[arg-type]
                found = json.load(f)
    result.memory_peak, result.memory_total, result.memory_kind = found["memory"]
    ends, start = found["ends"], found["start"]
    if not ends:
        return result
    result.first_step_seconds = ends[0] - start
    timed = ends[warmup - 1 :] if warmup > 0 else [start, *ends]
    if len(timed) >= 2:
        result.step_seconds = (timed[-1] - timed[0]) / (len(timed) - 1)
        result.images_per_second = result.batch_size / result.step_seconds
    result.losses = found["losses"]
    return result


def augment_images_per_second(
    augment: Callable[[Any], Any], batch: Any, batch_size: int, device: torch.device, repeats: int = 5
) -> float:
    """Images per second of ``augment(batch)`` on ``device`` (median of ``repeats`` after a warm-up)."""

    def once() -> None:
        augment(batch)
        synchronize(device)

    return batch_size / median_seconds(once, repeats)


# -- the loader ---------------------------------------------------------------------------------------------
@dataclass
class LoaderResult:
    images_per_second: float  # one worker (one process, one thread), views included
    batches: int
    first_batch: Any  # a real collated batch, for the device-side measurements


def measure_loader(make_loader: Callable[[], DataLoader], batch_size: int, *, seconds: float = 5.0) -> LoaderResult:
    """What one loader worker delivers: batches of ``make_loader()`` (a loader with ``num_workers=0``) made in
    this process on one thread, as a worker makes them, for about ``seconds`` (at least two batches after the
    first, re-starting the epoch if it ends). Wall time: on the node where the run will go, that is what a
    worker with a core of its own gives."""
    with threads(1):
        iterator = iter(make_loader())
        first = next(iterator)
        count, start = 0, time.perf_counter()
        while count < 2 or time.perf_counter() - start < seconds:
            try:
                next(iterator)
            except StopIteration:
                iterator = iter(make_loader())
                continue
            count += 1
        elapsed = time.perf_counter() - start
    return LoaderResult(count * batch_size / elapsed, count, first)


# -- DDP ---------------------------------------------------------------------------------------------------
def _rank_main(
    rank: int, world: int, init_file: str, backend: str, fn: Callable[..., Any], args: tuple, queue: Any
) -> None:
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
        queue.put((rank, fn(rank, world, device, *args), None))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        queue.put((rank, None, f"{type(err).__name__}: {err}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_ranks(
    fn: Callable[..., Any], world: int, *, backend: str, args: tuple = (), timeout: float = 300
) -> list[Any]:
    """``[fn(rank, world, device, *args) for each rank]``, each in its own process of one process group
    (``backend`` nccl: one GPU per rank; gloo: the CPU). ``fn`` must be a module-level function and return
    picklable values; the first rank's error is raised as a RuntimeError."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [
            ctx.Process(target=_rank_main, args=(r, world, init_file, backend, fn, args, queue)) for r in range(world)
        ]
        for p in procs:
            p.start()
        try:
            results = sorted((queue.get(timeout=timeout) for _ in range(world)), key=lambda r: r[0])
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
    errors = [e for _, _, e in results if e]
    if errors:
        raise RuntimeError(f"{world} processes over {backend}: {errors[0]}")
    return [value for _, value, _ in results]


def _gather_step(rank: int, world: int, device: torch.device, shape: tuple[int, int], repeats: int) -> float:
    import torch.distributed as dist

    from cssl.core.distributed import gather_with_grad

    z = torch.randn(*shape, device=device, requires_grad=True)  # (2B, D): both views' projections

    def step() -> None:
        gather_with_grad(z).sum().backward()  # forward all_gather + backward all_reduce
        synchronize(device)

    dist.barrier()
    return median_seconds(step, repeats)


def gather_seconds(world: int, shape: tuple[int, int], *, backend: str, repeats: int = 10) -> float:
    """Seconds per step of cssl's all-gather with gradient over ``world`` processes (``backend`` nccl on one
    GPU each, or gloo on the CPU) for a per-rank ``shape`` (2B, D); the slowest rank's median."""
    return max(spawn_ranks(_gather_step, world, backend=backend, args=(shape, repeats)))
