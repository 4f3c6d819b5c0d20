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

Three steps, a module each: :mod:`~cssl.report.load` reads the runs, :mod:`~cssl.report.analyse` groups them
and :mod:`~cssl.report.render` writes the files; :mod:`~cssl.report.__main__` is the command line.
"""

from __future__ import annotations

from typing import Any

from cssl.report.analyse import Report, Row, build_report, family, independent_keys, varied_keys
from cssl.report.load import Run, flatten, load_local
from cssl.report.load import same_dir as same_dir
from cssl.report.render import plot_curves, write_report

__all__ = [
    "Report",
    "Row",
    "Run",
    "build_report",
    "family",
    "flatten",
    "independent_keys",
    "load_local",
    "main",
    "plot_curves",
    "varied_keys",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """``report.main``: imported on first use, so that ``python -m cssl.report`` does not find its
    ``__main__`` imported already (runpy warns about that)."""
    if name == "main":
        from cssl.report.__main__ import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
