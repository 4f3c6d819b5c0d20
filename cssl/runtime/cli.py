"""Light helpers of the command-line entry points (imported before torch, so that bad group names fail
in well under a second)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_GROUPS = ("method", "data", "trainer", "logger", "experiment", "protocol")


def guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a :class:`cssl.core.errors.ConfigError` becomes one line on stderr and exit status 2."""
    from cssl.core.errors import ConfigError

    try:
        return fn()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


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
