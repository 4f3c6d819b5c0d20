"""Loggers: W&B (offline automatically without an API key or a network; failures never stop training),
CSV, or none."""

from __future__ import annotations

import math
import netrc
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from cssl.core import storage
from cssl.core.errors import ConfigError

LOGGERS = ("wandb", "csv", "none")


def wandb_mode(requested: str = "auto") -> str:
    """``online`` or ``offline``: an explicit WANDB_MODE or ``requested`` wins; ``auto`` goes online only
    with an API key and a reachable server."""
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.mode must be auto, online, offline or disabled, got {requested!r}")
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    if requested != "auto":
        return requested
    if not _has_api_key():
        return "offline"
    return "online" if reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")) else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def reachable(url: str, timeout: float = 3.0) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


class SafeWandbLogger(WandbLogger):
    """A WandbLogger whose failures (no network, quota, server errors) become one warning, after which
    logging to W&B stops and training goes on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._broken = False
        if self._wandb_init.get("anonymous") is None:  # W&B warns on any value of this obsolete setting
            self._wandb_init.pop("anonymous", None)

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - logging must never kill training
            self._broken = True
            fault = storage.find_os_error(err)
            if fault is not None:  # the W&B folder on a full disk, a quota, a read-only file system
                where = Path(fault.filename) if fault.filename else Path(self.save_dir or ".")
                _warn(
                    "warning: W&B logging failed and is now off for this run, training goes on: could not write "
                    + storage.describe(where, fault)
                )
                return None
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            _warn(f"warning: W&B logging failed and is now off for this run ({type(err).__name__}: {first})")
            return None

    @property
    def experiment(self) -> Any:
        from lightning_fabric.loggers.logger import _DummyExperiment

        if self._broken:
            return _DummyExperiment()
        result = self._guard(lambda: WandbLogger.experiment.fget(self))
        storage.guard_log_files()  # W&B's own debug.log on a full disk: one warning, not a traceback per record
        return _DummyExperiment() if result is None else result

    def log_metrics(self, metrics: Any, step: Any = None) -> None:
        self._guard(super().log_metrics, metrics, step)

    def log_hyperparams(self, params: Any) -> None:
        self._guard(super().log_hyperparams, params)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._guard(super().after_save_checkpoint, checkpoint_callback)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        self._guard(super().log_image, *args, **kwargs)

    def finalize(self, status: str) -> None:
        self._guard(super().finalize, status)


def check_log_model(logger: dict[str, Any]) -> bool:
    """``logger.log_model`` (true: log the exported backbone as a W&B artifact at the end of pretraining),
    checked: a boolean, and only with the W&B logger."""
    value = logger.get("log_model", False)
    if not isinstance(value, bool):
        raise ConfigError(f"logger.log_model must be true or false, got {value!r}")
    if value and logger.get("name") != "wandb":
        raise ConfigError(
            f"logger.log_model=true logs a W&B artifact and needs logger=wandb, not logger={logger.get('name')}"
        )
    return value


def log_artifact(loggers: list[Logger], files: list[Path], *, name: str, metadata: dict[str, Any]) -> str | None:
    """Log ``files`` as one W&B model artifact (offline: recorded in the offline run, uploaded by
    ``wandb sync``); returns ``name:latest``, or None without a working W&B logger."""
    import wandb

    logger = _working_wandb(loggers)
    experiment = None if logger is None else logger.experiment
    if not hasattr(experiment, "log_artifact"):  # no W&B logger, or W&B failed to start (a dummy)
        return None
    artifact = wandb.Artifact(_artifact_name(name), type="model", metadata=metadata)
    for path in files:
        artifact.add_file(str(path), name=Path(path).name)
    experiment.log_artifact(artifact, aliases=["latest"])
    return f"{artifact.name}:latest"


def _working_wandb(loggers: list[Logger]) -> SafeWandbLogger | None:
    """The W&B logger among ``loggers``, unless logging to it has failed."""
    return next((lg for lg in loggers if isinstance(lg, SafeWandbLogger) and not lg._broken), None)


def _artifact_name(name: str) -> str:
    """W&B allows letters, digits, dashes, underscores and dots in artifact names."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def where_logged(loggers: list[Logger]) -> str | None:
    """Where the run's metrics went, for its closing lines: the W&B run's page, or its offline folder and the
    command that uploads it, or the CSV file; None without a logger (and on every rank but 0)."""
    from cssl.runtime.console import shown

    if rank_zero_only.rank != 0:
        return None
    for logger in loggers:
        if isinstance(logger, SafeWandbLogger):
            if logger._broken:
                return "W&B logging failed during the run (the warning above); summary.json has the metrics"
            run = logger.experiment
            if logger._offline:
                return f"W&B offline; upload with: wandb sync {shown(Path(run.dir).parent)}"
            return f"W&B {run.url}"
        if isinstance(logger, CSVLogger):
            return shown(Path(logger.log_dir) / "metrics.csv")
    return None


@rank_zero_only
def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_logger(
    name: str,
    run_dir: Path,
    *,
    project: str = "cssl",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    run_name: str | None = None,
    mode: str = "auto",
    config: dict[str, Any] | None = None,
) -> Logger | None:
    """The logger called ``name`` (``wandb``, ``csv`` or ``none``), writing under ``run_dir``."""
    if name == "none":
        return None
    if name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if name != "wandb":
        raise ConfigError(f"unknown logger {name!r}: choose logger= one of {', '.join(LOGGERS)}")
    resolved = wandb_mode(mode)
    if resolved == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    _finish_previous_run()
    return SafeWandbLogger(
        project=project,
        entity=entity,
        group=group,
        tags=list(tags or []),
        name=run_name or run_dir.name,
        save_dir=str(run_dir),
        offline=resolved == "offline",
        config=config,
        settings=_wandb_settings(),
    )


def _finish_previous_run() -> None:
    """Close the W&B run a previous job of this process left open (a Hydra multirun runs its jobs in one
    process): WandbLogger would otherwise log every job into the first job's run."""
    import wandb

    if wandb.run is None:
        return
    try:
        wandb.finish()
    except Exception as err:  # noqa: BLE001 - logging must never kill training
        _warn(f"warning: could not close the previous W&B run ({type(err).__name__}: {err})")


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(init_timeout=60, console="off")


def run_group(group: Any, *, method: str, data: str, sweep: str | None = None) -> str:
    """The W&B group of a run: ``group`` when set, else the Hydra multirun's name (``sweep``), else
    ``<method>_<data>``, so runs that belong together compare side by side."""
    if group not in (None, ""):
        if not isinstance(group, str | int | float) or isinstance(group, bool):
            raise ConfigError(f"logger.group must be a string or null, got {group!r}")
        return str(group)
    return sweep if sweep else f"{method}_{data}"


def run_tags(tags: Any, *, method: str, estimator: str | None, data: str) -> list[str]:
    """``tags`` followed by ``method=...``, ``estimator=...`` and ``data=...`` (each once, order kept)."""
    tags = [] if tags is None else list(tags) if isinstance(tags, list | tuple) else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ConfigError(f"logger.tags must be a list of non-empty strings, e.g. logger.tags=[a,b], got {tags!r}")
    auto = [f"method={method}", f"data={data}"] + ([f"estimator={estimator}"] if estimator else [])
    return list(dict.fromkeys([*tags, *auto]))


def multirun_name() -> str | None:
    """Under a Hydra multirun (``-m``): the sweep folder's name, prefixed ``multirun_`` when the folder is
    the default ``runs/multirun/<time>``; None for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hydra.mode != RunMode.MULTIRUN:
        return None
    folder = Path(str(hydra.sweep.dir))
    return f"{folder.parent.name}_{folder.name}" if folder.parent.name == "multirun" else folder.name


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The scalar entries of a Lightning ``callback_metrics`` mapping as floats (non-finite -> None)."""
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):  # not a scalar: skipped
            continue
        out[str(name)] = number if math.isfinite(number) else None
    return dict(sorted(out.items()))


def log_histograms(logger: object, step: int, pos: Tensor, neg: Tensor, max_values: int = 100_000) -> None:
    """Histograms of positive and negative similarities to W&B (other loggers: nothing)."""
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    neg = neg.flatten()
    if neg.numel() > max_values:
        neg = neg[torch.randint(neg.numel(), (max_values,), device=neg.device)]
    logger.log_metrics(
        {
            "neg/pos_sim_hist": wandb.Histogram(pos.float().cpu().numpy()),
            "neg/neg_sim_hist": wandb.Histogram(neg.float().cpu().numpy()),
        },
        step=step,
    )


def run_record(loggers: list[Logger]) -> dict[str, Any] | None:
    """The W&B run of a training (id, project, entity, mode and its local folder) for the checkpoint, so that
    evaluations can write their results into it (:func:`write_eval_summary`); None without W&B."""
    logger = _working_wandb(loggers)
    run = None if logger is None else logger.experiment
    if logger is None or logger._broken or not getattr(run, "id", None):  # _broken: starting it may fail
        return None
    return {
        "id": str(run.id),
        "project": getattr(run, "project", None) or logger._wandb_init.get("project"),
        "entity": getattr(run, "entity", None) or logger._wandb_init.get("entity"),
        "mode": "offline" if logger._offline else "online",
        "dir": str(Path(run.dir).parent),
    }


class RecordRun(pl.Callback):
    """Puts :func:`run_record` into the method's checkpoint metadata (``meta["wandb"]``) when training starts."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if rank_zero_only.rank != 0 or not isinstance(getattr(pl_module, "meta", None), dict):
            return
        try:
            record = run_record(trainer.loggers)
        except Exception as err:  # noqa: BLE001 - logging must never kill training
            _warn(f"warning: the W&B run id is not recorded in the checkpoints ({type(err).__name__}: {err})")
            return
        if record is not None:
            pl_module.meta["wandb"] = record


def write_eval_summary(record: Any, metrics: dict[str, float], run_dir: Path) -> str | None:
    """Write ``metrics`` (``eval/...`` keys) into the summary of the W&B run ``record`` names (a training's
    run, from its checkpoint). Online: W&B's resume of that run id. Offline (the training was offline, or
    there is no network or key now): an offline run with the same id under ``run_dir/wandb``, so that
    ``wandb sync`` of both folders updates one run. Returns a line for the terminal; a failure is one warning
    and None, never an error."""
    if rank_zero_only.rank != 0 or not metrics or not isinstance(record, dict) or not record.get("id"):
        return None
    try:
        mode = "offline" if record.get("mode") == "offline" else wandb_mode("auto")
        if mode == "disabled":
            return None
        import wandb

        from cssl.runtime.console import shown

        os.environ.setdefault("WANDB_SILENT", "true")
        _finish_previous_run()
        run = wandb.init(
            id=str(record["id"]),
            project=record.get("project") or "cssl",
            entity=record.get("entity") or None,
            resume="allow",
            mode=mode,
            dir=str(run_dir),
            settings=_wandb_settings(),
        )
        run.summary.update(dict(metrics))
        folder = Path(run.dir).parent
        url = getattr(run, "url", None)
        run.finish()
        wandb.teardown()  # finish() returns before W&B's service has written the run's records; this waits for it
    except Exception as err:  # noqa: BLE001 - logging must never kill an evaluation
        fault = storage.find_os_error(err)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = storage.describe(Path(fault.filename or run_dir), fault) if fault is not None else first
        _warn(f"warning: the results were not written to the training's W&B run {record.get('id')} ({reason})")
        return None
    if mode == "offline":
        training = record.get("dir")
        both = f"{shown(Path(training))} {shown(folder)}" if training else shown(folder)
        return f"W&B: {len(metrics)} eval/ keys for run {record['id']} (offline); upload both with: wandb sync {both}"
    return f"W&B: {len(metrics)} eval/ keys written to {url or record['id']}"
