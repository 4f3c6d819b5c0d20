"""Per-rank cost of the in-batch loss for one global batch split over 1 or 2 processes (gloo, CPU).

    python bench/ddp.py                 # global batch 1024, D 128
    python bench/ddp.py --quick         # a few seconds
    python bench/ddp.py --global-batch 4096 --dim 256 --repeats 10

Each rank holds B = B_g / P rows of both views; ``nt_xent`` builds (2B x 2B_g) logits against the gathered
views, so the logits of a rank shrink by P while the gather and its all-reduce in backward are added. For
each world size the table gives, on the slowest rank: the logits shape and size, the bytes autograd saves
for the backward of the loss (counted with saved-tensor hooks, the loss's activation memory), the peak
CUDA allocation when run on a GPU (CPU: not measurable, "-"), and the time of forward + backward. Ratios are
against world size 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cssl.contrastive.losses import nt_xent  # noqa: E402

MIB = 2**20


def measure(global_batch: int, dim: int, repeats: int, world: int, rank: int, estimator: str) -> dict:
    """Forward + backward of nt_xent on this rank's B rows; the process group (if any) is initialised."""
    b = global_batch // world
    g = torch.Generator().manual_seed(1000 + rank)
    z1 = torch.randn(b, dim, generator=g).requires_grad_()  # (B, D)
    z2 = torch.randn(b, dim, generator=g).requires_grad_()  # (B, D)
    options = {"tau_plus": 0.1, "beta": 1.0} if estimator == "hcl" else {"tau_plus": 0.1} if estimator == "dcl" else {}

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nt_xent(z1, z2, 0.2, estimator=estimator, **options)
    loss.backward()

    times = []
    for _ in range(repeats):
        z1.grad = z2.grad = None
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        nt_xent(z1, z2, 0.2, estimator=estimator, **options).backward()
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        "b": b,
        "logits": (2 * b, 2 * global_batch),
        "logits_bytes": 2 * b * 2 * global_batch * 4,  # fp32
        "saved_bytes": sum(saved.values()),
        "peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() and z1.is_cuda else None,
        "seconds": times[len(times) // 2],  # median
    }


def _rank(rank: int, world: int, init_file: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        queue.put(measure(args.global_batch, args.dim, args.repeats, world, rank, args.estimator))
    finally:
        dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> dict:
    """The slowest rank's figures at this world size (world 1: this process, no process group)."""
    if world == 1:
        torch.set_num_threads(1)
        return measure(args.global_batch, args.dim, args.repeats, 1, 0, args.estimator)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank, args=(r, world, init_file, args, queue)) for r in range(world)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=300) for _ in range(world)]
        for p in procs:
            p.join()
    return max(results, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--global-batch", type=int, default=1024, help="B_g, images per step over all ranks")
    parser.add_argument("--dim", type=int, default=128, help="projection dimension D")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward+backward passes (median)")
    parser.add_argument("--estimator", default="infonce", choices=["infonce", "dcl", "hcl"])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="world sizes to compare")
    parser.add_argument("--quick", action="store_true", help="B_g 256, 3 repeats: a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.global_batch, args.repeats = 256, 3
    if any(args.global_batch % w for w in args.worlds):
        parser.error(f"--global-batch {args.global_batch} must be divisible by every world size {args.worlds}")

    rows = [(w, run(w, args)) for w in args.worlds]
    base = rows[0][1]
    print(f"nt_xent ({args.estimator}) per rank, global batch B_g={args.global_batch}, D={args.dim}, gloo on CPU")
    header = (
        f"{'world':>5} {'B/rank':>6} {'logits':>12} {'logits MiB':>10} {'saved MiB':>9} {'peak MiB':>8} "
        f"{'fwd+bwd ms':>10} {'mem ratio':>9} {'time ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for world, r in rows:
        shape = f"{r['logits'][0]}x{r['logits'][1]}"
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / MIB:.2f}"
        print(
            f"{world:>5} {r['b']:>6} {shape:>12} {r['logits_bytes'] / MIB:>10.2f} {r['saved_bytes'] / MIB:>9.2f} "
            f"{peak:>8} {r['seconds'] * 1e3:>10.2f} {r['saved_bytes'] / base['saved_bytes']:>9.2f} "
            f"{r['seconds'] / base['seconds']:>10.2f}"
        )


if __name__ == "__main__":
    main()
