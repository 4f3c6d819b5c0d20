import pytest
import torch

from cssl.contrastive import QueuePool
from cssl.core.errors import ConfigError


def _keys(n: int, d: int = 3, start: int = 0) -> torch.Tensor:
    """Distinguishable rows: row i is (start + i) in every coordinate."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, d).clone()


def test_starts_with_random_unit_vectors():
    pool = QueuePool(50, 8, generator=torch.Generator().manual_seed(0))
    assert (
        pool.queue.shape == (50, 8)
        and pool.ptr.item() == 0
        and torch.equal(pool.age, torch.zeros(50, dtype=torch.long))
    )
    assert torch.allclose(pool.queue.norm(dim=1), torch.ones(50))
    assert torch.linalg.matrix_rank(pool.queue) == 8  # not a constant fill
    again = QueuePool(50, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pool.queue, again.queue)


def test_methods_vector_enqueue_at_pointer_zero():
    pool = QueuePool(4, 2)
    pool.queue.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0.6, -0.8]]))
    k = torch.nn.functional.normalize(torch.tensor([[1.0, 1], [1, -1]]), dim=1)
    pool.enqueue(k)
    assert torch.equal(pool.queue[:2], k)
    assert torch.equal(pool.queue[2:], torch.tensor([[-1.0, 0], [0.6, -0.8]]))
    assert pool.ptr.item() == 2


def _reference_ring(size: int, batches: list[torch.Tensor], init: torch.Tensor) -> tuple[torch.Tensor, int, list[int]]:
    """One key at a time into slot (count mod size): the plainest FIFO ring."""
    rows, age, count = [r.clone() for r in init], [0] * size, 0
    for batch in batches:
        age = [a + 1 for a in age]
        for key in batch:
            rows[count % size] = key.clone()
            age[count % size] = 0
            count += 1
    return torch.stack(rows), count % size, age


@pytest.mark.parametrize("size,batch,steps", [(8, 2, 3), (7, 3, 5), (5, 5, 2), (4, 3, 1)])
def test_fifo_with_wrap_around(size, batch, steps):
    pool = QueuePool(size, 3)
    init = pool.queue.clone()
    batches = [_keys(batch, start=100 * (s + 1)) for s in range(steps)]
    for b in batches:
        pool.enqueue(b)
    queue, ptr, age = _reference_ring(size, batches, init)
    assert torch.equal(pool.queue, queue)
    assert pool.ptr.item() == ptr
    assert pool.age.tolist() == age


def test_wrap_around_order_oldest_first_out():
    pool = QueuePool(5, 3)
    pool.enqueue(_keys(3, start=1))  # slots 0-2 <- 1, 2, 3
    pool.enqueue(_keys(3, start=4))  # slots 3, 4, 0 <- 4, 5, 6: key 1 (the oldest) goes first
    assert pool.queue[:, 0].tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]
    assert pool.ptr.item() == 1
    assert pool.age.tolist() == [0, 1, 1, 0, 0]


def test_global_batch_larger_than_the_queue_keeps_the_newest():
    pool = QueuePool(4, 3)
    pool.enqueue(_keys(1, start=0))
    pool.enqueue(_keys(6, start=10))  # keys 10..15, only 12..15 survive, written from slot 1
    assert sorted(pool.queue[:, 0].tolist()) == [12.0, 13.0, 14.0, 15.0]
    assert pool.queue[1, 0].item() == 12.0 and pool.ptr.item() == 1


def test_state_is_in_buffers_and_round_trips():
    pool = QueuePool(6, 3)
    pool.enqueue(_keys(4, start=1))
    state = pool.state_dict()
    assert set(state) == {"queue", "ptr", "age"}
    fresh = QueuePool(6, 3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, pool.queue) and fresh.ptr.item() == 4 and torch.equal(fresh.age, pool.age)


def test_keys_are_detached_and_cast_to_the_queue_dtype():
    pool = QueuePool(4, 3)
    keys = torch.randn(2, 3, requires_grad=True)
    pool.enqueue(keys.double())
    assert pool.queue.dtype == torch.float32 and not pool.queue.requires_grad


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size(size):
    with pytest.raises(ConfigError, match="method.queue_size"):
        QueuePool(size, 4)


def test_bad_key_shape():
    with pytest.raises(ValueError, match="keys must be"):
        QueuePool(4, 3).enqueue(torch.randn(2, 5))
