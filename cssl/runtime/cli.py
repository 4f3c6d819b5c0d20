"""Light helpers of the command-line entry points (imported before torch, so that bad group names fail
in well under a second)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

CONFIG_GROUPS = ("method", "data", "trainer", "logger", "experiment", "protocol")


def guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a :class:`cssl.core.errors.ConfigError` becomes one line on stderr and exit status 2, a
    :class:`cssl.core.errors.RunError` (full disk, out of memory, preemption) one line and its own status."""
    from cssl.core.errors import ConfigError, RunError

    try:
        return fn()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunError as err:
        if not getattr(err, "quiet", False):
            print(f"{err.prefix}: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


def check_group_overrides(argv: list[str], config_dir: Path) -> None:
    """Exit in one line on ``group=value`` overrides that name no config file (before Hydra composes)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in CONFIG_GROUPS or not value or value == "null":
            continue
        for choice in value.split(","):  # multirun sweeps list choices
            if not (config_dir / key / f"{choice}.yaml").is_file():
                options = sorted(p.stem for p in (config_dir / key).glob("*.yaml") if p.stem != "common")
                print(f"error: unknown {key} {choice!r}: choose {key}= one of {', '.join(options)}", file=sys.stderr)
                sys.exit(2)


class RunDirCheck(Callback):
    """Hydra callback (``hydra.callbacks.run_dir`` in the entry configs): a run dir that cannot be written
    (read-only, no permission, a full disk) is refused in one line and exit status 2 before Hydra creates it
    and before anything heavy is imported."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_dir(OmegaConf.select(config, "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_dir(OmegaConf.select(config, "hydra.sweep.dir"))


def _check_dir(folder: Any) -> None:
    from cssl.core.errors import ConfigError
    from cssl.core.storage import check_writable

    if folder in (None, ""):
        return
    try:
        check_writable(Path(str(folder)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
