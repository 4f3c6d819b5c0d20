"""Pools: where the negatives of a contrastive loss come from, beyond the batch itself.

- :class:`QueuePool`: MoCo's FIFO queue of momentum keys gathered from all ranks.

Pools hold their state in buffers, so it is saved in checkpoints and restored on resume.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from cssl.core import distributed
from cssl.core.errors import check_int


class QueuePool(nn.Module):
    """A FIFO queue of K unit vectors (MoCo): the newest keys overwrite the oldest ones.

    Starts filled with random unit vectors. :meth:`enqueue` gathers the local keys of every rank (no
    gradient) and writes them in rank order at the pointer, wrapping around the end of the buffer, so every
    rank holds the same queue. ``age`` counts, per entry, the enqueue calls (steps) since it was written.

    Args:
        size: K, the number of entries (``method.queue_size``).
        dim: D, the dimension of the keys.
        generator: random source of the initial entries (default: the global generator).
    """

    queue: Tensor
    ptr: Tensor
    age: Tensor

    def __init__(self, size: int, dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_int("method.queue_size", size, 1)
        check_int("queue dimension", dim, 1)
        init = F.normalize(torch.randn(size, dim, generator=generator), dim=1)  # (K, D)
        self.register_buffer("queue", init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("age", torch.zeros(size, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def negatives(self) -> Tensor:
        """The current entries (K, D), oldest-first order not implied (a ring buffer)."""
        return self.queue

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write the keys of all ranks (this rank's ``keys`` (B, D)) over the oldest entries.

        All ranks must call this together with the same B. If the global batch exceeds K, only its last K
        keys are kept.
        """
        if keys.dim() != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys must be (B, {self.queue.shape[1]}), got {tuple(keys.shape)}")
        keys = distributed.gather(keys).to(self.queue.dtype)  # (B_g, D)
        k = self.size
        keys = keys[-k:]  # (min(B_g, K), D)
        n = keys.shape[0]
        slots = (self.ptr + torch.arange(n, device=self.queue.device)) % k  # (n,) ring positions
        self.queue[slots] = keys
        self.age += 1
        self.age[slots] = 0
        self.ptr.copy_((self.ptr + n) % k)

    def extra_repr(self) -> str:
        return f"size={self.queue.shape[0]}, dim={self.queue.shape[1]}"
