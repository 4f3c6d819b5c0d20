"""Ablation reports: a set of runs -> one table (markdown and CSV) and accuracy plots.

The command line of :mod:`cssl.report`: ``python -m cssl.report RUN_DIR... [options]`` (``--help`` lists them).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from cssl.core.errors import ConfigError
from cssl.report.analyse import add_baselines, build_report, table_columns
from cssl.report.load import load_local, load_wandb
from cssl.report.render import write_report


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
