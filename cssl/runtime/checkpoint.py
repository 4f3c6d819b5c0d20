"""Checkpoints: atomic writes, weights-only reads, and the RNG state that makes resume exact."""

from __future__ import annotations

import pickle
import random
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torchmetrics import Metric

from cssl.core import distributed, storage
from cssl.core.errors import ConfigError, check

FORMAT_VERSION = 1


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, fsyncs, then renames over the target, so that an
    interrupted save never leaves a truncated checkpoint; reads with ``weights_only=True``. A full disk or
    quota becomes one line (:class:`cssl.core.storage.StorageError`) and the previous files stay."""

    last_save_seconds: float | None = None  # of the newest save in this process (preemption budgets)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        start = time.monotonic()
        atomic_save(checkpoint, Path(path))
        AtomicCheckpointIO.last_save_seconds = time.monotonic() - start

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = True) -> dict:
        return read_checkpoint(Path(path), map_location=map_location or "cpu")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`cssl.core.storage.atomic_write` (temporary file, fsync, rename).

    Raises:
        StorageError: one line with the file, the cause, the bytes needed and free, what to do, and which
            checkpoint ``resume=auto`` would continue from.
    """
    path = Path(path)
    storage.atomic_write(path, lambda f: torch.save(obj, f), needed=tensor_bytes(obj), then=_resume_hint(path))


def run_dir_of(path: str | Path) -> Path:
    """The run dir of a checkpoint: ``RUN/checkpoints/x.ckpt`` -> ``RUN``, a ``.ckpt`` elsewhere -> its folder,
    a run dir -> itself."""
    path = Path(path)
    if path.suffix == ".ckpt":
        path = path.parent
    return path.parent if path.name == "checkpoints" else path


def _resume_hint(path: Path) -> str:
    run_dir = run_dir_of(path)
    try:
        newest = resume_candidates(run_dir)
    except OSError:
        newest = []
    if not newest:
        return "no partial file is left; no checkpoint was written before this one"
    return (
        f"no partial file is left and {newest[0]} is intact; once there is room, the same command with "
        "resume=auto continues from it"
    )


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists and tuples): a checkpoint's size, to a few KiB."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class SpaceCheck(pl.Callback):
    """Before the first checkpoint (at the first batch end, before Lightning's checkpoint callbacks, which it
    runs last), estimate a checkpoint's size from the model and optimiser state and warn in one line when the
    checkpoint folder's file system cannot hold ``files`` of them.

    Args:
        folder: where the checkpoints go.
        files: how many checkpoints exist at once at the peak (the kept ones and the one being written).
        what: those files in words, for the warning.
    """

    def __init__(self, folder: Path, files: int, what: str) -> None:
        self.folder, self.files, self.what = Path(folder), files, what
        self.checked = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.checked:
            return
        self.checked = True
        if not trainer.is_global_zero:
            return
        size = tensor_bytes(pl_module.state_dict()) + sum(tensor_bytes(o.state_dict()) for o in trainer.optimizers)
        message = storage.short_of_space(self.folder, size, self.files, self.what)
        if message is not None:
            storage.warn(message)


def kept_checkpoints(every_n_steps: int, every_n_minutes: float, keep_last: int) -> tuple[int, str]:
    """How many checkpoints exist at once at the peak, and which: ``last.ckpt``, the ``keep_last`` step files
    (with step checkpoints on) and the file being written (the old one is removed only after it is complete).
    Epoch files (``checkpoint.every_n_epochs``) come on top."""
    if (every_n_steps or every_n_minutes) and keep_last > 0:
        return keep_last + 2, f"checkpoint.keep_last={keep_last} step files, last.ckpt and the one being written"
    if every_n_steps or every_n_minutes:
        return 3, "last.ckpt, a step file and the one being written (checkpoint.keep_last=-1 keeps them all)"
    return 2, "last.ckpt and the one being written"


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a cssl checkpoint without unpickling arbitrary objects.

    Raises:
        ConfigError: the file is missing, unreadable, not a checkpoint, holds objects other than tensors
            and plain containers (tampered), or was not written by cssl.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass the path of a .ckpt file or of a run dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint {path} was refused: it holds objects that are not weights ({first})") from None
    except Exception as err:  # noqa: BLE001 - any other failure means an unreadable file
        raise ConfigError(f"checkpoint {path} is unreadable ({type(err).__name__}); is it a cssl .ckpt file?") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "cssl" not in ckpt:
        raise ConfigError(f"checkpoint {path} was not written by cssl (no state_dict/cssl entries)")
    return ckpt


def find_checkpoint(path: Path) -> Path:
    """A .ckpt file as given, or the newest checkpoint of a run dir (``last.ckpt`` on a tie).

    Newest by modification time, so a ``last-v1.ckpt`` that Lightning wrote beside an older ``last.ckpt``
    (a run dir that was copied, then resumed) is found.
    """
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
        if not found:
            raise ConfigError(f"no checkpoint in {folder}; pass a .ckpt file or the run_dir of a finished run")
        return found[-1]
    return path


def step_checkpoints(
    folder: Path, *, every_n_steps: int, every_n_minutes: float, keep_last: int
) -> list[pl.callbacks.ModelCheckpoint]:
    """Mid-epoch checkpoints (Lightning's ModelCheckpoint) every ``every_n_steps`` steps or ``every_n_minutes``
    minutes of training (0: off), as ``stepNNNNNNNN.ckpt`` in ``folder`` (the ``keep_last`` newest are kept;
    -1: all), each also written as ``last.ckpt``."""
    check(
        isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool) and every_n_steps >= 0,
        f"checkpoint.every_n_steps must be an integer >= 0, got {every_n_steps!r}",
    )
    check(
        isinstance(every_n_minutes, int | float) and not isinstance(every_n_minutes, bool) and every_n_minutes >= 0,
        f"checkpoint.every_n_minutes must be a number >= 0, got {every_n_minutes!r}",
    )
    check(
        isinstance(keep_last, int) and not isinstance(keep_last, bool) and (keep_last >= 1 or keep_last == -1),
        f"checkpoint.keep_last must be an integer >= 1 or -1 (all), got {keep_last!r}",
    )
    check(
        not (every_n_steps and every_n_minutes),
        f"set checkpoint.every_n_steps ({every_n_steps}) or checkpoint.every_n_minutes ({every_n_minutes}), not both",
    )
    if not every_n_steps and not every_n_minutes:
        return []
    if every_n_steps:
        trigger: dict[str, Any] = {"every_n_train_steps": every_n_steps}
    else:
        trigger = {"train_time_interval": timedelta(minutes=every_n_minutes)}
    return [
        pl.callbacks.ModelCheckpoint(
            dirpath=str(folder),
            filename="step{step:08d}",
            auto_insert_metric_name=False,
            monitor="step",  # keeps the newest keep_last files
            mode="max",
            save_top_k=keep_last,
            save_last=True,
            enable_version_counter=False,  # always overwrite last.ckpt
            **trigger,
        )
    ]


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints of a run dir, newest first (``last.ckpt`` first on a tie): ``checkpoints/*.ckpt``
    and the ``hpc_ckpt_<n>.ckpt`` that a SLURM requeue leaves in the run dir (Lightning's name and place)."""
    run_dir = Path(run_dir)
    files = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)


def newest_readable(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` that can be read, and its contents; None if there is none yet.

    A newer file that cannot be read (zero bytes, truncated by a node that died while writing it on a
    shared file system) is named through ``warn`` and passed over.

    Raises:
        ConfigError: there are checkpoints, but none of them can be read.
    """
    candidates = resume_candidates(run_dir)
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except ConfigError as err:
            warn(f"resume=auto: passing over {path}, the newest checkpoint left: {err}")
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise ConfigError(f"resume=auto: no checkpoint of {run_dir} can be read ({names}); pass resume=<a .ckpt file>")
    return None


class RNGState(pl.Callback):
    """Saves and restores the random generators (Python, NumPy, torch CPU and accelerator) of every rank,
    so that a resumed run draws the same augmentations and shuffles as an uninterrupted one."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give each rank its own streams: every rank was seeded alike, and views are drawn on the device
        from the global generators, so ranks would otherwise apply the same augmentation parameters to
        their different images. Rank 0 keeps its stream (one process is unchanged); a resumed run then
        restores the saved states over these (Lightning restores callbacks after ``setup``)."""
        if trainer.global_rank > 0:
            seed = (torch.initial_seed() + 1_000_003 * trainer.global_rank) % 2**32
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)  # CPU and every CUDA device

    def state_dict(self) -> dict[str, Any]:
        state = _rng_state()
        if distributed.world_size() > 1:
            states: list[Any] = [None] * distributed.world_size()
            torch.distributed.all_gather_object(states, state)
            return {"per_rank": states}
        return {"per_rank": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("per_rank", [])
        if states:
            _set_rng_state(states[min(distributed.rank(), len(states) - 1)])


class FinishStep(pl.Callback):
    """Completes the method's work of a step (enqueueing keys, a bank's ascent, EMA steps: the module's
    ``finish_batch``) before any checkpoint of that step is written. Lightning calls the callbacks'
    ``on_train_batch_end`` before the module's, so a step checkpoint would otherwise hold a step half done.
    Put it first among the callbacks; ``finish_batch`` runs once per batch, the module's own call skips it."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        finish = getattr(pl_module, "finish_batch", None)
        if finish is not None:
            finish()


class MetricStates(pl.Callback):
    """Saves and restores the accumulators of the module's torchmetrics (the online probe's epoch accuracy)
    on every rank, so that an epoch resumed mid-way reports the accuracy of all its batches. torchmetrics
    keeps them out of the module's state_dict, and rank 0's would be the wrong ones for the other ranks."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = {name: _metric_state(m) for name, m in pl_module.named_modules() if isinstance(m, Metric)}
        states: list[Any] = [state]
        if distributed.world_size() > 1:
            states = [None] * distributed.world_size()
            torch.distributed.all_gather_object(states, state)
        checkpoint["metric_states"] = {"per_rank": states}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("metric_states", {}).get("per_rank", [])
        if not states:
            return
        state = states[min(distributed.rank(), len(states) - 1)]
        for name, metric in pl_module.named_modules():
            if isinstance(metric, Metric) and name in state:
                saved = state[name]
                for key, value in saved["states"].items():
                    if isinstance(value, list):
                        value = [v.to(metric.device) for v in value]
                    else:
                        value = value.to(metric.device)
                    setattr(metric, key, value)
                metric._update_count = int(saved["updates"])
                metric._computed = None


def _metric_state(metric: Metric) -> dict[str, Any]:
    def host(v: Any) -> Any:
        return [t.detach().cpu() for t in v] if isinstance(v, list) else v.detach().cpu()

    return {"states": {k: host(v) for k, v in metric.metric_state.items()}, "updates": int(metric._update_count)}


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x
