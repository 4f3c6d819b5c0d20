"""Helpers of the interruption tests: start a run, kill it (SIGKILL, whole process group) or signal it once
a file appears, and compare the training state of two checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tests.conftest import REPO, cli_env


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run (:func:`tests.conftest.cli_env`), one thread per process."""
    return cli_env(**{"OMP_NUM_THREADS": "1", **extra})


def start(cmd: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so that its children can be killed with it), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(cmd), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """Poll until ``ready()`` (fails if the process ends first or the time runs out)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the awaited point")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the awaited point never came")
        time.sleep(0.005)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started (a node that dies)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> int:
    """The exit status of ``proc``; past ``timeout`` its whole process group is killed and the test fails."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    wait_or_kill(proc, timeout)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def straight_and_killed(command: Sequence[str], root: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """``train.py command`` run to its end in ``root/straight``, and in ``root/killed`` SIGKILLed (with its
    process group) once its step-2 checkpoint exists; returns both run dirs (``*.log`` beside them)."""
    straight, killed = root / "straight", root / "killed"
    finish(start(train_cmd(*command, f"run_dir={straight}"), env, root / "straight.log"), root / "straight.log")
    first = start(train_cmd(*command, f"run_dir={killed}"), env, root / "first.log")
    wait_for(first, lambda: (killed / "checkpoints" / "step00000002.ckpt").is_file())
    kill_group(first)
    return straight, killed


def max_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between the weights, buffers (queues, banks, momentum encoders),
    optimiser states and learning-rate schedules of two checkpoints; inf if their structure differs."""
    if a["global_step"] != b["global_step"] or a["state_dict"].keys() != b["state_dict"].keys():
        return float("inf")
    worst = 0.0
    pairs = [(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]]
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        if oa["state"].keys() != ob["state"].keys():
            return float("inf")
        for key in oa["state"]:
            sa, sb = oa["state"][key], ob["state"][key]
            pairs += [(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])) for k in sa]
    for sa, sb in zip(a["lr_schedulers"], b["lr_schedulers"], strict=True):
        pairs += [
            (torch.as_tensor(float(x)), torch.as_tensor(float(y)))
            for x, y in zip(sa["_last_lr"], sb["_last_lr"], strict=True)
        ]
    for x, y in pairs:
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, (x.double() - y.double()).abs().max().item())
    return worst
