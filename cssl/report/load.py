"""Reading runs: local run dirs (``summary.json``, ``config.yaml``, ``csv/metrics.csv``) and the finished runs of a
W&B group, as :class:`Run` objects with their final metrics and validation curves; linear and kNN evaluations
joined to the pretraining runs whose checkpoints they evaluated."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cssl.core.errors import ConfigError
from cssl.runtime.checkpoint import run_dir_of

#: Summary fields that are metrics of a pretraining run (others are bookkeeping).
SUMMARY_METRICS = ("knn_top1", "online_top1", "train_loss", "train_online_top1", "images_per_second", "wall_seconds")
#: Logged metric names that duplicate a summary field.
ALIASES = {
    "val/knn_top1": "knn_top1",
    "val/online_top1": "online_top1",
    "train/loss": "train_loss",
    "train/online_top1": "train_online_top1",
}
#: Validation metrics not drawn as learning curves.
CURVE_IGNORED = ("val/embedding",)
#: W&B summary keys that are not final metrics.
WANDB_BOOKKEEPING = ("epoch", "trainer/global_step")


@dataclass
class Run:
    """One run: where it is, its flattened config, its summary and final metrics (name -> value)."""

    path: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # paths that name this run (joins linear evaluations)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # val metric -> [(step, value)]

    @property
    def is_linear_eval(self) -> bool:
        return "mode" in self.summary and "top1" in self.summary and "global_step" not in self.summary

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.config.get("seed"))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level of dotted keys (lists kept as values).

    >>> flatten({"method": {"name": "dcl", "tau_plus": 0.1}, "seed": 1})
    {'method.name': 'dcl', 'method.tau_plus': 0.1, 'seed': 1}
    """
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Folders holding a ``summary.json``, at or below each path (sorted, each once)."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"no such run dir or folder: {path}")
        if path.is_file():
            path = path.parent
        for summary in sorted(path.rglob("summary.json")):
            found.setdefault(summary.parent, None)
    return list(found)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _read(path: Path, loader: Any) -> Any:
    try:
        with path.open() as handle:
            return loader(handle)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {_first_line(err) or type(err).__name__}") from None


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def pretrain_metrics(summary: dict[str, Any], logged: dict[str, Any]) -> dict[str, float]:
    """A pretraining run's metrics: the summary's scalars, then every other final logged scalar."""
    metrics = {k: v for k in SUMMARY_METRICS if (v := as_number(summary.get(k))) is not None}
    for name, value in sorted(logged.items()):
        alias = ALIASES.get(name)
        number = as_number(value)
        if number is None or str(name).startswith("_") or name in WANDB_BOOKKEEPING:
            continue
        if alias is None:
            metrics[str(name)] = number
        else:
            metrics.setdefault(alias, number)
    return metrics


def read_run(folder: Path) -> Run:
    """The run of a folder written by ``train.py`` or ``linear_eval.py``."""
    summary = _read(folder / "summary.json", json.load)
    if not isinstance(summary, dict):
        raise ConfigError(f"cannot read {folder / 'summary.json'}: not a JSON object")
    config: dict[str, Any] = {}
    if (folder / "config.yaml").is_file():
        tree = _read(folder / "config.yaml", yaml.safe_load)
        if not isinstance(tree, dict):
            raise ConfigError(f"cannot read {folder / 'config.yaml'}: not a mapping")
        config = flatten(tree)
    else:  # no config.yaml (e.g. a kNN evaluation): what the summary says
        names = {"method": "method.name", "estimator": "method.estimator", "data": "data.name", "backbone": "backbone"}
        config = {key: summary[k] for k, key in names.items() if k in summary}
    run = Run(path=str(folder), config=config, summary=summary)
    if not run.is_linear_eval:
        logged = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
        run.metrics = pretrain_metrics(summary, logged)
        run.aliases = [str(folder)] + ([str(summary["run_dir"])] if summary.get("run_dir") else [])
        if (folder / "csv" / "metrics.csv").is_file():
            run.curves = read_curves(folder / "csv" / "metrics.csv")
    return run


def _curves(rows: Iterable[dict[str, Any]], step_keys: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``val/...`` metric -> [(step, value)] sorted by step (the last value of a step kept), from logged rows."""
    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        step = next(
            (as_number(_parse(row.get(k))) for k in step_keys if as_number(_parse(row.get(k))) is not None), None
        )
        if step is None:
            continue
        for name, raw in row.items():
            value = as_number(_parse(raw))
            if str(name).startswith("val/") and name not in CURVE_IGNORED and value is not None:
                curves.setdefault(str(name), {})[int(step)] = value
    return {name: sorted(points.items()) for name, points in sorted(curves.items())}


def _parse(value: Any) -> Any:
    """A CSV cell as a number when it is one."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The validation metrics of Lightning's CSVLogger file (``logger=csv``: RUN/csv/metrics.csv, one row per
    logging call with a ``step`` column and empty cells for the metrics not logged then) against the step."""
    return _curves(_read(path, lambda handle: list(csv.DictReader(handle))), ("step",))


def load_local(paths: Sequence[str | Path]) -> list[Run]:
    folders = find_run_dirs(paths)
    if not folders:
        raise ConfigError(f"no runs found under {', '.join(map(str, paths))} (looked for summary.json)")
    return [read_run(folder) for folder in folders]


def load_wandb(group: str, *, project: str, entity: str | None) -> list[Run]:
    """The finished runs of a W&B group (config and summary), through ``wandb.Api()``; needs a network."""
    from cssl.runtime.loggers import reachable

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not reachable(base):
        raise ConfigError(f"--wandb-group: cannot reach W&B at {base} (no network?); report local run dirs instead")
    try:
        import wandb

        api = wandb.Api(timeout=30)
        found = list(api.runs(f"{entity}/{project}" if entity else project, filters={"group": group}))
    except Exception as err:  # noqa: BLE001 - any API failure is one line for the user
        raise ConfigError(
            f"--wandb-group {group}: W&B query failed ({type(err).__name__}: {_first_line(err)})"
        ) from None
    runs = []
    for item in found:
        if getattr(item, "state", "finished") != "finished":
            continue
        config = flatten({k: v for k, v in dict(item.config).items() if not str(k).startswith("_")})
        summary = dict(getattr(item, "summary_metrics", None) or item.summary)
        path = "/".join(item.path) if isinstance(item.path, list | tuple) else str(item.path)
        if "ckpt" in config and "mode" in config:  # a linear evaluation logged to the same group
            top = {k: summary.get(f"val/{k}") for k in ("top1", "top5")}
            run = Run(
                path=f"wandb:{path}",
                config=config,
                summary={"mode": config["mode"], **top, "checkpoint": config["ckpt"]},
            )
        else:
            run = Run(path=f"wandb:{path}", config=config, summary={"seed": config.get("seed")})
            run.metrics = pretrain_metrics({}, summary)
            run.aliases = [str(config["run_dir"])] if config.get("run_dir") else []
            try:
                history = list(item.scan_history())
            except Exception as err:  # noqa: BLE001 - curves are optional: the table does not need them
                print(f"warning: {run.path}: no W&B history ({type(err).__name__}); no curves", file=sys.stderr)
                history = []
            run.curves = _curves(history, ("trainer/global_step", "_step"))
        runs.append(run)
    if not runs:
        raise ConfigError(f"--wandb-group {group}: no finished runs in {entity + '/' if entity else ''}{project}")
    return runs


def same_dir(owner: Path, alias: str) -> bool:
    """Whether ``owner`` (as written by an evaluation) and ``alias`` (a run's dir) are the same folder,
    also when one is relative to another working directory (then its parts end the other's)."""
    other = Path(alias)
    if os.path.abspath(owner) == os.path.abspath(other):
        return True
    for relative, full in ((owner, other), (other, owner)):
        tail = Path(os.path.abspath(full)).parts[-len(relative.parts) :]
        if not relative.is_absolute() and len(relative.parts) >= 2 and tail == relative.parts:
            return True
    return False


def eval_columns(summary: dict[str, Any]) -> dict[str, float]:
    """The report's columns of one evaluation: ``linear_top1``/``linear_top5``/``linear_top1_best``,
    ``finetune_...`` likewise, ``eval_knn_top1``/``eval_knn_top5``; a label subset appends its tag, as the
    ``eval/...`` W&B keys do (``finetune_top1_frac0.01``)."""
    mode = str(summary.get("mode", "linear"))
    tag = (summary.get("subset") or {}).get("tag") if isinstance(summary.get("subset"), dict) else None
    name, suffix = ("eval_knn" if mode == "knn" else mode), (f"_{tag}" if tag else "")
    keys = ("top1", "top5") if mode == "knn" else ("top1", "top5", "top1_best")
    return {f"{name}_{k}{suffix}": v for k in keys if (v := as_number(summary.get(k))) is not None}


def is_random_init(run: Run) -> bool:
    """An evaluation that fine-tuned from a random initialisation (a baseline row, not joined to a run)."""
    return run.summary.get("init") == "random"


def join_linear(pretrain: list[Run], evaluations: list[Run]) -> int:
    """Give each pretraining run the accuracies of the evaluations of its checkpoints (:func:`eval_columns`,
    mean over several); returns how many evaluations were joined. Random-init fine-tuning is left out (its
    rows are baselines)."""
    joined = 0
    results: dict[int, dict[str, list[float]]] = {}
    for ev in evaluations:
        if is_random_init(ev):
            continue
        owner = run_dir_of(str(ev.summary.get("checkpoint", "")))
        match = next((i for i, run in enumerate(pretrain) if any(same_dir(owner, a) for a in run.aliases)), None)
        if match is None:
            print(f"warning: {ev.path}: evaluated checkpoint {owner} is not among the runs; ignored", file=sys.stderr)
            continue
        joined += 1
        for name, value in eval_columns(ev.summary).items():
            results.setdefault(match, {}).setdefault(name, []).append(value)
    for i, values in results.items():
        pretrain[i].metrics.update({k: statistics.fmean(v) for k, v in values.items()})
    return joined
