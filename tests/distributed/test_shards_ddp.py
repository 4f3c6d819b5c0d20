"""data=shards under DDP (2 gloo processes): every rank reads distinct records, the ranks take the same number
of batches, and one epoch covers the shards; what it leaves out is LitData's drop_last remainder,
N mod (batch * ranks) records (no record is padded in twice)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from cssl.data import build_datamodule
from cssl.data.plan import ViewPlan
from cssl.shard import shard
from tests.data.test_shards import fabricate
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.slow  # a conversion and two process groups
N = 30


def _epoch_ids(rank: int, world: int, root: str, batch: int, workers: int) -> list[list[int]]:
    data = build_datamodule(
        "shards",
        root=root,
        eval_root=root,
        batch_size=batch,
        num_workers=workers,
        image_size=16,
        views=ViewPlan(augment={}),
    )
    data.trainer = SimpleNamespace(training=True, world_size=world, global_rank=rank)
    data.check()
    loader = data.train_dataloader()
    loader.dataset.with_ids = True
    return [ids.tolist() for _, _, _, ids in loader]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("ddp_shards")
    src = fabricate(base / "src", classes=("a", "b", "c"), per_class=N // 3)
    shard(str(src), str(base / "out"), labels="folders", chunk_bytes="8kb", workers=1)
    return str(base / "out")


@pytest.mark.parametrize(("batch", "workers"), [(3, 0), (3, 2), (4, 1)])
def test_two_ranks_read_distinct_records_and_cover_the_epoch(root: str, batch: int, workers: int) -> None:
    per_rank = run_ranks(_epoch_ids, world_size=2, args=(root, batch, workers), timeout=240)
    assert len(per_rank[0]) == len(per_rank[1]) > 0  # the same number of steps on both ranks
    seen = [[i for b in batches for i in b] for batches in per_rank]
    counts = Counter(seen[0] + seen[1])
    assert max(counts.values()) == 1  # no record on two ranks, none twice on one
    assert not set(seen[0]) & set(seen[1])
    dropped = N % (batch * 2)  # LitData's drop_last remainder, so that the ranks stay in step
    assert len(counts) == N - dropped and set(counts) <= set(range(N))
    if dropped == 0:
        assert set(counts) == set(range(N))  # the union of ids is the dataset
