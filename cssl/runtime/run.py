"""What the entry points share: the error guard, run dirs, data, trainer and summaries.

The Hydra config stops here: these helpers turn it into typed objects for the rest of cssl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from cssl.core import storage
from cssl.core.errors import ConfigError, check
from cssl.data import ImageDataModule, build_datamodule
from cssl.data.plan import ViewPlan
from cssl.runtime import console, slurm
from cssl.runtime.checkpoint import AtomicCheckpointIO
from cssl.runtime.loggers import build_logger


def output_dir(cfg: DictConfig) -> Path:
    """The run's folder: Hydra's job output dir (``run_dir``, or one folder per job in a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        out = Path(str(cfg.run_dir))
    storage.check_writable(out)  # a run dir that cannot be written is refused before any work
    return out


def plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


#: data.* keys that are no data-module arguments: the augmentation (the caller's view plan) and the label
#: subset of linear_eval.py (cssl.eval.subsets)
NOT_DATA_OPTIONS = (
    "name",
    "augment",
    "augment_per_view",
    "multicrop",
    "label_fraction",
    "labels_per_class",
    "label_subset",
)


def build_data(cfg: DictConfig, *, train_split: str, views: ViewPlan | None = None, **extra: Any) -> ImageDataModule:
    """The data module of ``cfg.data`` with the training ``views`` (the caller's plan: the augmentation keys
    of ``cfg.data`` are read there) and ``extra`` constructor options (``val_views``, ``val_bank``, ...)."""
    options = {k: v for k, v in plain(cfg.data).items() if k not in NOT_DATA_OPTIONS}
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    options["pin_memory"] = accelerator not in ("cpu",) and torch.cuda.is_available()
    seed = int(cfg.get("seed") or 0)  # the training order: a function of (seed, epoch, rank)
    return build_datamodule(str(cfg.data.name), train_split=train_split, views=views, seed=seed, **options, **extra)


def build_trainer(
    cfg: DictConfig, run_dir: Path, *, callbacks: list[pl.Callback], logger_config: dict[str, Any] | None = None
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with cssl's checkpoint IO, progress bar and logger."""
    console.quiet()  # before the Trainer's own start-up messages
    options = plain(cfg.trainer)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        if isinstance(options.get(key), float) and options[key] == 1.0:
            del options[key]  # Lightning's default; passed explicitly, Lightning prints a note saying so
    log = dict(plain(cfg.logger))
    log.pop("log_model", None)  # not the logger's: pretraining logs the exported backbone at its end
    logger = build_logger(str(log.pop("name")), run_dir, config=logger_config, **log)
    progress_bar = bool(options.pop("progress_bar", True))
    if progress_bar:
        callbacks = [*callbacks, pl.callbacks.RichProgressBar()]
    strategy = build_strategy(options)
    try:
        return pl.Trainer(
            **options,
            strategy=strategy,
            default_root_dir=str(run_dir),
            logger=logger if logger is not None else False,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO(), *slurm.environment_plugins()],
            enable_progress_bar=progress_bar,
            num_sanity_val_steps=0,
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"trainer: {str(err).splitlines()[0]}") from None
    except pl.utilities.exceptions.MisconfigurationException as err:
        raise ConfigError(f"trainer: {str(err).splitlines()[0]}") from None


def build_strategy(options: dict[str, Any]) -> Any:
    """The Lightning strategy of ``cfg.trainer``; pops the keys that are not Trainer arguments.

    ``strategy: ddp`` becomes a :class:`DDPStrategy` (gloo on the CPU, NCCL on GPUs, as Lightning picks
    from the device) with ``find_unused_parameters`` from the config (default off: every method uses all of
    its parameters in every step). The launch is Lightning's: it spawns ``devices - 1`` copies of the
    script on each node, or finds the processes made by torchrun or SLURM's srun (cluster environments).
    """
    strategy = options.pop("strategy", "auto")
    find_unused = options.pop("find_unused_parameters", False)
    check(isinstance(find_unused, bool), f"trainer.find_unused_parameters must be true or false, got {find_unused!r}")
    accelerator = str(options.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    check(
        not (options.get("sync_batchnorm") and on_cpu and str(strategy).startswith("ddp")),
        "trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm has no CPU kernel); set trainer.sync_batchnorm=false",
    )
    if strategy == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        backend = "gloo" if on_cpu else None  # None: Lightning's choice for the device (NCCL on CUDA)
        strategy = DDPStrategy(process_group_backend=backend, find_unused_parameters=find_unused)
    return strategy


class Throughput(pl.Callback):
    """Training images per second over the whole run (all ranks): wall time from the start of each training
    epoch to the end of its last step, so that waiting for the loader, the copy to the device and the device
    augmentation count with the steps; validation and epoch-end work do not."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.images = 0
        self.seconds = 0.0
        self._last = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._last = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._last = time.perf_counter()  # a validation inside the epoch is not training time

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        self.seconds += now - self._last
        self._last = now
        self.images += self.batch_size * trainer.world_size

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


SUMMARY_HINT = "the checkpoints are intact; once there is room, the same command (with resume=auto) writes it"


@rank_zero_only
def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` atomically (the terminal gets :func:`say`'s few lines instead)."""
    storage.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n", then=SUMMARY_HINT)


@rank_zero_only
def say(lines: list[str]) -> None:
    """Print a run's closing lines (:mod:`cssl.runtime.console`), after a blank line."""
    print("\n" + "\n".join(lines), flush=True)


@rank_zero_only
def save_config(run_dir: Path, cfg: DictConfig) -> None:
    storage.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
