"""Launch checks that run before anything heavy is imported: a multi-process launch whose process count
disagrees with ``trainer.devices x trainer.num_nodes``, or that lacks the rendezvous address, would wait
forever for processes that never come; :func:`check_launch` stops it with a one-line error instead.

Three launchers start the processes of a multi-process run: Lightning itself (``trainer.devices`` > 1 on one
node; its extra processes get ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), torchrun
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ...) and SLURM's srun
(``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_NODELIST``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cssl.core.errors import check


def on_slurm(env: Mapping[str, str] | None = None) -> bool:
    """Whether srun started this process (Lightning's test: SLURM_NTASKS set, not an interactive job)."""
    env = os.environ if env is None else env
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def device_count(devices: Any, accelerator: str = "auto") -> int | None:
    """Processes per node that ``trainer.devices`` asks for (None where Lightning decides later)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        if devices == -1:
            return _gpus(accelerator) or None
        return devices
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        if devices.strip().lstrip("-").isdigit():
            return device_count(int(devices), accelerator)
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        if devices == "auto":
            return _gpus(accelerator) or 1
    return None


def check_launch(devices: Any, num_nodes: Any, accelerator: str = "auto", env: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line, a launch that would hang: a process count that is not devices x nodes, or a
    torchrun-like launch without the rendezvous address.

    Raises:
        ConfigError: the launcher's variables disagree with the trainer options or are incomplete.
    """
    env = os.environ if env is None else env
    per_node = device_count(devices, accelerator)
    nodes = int(num_nodes) if isinstance(num_nodes, int) and not isinstance(num_nodes, bool) else None
    expected = per_node * nodes if per_node is not None and nodes is not None else None
    asked = f"trainer.devices x trainer.num_nodes = {per_node} x {nodes} = {expected}"
    if on_slurm(env):
        ntasks = int(env["SLURM_NTASKS"])
        check(
            ntasks == 1 or "SLURM_NTASKS_PER_NODE" in env,
            f"launch: SLURM started {ntasks} tasks without SLURM_NTASKS_PER_NODE; "
            "ask for them with #SBATCH --ntasks-per-node=<GPUs per node> (not --ntasks)",
        )
        check(
            expected is None or ntasks == expected,
            f"launch: SLURM started {ntasks} tasks (SLURM_NTASKS) but {asked}; "
            f"set trainer.devices to the tasks per node ({env.get('SLURM_NTASKS_PER_NODE', '?')}) and "
            f"trainer.num_nodes to the nodes ({env.get('SLURM_NNODES', '?')})",
        )
        check(
            int(env.get("SLURM_NNODES", "1")) == 1 or bool(env.get("MASTER_ADDR") or env.get("SLURM_NODELIST")),
            "launch: a multi-node SLURM job without SLURM_NODELIST or MASTER_ADDR has no address to meet at; "
            "start the ranks with srun inside the job",
        )
        return
    launched = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k in env]
    if not launched:
        return  # Lightning starts the processes itself (or a single process)
    world = env.get("WORLD_SIZE", "")
    check(world.isdigit(), f"launch: {', '.join(launched)} set but WORLD_SIZE={world!r}; start the ranks with torchrun")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    check(
        int(world) == 1 or not missing,
        f"launch: {', '.join(launched)} set (WORLD_SIZE={world}) but not {' and '.join(missing)}: the ranks "
        "would never meet; start them with torchrun (it sets both) or export them on every node",
    )
    check(
        expected is None or int(world) == expected,
        f"launch: the launcher started WORLD_SIZE={world} processes but {asked}; "
        "set trainer.devices to the processes per node (torchrun --nproc_per_node) and "
        "trainer.num_nodes to the nodes (torchrun --nnodes)",
    )


def _gpus(accelerator: str) -> int:
    if accelerator not in ("auto", "gpu", "cuda"):
        return 0
    import torch  # only for devices=auto/-1 on a GPU machine

    return torch.cuda.device_count()
