"""Run a function on P real processes (gloo backend, CPU) and collect what each rank returns.

    results = run_ranks(fn, world_size=2, args=(x,))   # fn(rank, world_size, *args) -> picklable

``fn`` must be a module-level function (it is pickled into the spawned processes). The process group is
initialised before ``fn`` runs and destroyed after; tensors in the result are moved to the CPU. Results are
serialised with ``torch.save`` into bytes before they cross the queue: torch's shared-memory tensor passing
would hand the parent file descriptors of a worker that may already have exited.
"""

from __future__ import annotations

import io
import os
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, init_file: str, fn: Callable[..., Any], args: tuple, queue: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        queue.put((rank, "ok", _to_bytes(result)))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _to_bytes(result: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(_to_cpu(result), buffer)
    return buffer.getvalue()


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_cpu(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_to_cpu(v) for v in x)
    return x


def run_ranks(fn: Callable[..., Any], world_size: int = 2, args: tuple = (), timeout: float = 120.0) -> list[Any]:
    """``[fn(0, P, *args), ..., fn(P-1, P, *args)]``, each computed in its own process of one gloo group."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [
            ctx.Process(target=_worker, args=(r, world_size, init_file, fn, args, queue)) for r in range(world_size)
        ]
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        errors = []
        try:
            for _ in range(world_size):
                rank, status, payload = queue.get(timeout=timeout)
                if status == "ok":
                    results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
                else:
                    errors.append(f"rank {rank}:\n{payload}")
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        if errors:
            raise RuntimeError("\n".join(errors))
    return [results[r] for r in range(world_size)]
