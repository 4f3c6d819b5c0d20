"""The learning guards' gains over seeds: linear top-1 of the trained minus the untrained backbone after the
guard's short run on the lab dataset (cssl.guards), per method, with the mean, sample std and minimum over
seeds, and the time of one run. These figures are where cssl.guards.MARGIN comes from.

    PYTHONPATH=. python bench/guard_gains.py [--methods simclr moco] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cssl.guards import MARGIN, run_guard  # noqa: E402
from cssl.methods import list_methods  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list_methods())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one method, one seed, 2 steps (a smoke test)")
    parser.add_argument("--root", default=None, help="where the lab data is cached (default: a temporary folder)")
    args = parser.parse_args(argv)
    extra: tuple[str, ...] = ()
    if args.quick:
        args.methods, args.seeds, extra = args.methods[:1], args.seeds[:1], ("trainer.max_steps=2",)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "data"
        print(f"{'method':<8} {'seed':>4} {'untrained':>9} {'trained':>8} {'gain':>6} {'seconds':>8}", flush=True)
        for method in args.methods:
            for seed in args.seeds:
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # the run's summary
                    result = run_guard(method, seed, Path(tmp) / f"{method}_{seed}", root, extra)
                seconds = time.perf_counter() - start
                rows.append({"method": method, "seed": seed, "seconds": seconds, **result})
                print(
                    f"{method:<8} {seed:>4} {result['untrained']['linear_top1']:>9.3f} "
                    f"{result['trained']['linear_top1']:>8.3f} {result['gain']:>+6.3f} {seconds:>8.1f}",
                    flush=True,
                )
    print(f"\nmargin in use: {MARGIN}")
    print(f"{'method':<8} {'mean gain':>9} {'std':>6} {'min':>6}")
    for method in args.methods:
        gains = [r["gain"] for r in rows if r["method"] == method]
        std = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"{method:<8} {statistics.mean(gains):>+9.3f} {std:>6.3f} {min(gains):>+6.3f}")
    return rows


if __name__ == "__main__":
    main()
