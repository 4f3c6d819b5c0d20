"""Ablation reports: a set of runs -> one table (markdown and CSV) and accuracy plots.

``python -m cssl.report RUN_DIR... [--out DIR] [--name NAME] [--wandb-group GROUP --wandb-project P
--wandb-entity E] [--columns a,b | --all] [--no-baselines] [--baseline-cache DIR]``

A run is a folder with ``summary.json`` (and ``config.yaml``), as ``train.py`` and ``linear_eval.py`` write
them; arguments may be run dirs or any folder above them (a multirun's sweep dir, ``runs/``). The report
finds the config keys that vary across the pretraining runs, groups runs that differ only by seed, and
gives mean and standard deviation over seeds of every final metric the runs have: the summary's
accuracies, ``linear_top1`` of the linear evaluations that point at a run's checkpoint, and whatever
scalars the run logged last (``summary.json``'s ``metrics``: ``neg/...`` diagnostics included), without
knowing their names in advance. With ``--wandb-group`` the runs of a W&B group are read instead (online).

The markdown table shows the accuracies, the final loss and a few diagnostics per method family (``--columns``
picks others, ``--all`` shows every metric); the CSV always has every metric. Reference rows for a
random-init backbone and for the raw pixels (:mod:`cssl.baselines`, cached) close the table and are drawn as
horizontal lines in the plots. ``NAME_curves.png`` draws each row's validation metrics against the training
step (mean over seeds, band of one std) from ``RUN/csv/metrics.csv`` (``logger=csv``) or the W&B history.

Bad input (no runs, an unreadable file, no network for W&B) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cssl.core.errors import ConfigError

#: Summary fields that are metrics of a pretraining run (others are bookkeeping).
SUMMARY_METRICS = ("knn_top1", "online_top1", "train_loss", "train_online_top1", "images_per_second", "wall_seconds")
#: Logged metric names that duplicate a summary field.
ALIASES = {
    "val/knn_top1": "knn_top1",
    "val/online_top1": "online_top1",
    "train/loss": "train_loss",
    "train/online_top1": "train_online_top1",
}
#: Accuracies plotted against each varied key, when runs have them.
PLOTTED = ("knn_top1", "online_top1", "linear_top1")
#: Column order of the known metrics; other metrics follow in name order, then the timing columns.
LEADING = (
    *("knn_top1", "online_top1", "linear_top1", "linear_top1_best", "linear_top5", "eval_knn_top1", "eval_knn_top5"),
    *("train_loss", "train_online_top1"),
)
TRAILING = ("images_per_second", "wall_seconds")
#: Columns of the default markdown table: the accuracies and the final loss, then FAMILY_COLUMNS.
DEFAULT_COLUMNS = ("linear_top1_best", "linear_top1", "knn_top1", "eval_knn_top1", "online_top1", "train_loss")
#: A few diagnostics per method family (shown by default when some run of the family has them).
FAMILY_COLUMNS = {
    "no_negatives": ("byol/cos", "byol/z_std", "byol/tau"),  # methods with ``uses_negatives = False``
    "queue": ("neg/queue_age_mean", "neg/bank_drift"),  # queue and memory-bank pools
    "hcl": ("neg/hcl_weight_std", "neg/hcl_weight_max"),  # HCL's importance weights
    "in_batch": ("neg/effective_negatives",),  # negatives from the batch
}
#: Validation metrics not drawn as learning curves.
CURVE_IGNORED = ("val/embedding",)
#: W&B summary keys that are not final metrics.
WANDB_BOOKKEEPING = ("epoch", "trainer/global_step")
#: Config keys that never make runs differ (paths, bookkeeping, where the logs go).
IGNORED_KEYS = {
    "run_dir",
    "resume",
    "ckpt",
    "trainer.progress_bar",
    "data.root",
    "data.num_workers",
    "data.download",
    "data.verify_checksums",
}
IGNORED_PREFIXES = ("logger.", "hydra.", "checkpoint.", "wandb.", "_")
#: Keys shown before the others (a method's name first), when they vary.
PRIORITY = ("method.name", "method.estimator", "data.name", "backbone")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[_T ]\d{2}[-:]\d{2}")
MISSING = "—"


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


@dataclass
class Row:
    """Runs identical in every varied key: their key values and per-metric (mean, std, count)."""

    values: dict[str, Any]
    runs: list[Run]
    stats: dict[str, tuple[float, float | None, int]]


@dataclass
class Report:
    """What the table and plots show."""

    varied: list[str]  # every config key that varies across runs
    plotted: list[str]  # the varied keys that no other varied key determines
    columns: list[str]  # metric names
    rows: list[Row]
    runs: list[Run]
    linear_runs: int = 0
    baselines: list[Row] = field(default_factory=list)  # reference rows: values {"baseline": label}


# -- reading runs ---------------------------------------------------------------------------------------
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


def _read(path: Path, loader: Any) -> Any:
    try:
        with path.open() as handle:
            return loader(handle)
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read {path}: {reason}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def pretrain_metrics(summary: dict[str, Any], logged: dict[str, Any]) -> dict[str, float]:
    """A pretraining run's metrics: the summary's scalars, then every other final logged scalar."""
    metrics = {k: v for k in SUMMARY_METRICS if (v := _number(summary.get(k))) is not None}
    for name, value in sorted(logged.items()):
        alias = ALIASES.get(name)
        number = _number(value)
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
        step = next((_number(_parse(row.get(k))) for k in step_keys if _number(_parse(row.get(k))) is not None), None)
        if step is None:
            continue
        for name, raw in row.items():
            value = _number(_parse(raw))
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
    from cssl.runtime.loggers import _reachable

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _reachable(base):
        raise ConfigError(f"--wandb-group: cannot reach W&B at {base} (no network?); report local run dirs instead")
    try:
        import wandb

        api = wandb.Api(timeout=30)
        found = list(api.runs(f"{entity}/{project}" if entity else project, filters={"group": group}))
    except Exception as err:  # noqa: BLE001 - any API failure is one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"--wandb-group {group}: W&B query failed ({type(err).__name__}: {first})") from None
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


def _owner(checkpoint: str) -> Path:
    """The run dir of a checkpoint path (``RUN/checkpoints/x.ckpt`` -> ``RUN``)."""
    path = Path(checkpoint)
    if path.suffix == ".ckpt":
        path = path.parent
    return path.parent if path.name == "checkpoints" else path


def _same_dir(owner: Path, alias: str) -> bool:
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


def join_linear(pretrain: list[Run], evaluations: list[Run]) -> int:
    """Give each pretraining run ``linear_top1``/``linear_top5`` (or ``eval_knn_*``) of the evaluations of
    its checkpoints (mean over several); returns how many evaluations were joined."""
    joined = 0
    results: dict[int, dict[str, list[float]]] = {}
    for ev in evaluations:
        owner = _owner(str(ev.summary.get("checkpoint", "")))
        match = next((i for i, run in enumerate(pretrain) if any(_same_dir(owner, a) for a in run.aliases)), None)
        if match is None:
            print(f"warning: {ev.path}: evaluated checkpoint {owner} is not among the runs; ignored", file=sys.stderr)
            continue
        joined += 1
        prefix = "linear" if ev.summary.get("mode", "linear") == "linear" else "eval_knn"
        for k in ("top1", "top5"):
            if (value := _number(ev.summary.get(k))) is not None:
                results.setdefault(match, {}).setdefault(f"{prefix}_{k}", []).append(value)
        if prefix == "linear" and (value := _number(ev.summary.get("top1_best"))) is not None:
            results.setdefault(match, {}).setdefault("linear_top1_best", []).append(value)
    for i, values in results.items():
        pretrain[i].metrics.update({k: statistics.fmean(v) for k, v in values.items()})
    return joined


# -- what varies, grouped by seed ----------------------------------------------------------------------
def _ignored(key: str, values: Iterable[Any]) -> bool:
    last = key.rsplit(".", 1)[-1]
    if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or "seed" in last:
        return True
    return any(isinstance(v, str) and TIMESTAMP.search(v) for v in values)


def _hashable(value: Any) -> Any:
    """A value to compare runs by: lists as tuples, and numbers with their type (``1`` is not ``1.0`` for
    ``trainer.limit_val_batches``, nor ``True``)."""
    if isinstance(value, bool | int | float):
        return (type(value).__name__, value)
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def varied_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs (absent counts as a value), bookkeeping excluded;
    the method's name and estimator first, then in config order.

    >>> a = Run("a", {"method.name": "dcl", "seed": 0, "run_dir": "x"}, {})
    >>> b = Run("b", {"method.name": "hcl", "seed": 1, "run_dir": "y", "method.beta": 1.0}, {})
    >>> varied_keys([a, b])
    ['method.name', 'method.beta']
    """
    order: dict[str, None] = {}
    for run in runs:
        order.update(dict.fromkeys(run.config))
    keys = []
    for key in order:
        values = [run.config.get(key, MISSING) for run in runs]
        if len({_hashable(v) for v in values}) > 1 and not _ignored(key, values):
            keys.append(key)
    rank = {k: i for i, k in enumerate(PRIORITY)}
    return sorted(keys, key=lambda k: rank.get(k, len(rank)))


def _determines(runs: Sequence[Run], cause: str, effect: str) -> bool:
    """Whether the value of ``cause`` fixes the value of ``effect`` in every run."""
    seen: dict[Any, Any] = {}
    for run in runs:
        a, b = (_hashable(run.config.get(k, MISSING)) for k in (cause, effect))
        if seen.setdefault(a, b) != b:
            return False
    return True


def independent_keys(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """The varied keys not fixed by an earlier one (``method.temperature`` follows ``method.name`` when
    each method keeps its default): the axes of the ablation."""
    chosen: list[str] = []
    for key in keys:
        if not any(_determines(runs, c, key) for c in chosen):
            chosen.append(key)
    return chosen


def _sort_value(value: Any) -> tuple[int, float, str]:
    number = _number(value)
    if value == MISSING:
        return (2, 0.0, "")
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def metric_stats(runs: Sequence[Run], name: str) -> tuple[float, float | None, int] | None:
    """(mean, sample std or None for one value, count) of a metric over runs that have it."""
    values = [run.metrics[name] for run in runs if run.metrics.get(name) is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def metric_columns(runs: Sequence[Run], extra: Iterable[str] = ()) -> list[str]:
    names = {name for run in runs for name in run.metrics} | set(extra)
    rest = sorted(names - set(LEADING) - set(TRAILING))
    return [n for n in LEADING if n in names] + rest + [n for n in TRAILING if n in names]


def build_report(runs: Sequence[Run]) -> Report:
    """Group pretraining runs (with their evaluations joined) by every varied key; rows sorted by the
    independent keys, then the others."""
    pretrain = [r for r in runs if not r.is_linear_eval]
    if not pretrain:
        raise ConfigError("no pretraining runs found (only evaluations): pass the pretraining run dirs too")
    linear = join_linear(pretrain, [r for r in runs if r.is_linear_eval])
    varied = varied_keys(pretrain)
    plotted = independent_keys(pretrain, varied)
    columns = metric_columns(pretrain)
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in pretrain:
        groups.setdefault(tuple(_hashable(run.config.get(k, MISSING)) for k in varied), []).append(run)
    rows = []
    for members in groups.values():
        values = {k: members[0].config.get(k, MISSING) for k in varied}
        stats = {c: s for c in columns if (s := metric_stats(members, c)) is not None}
        rows.append(Row(values, sorted(members, key=lambda r: str(r.seed)), stats))
    order = plotted + [k for k in varied if k not in plotted]
    rows.sort(key=lambda row: [_sort_value(row.values[k]) for k in order])
    return Report(varied=varied, plotted=plotted, columns=columns, rows=rows, runs=pretrain, linear_runs=linear)


# -- baselines ------------------------------------------------------------------------------------------
BASELINE_METRICS = ("knn_top1", "linear_top1", "linear_top1_best")


def _baseline_label(kind: str, spec: dict[str, Any], several: bool) -> str:
    label = f"random-init {spec['backbone']}" if kind == "random_init" else "raw pixels"
    if several:  # runs on several datasets or image options: say which
        size = spec["data_options"].get("image_size")
        label += f" ({spec['data']}" + (f", {size} px" if size else "") + ")"
    return label


def add_baselines(report: Report, cache: Path | None) -> int:
    """Reference rows for the random-init backbone and the raw pixels (:mod:`cssl.baselines`), one per kind and
    distinct (dataset, architecture, image options, protocol), mean and std over the runs' seeds; each result
    computed once and cached under ``cache``. Returns how many were computed (not read from the cache)."""
    from cssl import baselines

    before = baselines.COMPUTED["count"]
    groups: dict[str, tuple[str, dict[str, Any], dict[int, Run]]] = {}
    for run in report.runs:
        for kind in baselines.KINDS:
            spec = baselines.baseline_spec(run.config, kind)
            if spec is None:
                continue
            key = baselines.spec_hash({**spec, "seed": None})
            groups.setdefault(key, (kind, spec, {}))[2].setdefault(spec["seed"], run)
    several = len({baselines.spec_hash({"d": s["data"], "o": s["data_options"]}) for _, s, _ in groups.values()}) > 1
    for kind, spec, seeds in groups.values():
        members = []
        for seed, run in sorted(seeds.items()):
            root = run.config.get("data.root")
            try:
                results = baselines.baseline({**spec, "seed": seed}, cache, root=None if root is None else str(root))
            except ConfigError as err:
                raise ConfigError(f"baselines: {err} (pass --no-baselines to skip them)") from None
            members.append(Run(path=f"baseline:{kind}", config={}, summary={"seed": seed}, metrics=results))
        label = _baseline_label(kind, spec, several)
        stats = {c: st for c in BASELINE_METRICS if (st := metric_stats(members, c)) is not None}
        report.baselines.append(Row({"baseline": label}, members, stats))
    report.baselines.sort(key=lambda row: (not row.values["baseline"].startswith("random"), row.values["baseline"]))
    if report.baselines:  # a baseline's linear accuracy is shown even when no run has a linear evaluation
        report.columns = metric_columns(report.runs, BASELINE_METRICS)
    return baselines.COMPUTED["count"] - before


# -- which columns the table shows ----------------------------------------------------------------------
def family(run: Run) -> str:
    """A run's method family for the default diagnostics: ``no_negatives`` (the method class says
    ``uses_negatives = False``), ``hcl`` (HCL's estimator), ``queue`` (a queue or bank: queue ages logged),
    else ``in_batch``."""
    from cssl.methods import METHODS

    cls = METHODS.get(str(run.config.get("method.name", run.summary.get("method"))))
    if (cls is not None and not getattr(cls, "uses_negatives", True)) or any(
        m.startswith("byol/") for m in run.metrics
    ):
        return "no_negatives"
    if str(run.config.get("method.estimator", "")) == "hcl" or "neg/hcl_weight_std" in run.metrics:
        return "hcl"
    if any(m.startswith(("neg/queue_age", "neg/bank_")) for m in run.metrics):
        return "queue"
    return "in_batch"


def table_columns(report: Report, *, columns: Sequence[str] | None = None, everything: bool = False) -> list[str]:
    """The metric columns of the markdown table: all (``everything``), the named ones (``columns``, each of
    which must exist), or by default the accuracies, the final loss and each present family's diagnostics."""
    if everything:
        return list(report.columns)
    if columns:
        unknown = [c for c in columns if c not in report.columns]
        if unknown:
            raise ConfigError(
                f"--columns: no metric {', '.join(unknown)} in these runs; choose from {', '.join(report.columns)}"
            )
        return list(columns)
    wanted = list(DEFAULT_COLUMNS)
    present = {family(run) for run in report.runs}
    for name, diagnostics in FAMILY_COLUMNS.items():  # a fixed order, whatever the order of the runs
        if name in present:
            wanted += diagnostics
    return [c for c in dict.fromkeys(wanted) if c in report.columns]


# -- output ---------------------------------------------------------------------------------------------
def fmt(value: float, like: float | None = None) -> str:
    """A metric value with the precision its size (or that of ``like``, the mean of a std) calls for:
    four decimals, one from 100 up, three significant digits when very large or small."""
    size = abs(value if like is None else like)
    if size != 0 and (size >= 1e5 or size < 1e-3):
        return f"{value:.3g}"
    return f"{value:.1f}" if size >= 100 else f"{value:.4f}"


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _cell(stat: tuple[float, float | None, int] | None) -> str:
    if stat is None:
        return ""
    mean, std, _ = stat
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std, like=mean)}"


COLUMN_HELP = {
    "seeds": "runs averaged in the row: runs identical in every varied key, differing only by seed",
    "knn_top1": "weighted kNN top-1 accuracy of the backbone's features on the held-out split (final weights)",
    "online_top1": "top-1 accuracy of the online linear probe (trained on detached features) on the held-out split",
    "linear_top1": "top-1 of linear_eval.py's linear classifier on the frozen backbone (mean over its evaluations)",
    "linear_top1_best": "best top-1 over the validations of the same linear evaluation",
    "linear_top5": "top-5 of the same linear evaluation",
    "eval_knn_top1": "top-1 of linear_eval.py mode=knn on the run's checkpoint",
    "eval_knn_top5": "top-5 of linear_eval.py mode=knn",
    "train_loss": "contrastive loss at the last training step",
    "train_online_top1": "online probe accuracy on the training batches of the last epoch",
    "images_per_second": "training throughput (all ranks, validation excluded)",
    "wall_seconds": "run time of the whole job",
}


def _help(column: str) -> str:
    if column in COLUMN_HELP:
        return COLUMN_HELP[column]
    kind = column.split("/", 1)[0]
    where = {"neg": "negative-sampling diagnostic", "val": "validation metric", "train": "training metric"}
    return f"{where.get(kind, 'metric')} `{column}` as last logged (validation metrics on the final weights)"


def write_markdown(
    report: Report,
    path: Path,
    *,
    title: str,
    sources: Sequence[str],
    plots: Sequence[Path],
    columns: Sequence[str] | None = None,
) -> None:
    """The table of ``columns`` (default: all of ``report.columns``), baseline rows last, then the column help
    and the plots."""
    shown = list(report.columns if columns is None else columns)
    keys = report.plotted
    followers = [k for k in report.varied if k not in keys]
    label_column = keys[0] if keys else "baseline"
    extra = [] if keys or not report.baselines else ["baseline"]
    header = [*extra, *keys, "seeds", *shown]
    best = {}
    for column in shown:
        means = [row.stats[column][0] for row in report.rows if column in row.stats]
        if "top" in column and len(set(means)) > 1:
            best[column] = max(means)
    lines = [f"# {title}", ""]
    lines.append(
        f"{len(report.runs)} pretraining runs in {len(report.rows)} rows"
        + (f", {report.linear_runs} linear evaluations joined" if report.linear_runs else "")
        + f"; from {', '.join(f'`{s}`' for s in sources)}."
    )
    lines.append("")
    if report.varied:
        lines.append("Varied keys: " + ", ".join(f"`{k}`" for k in keys) + ".")
        if followers:
            lines.append("Following from them (in the CSV): " + ", ".join(f"`{k}`" for k in followers) + ".")
    else:
        lines.append("No config key varies: the runs differ only by seed.")
    lines += [
        "",
        "Cells: mean ± sample standard deviation over seeds (a single run: its value); best mean of an accuracy in bold.",
        "",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < len(keys) + len(extra) else "---:" for i in range(len(header))) + "|")
    for row in report.rows:
        cells = [""] * len(extra) + [_show(row.values[k]) for k in keys] + [str(len(row.runs))]
        for column in shown:
            cell = _cell(row.stats.get(column))
            if column in best and column in row.stats and row.stats[column][0] == best[column]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    for row in report.baselines:  # reference rows: in italics, never bold
        label = [f"*{row.values['baseline']}*" if k == label_column else "" for k in [*extra, *keys]]
        cells = label + [str(len(row.runs))] + [_cell(row.stats.get(c)) for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    if report.baselines:
        lines += [
            "",
            "Baselines (italics): the untrained backbone (built with the runs' seeds) and the raw normalised pixels, "
            "with the runs' kNN protocol and a fixed linear budget (docs/ablations.md); `seeds` counts their seeds.",
        ]
    hidden = [c for c in report.columns if c not in shown]
    if hidden:
        lines += ["", f"{len(hidden)} more metrics in the CSV (`--all` shows them here, `--columns` picks)."]
    lines += ["", "## Columns", ""]
    lines += [f"- `{k}`: config key (varied)" for k in keys]
    lines += [f"- `{c}`: {_help(c)}" for c in ["seeds", *shown]]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def write_csv(report: Report, path: Path) -> None:
    """One row per group: every varied key, seeds, each metric's mean and std, the seeds and run dirs."""
    header = [*report.varied, "seeds"] + [f"{c}_{s}" for c in report.columns for s in ("mean", "std")]
    header += ["seed_list", "runs", "baseline"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in report.rows:
            cells: list[Any] = [_show(row.values[k]) if row.values[k] != MISSING else "" for k in report.varied]
            cells.append(len(row.runs))
            for column in report.columns:
                mean, std, _ = row.stats.get(column, (None, None, 0))
                cells += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
            cells += [" ".join(str(r.seed) for r in row.runs), " ".join(r.path for r in row.runs), ""]
            writer.writerow(cells)
        for row in report.baselines:  # reference rows: no key values, the label in the last column
            cells = [""] * len(report.varied) + [len(row.runs)]
            for column in report.columns:
                mean, std, _ = row.stats.get(column, (None, None, 0))
                cells += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
            cells += [" ".join(str(r.seed) for r in row.runs), "", row.values["baseline"]]
            writer.writerow(cells)


def _short(key: str) -> str:
    """A legend name for a key: ``method.name`` -> ``method``, ``method.tau_plus`` -> ``tau_plus``."""
    return key[: -len(".name")] if key.endswith(".name") else key.rsplit(".", 1)[-1]


def plot_key(report: Report, key: str, path: Path) -> bool:
    """Accuracies against ``key``: one panel per accuracy, one series per combination of the other
    independent keys; a line for numeric values, grouped bars otherwise; error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in PLOTTED if any(m in run.metrics for run in report.runs)]  # not baselines alone
    if not metrics:
        return False
    others = [k for k in report.plotted if k != key]
    raw = {_hashable(r.config.get(key, MISSING)): r.config.get(key, MISSING) for r in report.runs}
    xs = sorted(raw, key=lambda h: _sort_value(raw[h]))
    numeric = all(_number(raw[x]) is not None for x in xs)
    combos = {
        tuple(_hashable(r.config.get(k, MISSING)) for k in others): [r.config.get(k, MISSING) for k in others]
        for r in report.runs
    }
    series = sorted(combos, key=lambda c: [_sort_value(v) for v in combos[c]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics) + 1, 3.6), squeeze=False)
    width = 0.8 / max(len(series), 1)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, combo in enumerate(series):
            label = ", ".join(f"{_short(k)}={_show(v)}" for k, v in zip(others, combos[combo], strict=True))
            points = []
            for i, x in enumerate(xs):
                members = [
                    r
                    for r in report.runs
                    if _hashable(r.config.get(key, MISSING)) == x
                    and tuple(_hashable(r.config.get(k, MISSING)) for k in others) == combo
                ]
                stat = metric_stats(members, metric)
                if stat is not None:
                    points.append((i, raw[x], stat[0], stat[1] or 0.0))
            if not points:
                continue
            errors = [p[3] for p in points] if any(p[3] for p in points) else None
            if numeric:
                ax.errorbar(
                    [p[1] for p in points],
                    [p[2] for p in points],
                    yerr=errors,
                    marker="o",
                    capsize=3,
                    label=label,
                )
            else:
                offset = (j - (len(series) - 1) / 2) * width
                ax.bar(
                    [p[0] + offset for p in points],
                    [p[2] for p in points],
                    width,
                    yerr=errors,
                    capsize=3,
                    label=label,
                )
        _draw_baselines(ax, report, metric)
        _zoom(ax)
        if numeric:
            positive = [float(raw[x]) for x in xs if float(raw[x]) > 0]
            if len(positive) == len(xs) and max(positive) / min(positive) >= 20:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(xs)), [_show(raw[x]) for x in xs], rotation=30 if len(xs) > 4 else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {key}")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


#: The metric of a run's validation curve that a baseline's value is comparable with.
CURVE_BASELINE = {"val/knn_top1": "knn_top1"}
BASELINE_STYLE = {"random": ":", "raw": "--"}


def _draw_baselines(ax: Any, report: Report, metric: str) -> None:
    """A labelled horizontal line per baseline row that has ``metric``."""
    for row in report.baselines:
        if metric in row.stats:
            label = row.values["baseline"]
            ax.axhline(
                row.stats[metric][0],
                color="grey",
                linestyle=BASELINE_STYLE.get(label.split()[0].split("-")[0], "-."),
                linewidth=1.2,
                label=label,
            )
            ax.legend(fontsize="small")


def _zoom(ax: Any) -> None:
    """The y axis over the drawn data (lines, bars, error bars, bands, baselines) with a 10% margin, not 0-1."""
    import numpy as np

    ys: list[float] = []
    for line in ax.get_lines():
        ys += [float(v) for v in np.asarray(line.get_ydata(), dtype=float).ravel()]
    for patch in ax.patches:  # bars: their tops
        ys.append(float(patch.get_y() + patch.get_height()))
    for collection in ax.collections:  # error bars and bands
        for path in collection.get_paths():
            ys += [float(v) for v in np.asarray(path.vertices)[:, 1]]
    ys = [y for y in ys if math.isfinite(y)]
    if not ys:
        return
    low, high = min(ys), max(ys)
    pad = 0.1 * (high - low) if high > low else max(0.01, 0.05 * abs(high))
    ax.set_ylim(low - pad, high + pad)


def curve_data(report: Report) -> dict[str, dict[str, tuple[list[int], list[float], list[float]]]]:
    """Per validation metric, per row (label of its varied keys, or ``all runs``): the steps at which some
    seed logged it, the mean over the seeds that did, and the sample std (0 for one seed)."""
    out: dict[str, dict[str, tuple[list[int], list[float], list[float]]]] = {}
    metrics = sorted({m for run in report.runs for m in run.curves})
    for metric in metrics:
        for row in report.rows:
            label = ", ".join(f"{_short(k)}={_show(row.values[k])}" for k in report.plotted) or "all runs"
            by_step: dict[int, list[float]] = {}
            for run in row.runs:
                for step, value in run.curves.get(metric, []):
                    by_step.setdefault(step, []).append(value)
            if not by_step:
                continue
            steps = sorted(by_step)
            means = [statistics.fmean(by_step[s]) for s in steps]
            stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
            out.setdefault(metric, {})[label] = (steps, means, stds)
    return out


def plot_curves(report: Report, path: Path) -> dict[str, dict[str, tuple[list[int], list[float], list[float]]]]:
    """Learning curves: one panel per validation metric, per row a mean line over seeds and a band of +-1
    std; baselines as horizontal lines. Writes nothing and returns {} when no run has curves."""
    data = curve_data(report)
    if not data:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(4.5 * len(data) + 1, 3.6), squeeze=False)
    for ax, (metric, groups) in zip(axes[0], data.items(), strict=True):
        for label, (steps, means, stds) in groups.items():
            (line,) = ax.plot(steps, means, marker="." if len(steps) < 30 else None, label=label)
            if any(stds):
                low = [m - s for m, s in zip(means, stds, strict=True)]
                high = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if metric in CURVE_BASELINE:
            _draw_baselines(ax, report, CURVE_BASELINE[metric])
        _zoom(ax)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if len(groups) > 1 or report.baselines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


def write_report(
    report: Report, out: Path, name: str, sources: Sequence[str], *, columns: Sequence[str] | None = None
) -> list[Path]:
    """Write NAME.md (the table of ``columns``: default all), NAME.csv (every metric), NAME_<key>.png (one per
    independent varied key) and NAME_curves.png (when runs have validation curves) under ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    plots = []
    for key in report.plotted:
        path = out / f"{name}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', key)}.png"
        if plot_key(report, key, path):
            plots.append(path)
    if plot_curves(report, out / f"{name}_curves.png"):
        plots.append(out / f"{name}_curves.png")
    write_markdown(report, out / f"{name}.md", title=name, sources=sources, plots=plots, columns=columns)
    write_csv(report, out / f"{name}.csv")
    return [out / f"{name}.md", out / f"{name}.csv", *plots]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cssl.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run dirs or folders above them (searched for summary.json)")
    parser.add_argument("--out", help="output folder (default: the first RUN_DIR, or reports/ with --wandb-group)")
    parser.add_argument("--name", default="report", help="file name stem of the table, CSV and plots")
    parser.add_argument("--wandb-group", help="read the finished runs of this W&B group (online)")
    parser.add_argument("--wandb-project", default="cssl", help="W&B project of --wandb-group")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity of --wandb-group (default: yours)")
    parser.add_argument("--columns", help="comma-separated metrics of the markdown table (the CSV has all)")
    parser.add_argument("--all", action="store_true", help="every metric in the markdown table")
    parser.add_argument("--no-baselines", action="store_true", help="no random-init and raw-pixel rows")
    parser.add_argument(
        "--baseline-cache",
        help="folder of cached baseline results (default: $CSSL_BASELINE_CACHE or ~/.cache/cssl/baselines)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Command line: read, group, write; returns the files written."""
    args = parse_args(argv)
    if not args.runs and not args.wandb_group:
        raise ConfigError("give run dirs (python -m cssl.report runs/multirun/<time>) or --wandb-group GROUP")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise ConfigError(f"--name must be a plain file name (letters, digits, _ . -), got {args.name!r}")
    if args.all and args.columns:
        raise ConfigError("--all and --columns exclude each other")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    runs = load_local(args.runs) if args.runs else []
    sources = list(args.runs)
    if args.wandb_group:
        runs += load_wandb(args.wandb_group, project=args.wandb_project, entity=args.wandb_entity)
        sources.append(f"W&B group {args.wandb_group}")
    report = build_report(runs)
    if not args.no_baselines:
        from cssl.baselines import default_cache

        add_baselines(report, Path(args.baseline_cache) if args.baseline_cache else default_cache())
    shown = table_columns(report, columns=columns, everything=args.all)
    default = Path(args.runs[0]) if args.runs and Path(args.runs[0]).is_dir() else Path("reports")
    written = write_report(report, Path(args.out) if args.out else default, args.name, sources, columns=shown)
    print((written[0]).read_text())
    print("wrote " + ", ".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    from cssl.runtime.cli import guard

    guard(main)
