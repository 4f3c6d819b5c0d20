"""Writing a report: the markdown table with its column help, the CSV of every metric, and the plots (accuracy
against each independent varied key, learning curves), baselines drawn as horizontal lines."""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cssl.core.errors import ConfigError
from cssl.report.analyse import MISSING, Report, Row, config_key, metric_stats, sort_value
from cssl.report.load import as_number

#: Accuracies plotted against each varied key, when runs have them.
PLOTTED = ("knn_top1", "online_top1", "linear_top1")


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
        + (f", {report.linear_runs} evaluations joined" if report.linear_runs else "")
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
        seeds = len({str(r.seed) for r in row.runs})  # random-init fine-tuning: one run per seed and subset
        cells = label + [str(seeds)] + [_cell(row.stats.get(c)) for c in shown]
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


def _stat_cells(row: Row, columns: Sequence[str]) -> list[str]:
    """A CSV row's mean and std cells of each column, in full precision (empty where missing)."""
    cells = []
    for column in columns:
        mean, std, _ = row.stats.get(column, (None, None, 0))
        cells += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
    return cells


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
            cells += _stat_cells(row, report.columns)
            cells += [" ".join(str(r.seed) for r in row.runs), " ".join(r.path for r in row.runs), ""]
            writer.writerow(cells)
        for row in report.baselines:  # reference rows: no key values, the label in the last column
            cells = [""] * len(report.varied) + [len(row.runs)]
            cells += _stat_cells(row, report.columns)
            cells += [" ".join(str(r.seed) for r in row.runs), "", row.values["baseline"]]
            writer.writerow(cells)


def _short(key: str) -> str:
    """A legend name for a key: ``method.name`` -> ``method``, ``method.tau_plus`` -> ``tau_plus``."""
    return key[: -len(".name")] if key.endswith(".name") else key.rsplit(".", 1)[-1]


def _figure(panels: int) -> tuple[Any, Sequence[Any]]:
    """A figure with a row of ``panels`` axes (matplotlib is imported here, when a report is drawn: it is slow
    to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels + 1, 3.6), squeeze=False)
    return fig, axes[0]


def _finish(ax: Any, *, xlabel: str, metric: str, title: str, legend: bool) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _legend(keys: Sequence[str], values: Sequence[Any]) -> str:
    """A series' name in a legend: ``method=dcl, tau_plus=0.1``."""
    return ", ".join(f"{_short(k)}={_show(v)}" for k, v in zip(keys, values, strict=True))


def plot_key(report: Report, key: str, path: Path) -> bool:
    """Accuracies against ``key``: one panel per accuracy, one series per combination of the other
    independent keys; a line for numeric values, grouped bars otherwise; error bars = std over seeds."""
    metrics = [m for m in PLOTTED if any(m in run.metrics for run in report.runs)]  # not baselines alone
    if not metrics:
        return False
    others = [k for k in report.plotted if k != key]
    raw = {config_key(r, [key]): r.config.get(key, MISSING) for r in report.runs}
    xs = sorted(raw, key=lambda h: sort_value(raw[h]))
    numeric = all(as_number(raw[x]) is not None for x in xs)
    combos = {config_key(r, others): [r.config.get(k, MISSING) for k in others] for r in report.runs}
    series = sorted(combos, key=lambda c: [sort_value(v) for v in combos[c]])
    fig, axes = _figure(len(metrics))
    width = 0.8 / max(len(series), 1)
    for ax, metric in zip(axes, metrics, strict=True):
        for j, combo in enumerate(series):
            label = _legend(others, combos[combo])
            points = []
            for i, x in enumerate(xs):
                members = [r for r in report.runs if config_key(r, [key, *others]) == x + combo]
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
        _finish(ax, xlabel=key, metric=metric, title=f"{metric} vs {key}", legend=len(series) > 1)
    _save(fig, path)
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
            label = _legend(report.plotted, [row.values[k] for k in report.plotted]) or "all runs"
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
    fig, axes = _figure(len(data))
    for ax, (metric, groups) in zip(axes, data.items(), strict=True):
        for label, (steps, means, stds) in groups.items():
            (line,) = ax.plot(steps, means, marker="." if len(steps) < 30 else None, label=label)
            if any(stds):
                low = [m - s for m, s in zip(means, stds, strict=True)]
                high = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if metric in CURVE_BASELINE:
            _draw_baselines(ax, report, CURVE_BASELINE[metric])
        _zoom(ax)
        _finish(
            ax, xlabel="training step", metric=metric, title=metric, legend=len(groups) > 1 or bool(report.baselines)
        )
    _save(fig, path)
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
