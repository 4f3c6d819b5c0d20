"""The training order as a function of (seed, epoch, rank), and the position inside an epoch, so that a run
resumed from a mid-epoch checkpoint continues with the next batch of the same epoch.

Lightning restores its loop counters (epoch, batch index) from a checkpoint but restarts the data loader at
the beginning of the epoch, and a :class:`~torch.utils.data.RandomSampler` draws its order from the global
generator when the epoch starts, a state that a mid-epoch checkpoint no longer holds. Here the order is
torch's :class:`~torch.utils.data.DistributedSampler` order (a permutation seeded by ``seed + epoch``, on one
process too), and the data module saves ``{epoch, batches}`` through Lightning's data-module
``state_dict``/``load_state_dict`` hooks; the sampler then starts the restored epoch after the batches that
were already trained on. (Lightning also saves the state of a stateful train loader, but restores it only
when the loader is built after the checkpoint is loaded; ``estimated_stepping_batches`` in
``configure_optimizers`` builds it before, and the state would be dropped. The data-module hooks run first.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (shuffled, padded to equal shares) that can start an epoch at a given batch.

    Used on one process too (``num_replicas=1``), so that the order of an epoch depends only on
    ``(seed, epoch)`` and not on the state of the global generator when the epoch began. Lightning leaves a
    DistributedSampler in place under DDP and calls :meth:`set_epoch` before each epoch.

    With ``seeded_draws`` it deals ``(index, seed)`` pairs, the seed a function of (seed, epoch, index) alone,
    for datasets that draw random numbers per item on the loader workers (an image folder's crop boxes): their
    draws then survive a resume too, whatever the workers' state.
    """

    def __init__(
        self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, epoch: int = 0, seeded_draws: bool = False
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch
        self.resume_epoch, self.start = epoch, 0  # on resume: samples of resume_epoch to skip, once
        self.seeded_draws = seeded_draws

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        start = self.start if self.epoch == self.resume_epoch else 0
        self.start = 0
        if self.seeded_draws:
            return iter([(i, draw_seed(self.seed, self.epoch, i)) for i in indices[start:]])
        return iter(indices[start:])


def draw_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's random draws in one epoch (a 63-bit mix of the three; no global state)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % 2**64
    return (x ^ (x >> 29)) % 2**63


def train_position(trainer: pl.Trainer | None) -> dict[str, int]:
    """``{epoch, batches, processes}``: the epoch being trained, how many of its batches each process has
    done, and the number of processes; an epoch whose batches are all done is reported as the start of the
    next one. Empty outside of fitting."""
    if trainer is None or trainer.state.fn != "fit":
        return {}
    started = int(trainer.fit_loop.epoch_progress.current.started)  # the epoch in progress or just ended, + 1
    done = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
    if started == 0 or done >= trainer.num_training_batches:
        return {"epoch": started, "batches": 0, "processes": int(trainer.world_size)}
    return {"epoch": started - 1, "batches": done, "processes": int(trainer.world_size)}


def resumed_sampler(
    dataset: Dataset, position: dict[str, Any], *, batch_size: int, num_replicas: int, rank: int, seed: int
) -> ResumableSampler:
    """The sampler of a training loader; after a resume it starts at the saved ``position``.

    Resumed on another number of processes, each skips its share of the images already trained on in that
    epoch (the global order is the same permutation, dealt out to more or fewer ranks); the batches then
    differ from the interrupted run's, so the result is no longer the same to the bit.
    """
    seeded = bool(getattr(dataset, "seeded_draws", False))
    sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed, seeded_draws=seeded)
    if position:
        sampler.epoch = sampler.resume_epoch = int(position["epoch"])
        done = int(position["batches"]) * batch_size * int(position.get("processes", num_replicas))  # images
        sampler.start = done // num_replicas // batch_size * batch_size
        if done and int(position.get("processes", num_replicas)) != num_replicas:
            rank_zero_warn(
                f"resuming epoch {sampler.epoch} mid-way on {num_replicas} processes instead of "
                f"{position['processes']}: its remaining images are dealt out anew (not bit-exact)"
            )
    return sampler
