"""What the runs say: the config keys that vary, rows of runs that differ only by seed (mean and std of every
metric), the baseline rows, and which metric columns the markdown table shows by default."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cssl.core.errors import ConfigError
from cssl.report.load import Run, as_number, eval_columns, is_random_init, join_linear

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
    "no_negatives": ("byol/cos", "byol/z_std", "byol/tau"),  # methods that are no ContrastiveMethod
    "queue": ("neg/queue_age_mean", "neg/bank_drift"),  # queue and memory-bank pools
    "hcl": ("neg/hcl_weight_std", "neg/hcl_weight_max"),  # HCL's importance weights
    "in_batch": ("neg/effective_negatives",),  # negatives from the batch
}
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


def config_key(run: Run, keys: Sequence[str]) -> tuple[Any, ...]:
    """What ``run`` is compared by on ``keys``: each key's value made hashable (:func:`compared`)."""
    return tuple(_hashable(compared(run, k)) for k in keys)


def compared(run: Run, key: str) -> Any:
    """The value ``run`` is compared by on ``key``: absent counts as null, so that a key a newer version added
    with a null default (e.g. ``backbone_init``) does not split older runs from newer ones; absent against any
    other value still varies (``method.beta`` of DCL and HCL runs)."""
    value = run.config.get(key, MISSING)
    return None if value is MISSING else value


def varied_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs (absent counts as null, :func:`compared`), bookkeeping excluded;
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
        values = [compared(run, key) for run in runs]
        if len({_hashable(v) for v in values}) > 1 and not _ignored(key, values):
            keys.append(key)
    rank = {k: i for i, k in enumerate(PRIORITY)}
    return sorted(keys, key=lambda k: rank.get(k, len(rank)))


def _determines(runs: Sequence[Run], cause: str, effect: str) -> bool:
    """Whether the value of ``cause`` fixes the value of ``effect`` in every run."""
    seen: dict[Any, Any] = {}
    for run in runs:
        a, b = config_key(run, (cause, effect))
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


def sort_value(value: Any) -> tuple[int, float, str]:
    number = as_number(value)
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
    evaluations = [r for r in runs if r.is_linear_eval]
    linear = join_linear(pretrain, evaluations)
    random_rows = random_init_rows([r for r in evaluations if is_random_init(r)])
    varied = varied_keys(pretrain)
    plotted = independent_keys(pretrain, varied)
    columns = metric_columns(pretrain, [c for row in random_rows for c in row.stats])
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in pretrain:
        groups.setdefault(config_key(run, varied), []).append(run)
    rows = []
    for members in groups.values():
        values = {k: members[0].config.get(k, MISSING) for k in varied}
        stats = {c: s for c in columns if (s := metric_stats(members, c)) is not None}
        rows.append(Row(values, sorted(members, key=lambda r: str(r.seed)), stats))
    order = plotted + [k for k in varied if k not in plotted]
    rows.sort(key=lambda row: [sort_value(row.values[k]) for k in order])
    report = Report(varied=varied, plotted=plotted, columns=columns, rows=rows, runs=pretrain, linear_runs=linear)
    report.baselines += random_rows
    return report


def random_init_rows(evaluations: Sequence[Run]) -> list[Row]:
    """Baseline rows of fine-tuning from a random initialisation (``linear_eval.py init=random``), one per
    backbone, dataset and protocol, mean and std over seeds, in the columns of the pretrained fine-tuning
    (``finetune_top1_frac0.01``, ...), so that each column shows what pretraining buys."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for ev in evaluations:
        s = ev.summary
        key = (str(s.get("backbone")), str(s.get("data")), str(s.get("protocol")))
        groups.setdefault(key, []).append(Run(path=ev.path, config={}, summary={"seed": s.get("seed")},
                                              metrics=eval_columns(s)))  # fmt: skip
    several = len({k[1:] for k in groups}) > 1
    rows = []
    for (backbone, data, protocol), members in sorted(groups.items()):
        label = f"random-init fine-tuning {backbone}" + (f" ({data}, protocol {protocol})" if several else "")
        names = sorted({n for m in members for n in m.metrics})
        stats = {c: st for c in names if (st := metric_stats(members, c)) is not None}
        rows.append(Row({"baseline": label}, members, stats))
    return rows


# -- baselines ------------------------------------------------------------------------------------------
BASELINE_METRICS = ("knn_top1", "linear_top1", "linear_top1_best")


def _baseline_label(kind: str, spec: dict[str, Any], several: bool) -> str:
    if kind == "random_init":
        label = f"random-init {spec['backbone']}"
    elif kind == "starting_weights":
        label = f"starting weights {Path(str(spec['init'])).name}"
    else:
        label = "raw pixels"
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
        report.columns = metric_columns(report.runs, [*BASELINE_METRICS, *report.columns])
    return baselines.COMPUTED["count"] - before


# -- which columns the table shows ----------------------------------------------------------------------
def family(run: Run) -> str:
    """A run's method family for the default diagnostics: ``no_negatives`` (the method class is no
    :class:`~cssl.methods.ContrastiveMethod`), ``hcl`` (HCL's estimator), ``queue`` (a queue or bank: queue ages logged),
    else ``in_batch``."""
    from cssl.methods import METHODS, ContrastiveMethod

    cls = METHODS.get(str(run.config.get("method.name", run.summary.get("method"))))
    if (cls is not None and not issubclass(cls, ContrastiveMethod)) or any(m.startswith("byol/") for m in run.metrics):
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
    wanted += [c for c in report.columns if c.startswith(("linear_top1_", "finetune_top1")) and "best" not in c]
    present = {family(run) for run in report.runs}
    for name, diagnostics in FAMILY_COLUMNS.items():  # a fixed order, whatever the order of the runs
        if name in present:
            wanted += diagnostics
    return [c for c in dict.fromkeys(wanted) if c in report.columns]
