"""cssl.runtime.measure's parts on tiny models and loaders (timings are only checked to exist)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from cssl.runtime import measure


class Tiny(pl.LightningModule):
    """A linear model; ``fail`` makes its step raise ``fail`` instead."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fail = fail
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        if self.fail is not None:
            raise self.fail
        x, y = batch
        self.seen.append(x)
        return torch.nn.functional.mse_loss(self.layer(x).squeeze(1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Doubling(pl.LightningDataModule):
    """A source whose device hook doubles the inputs of training batches (as an augmentation would)."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        assert self.trainer is not None and self.trainer.training
        x, y = batch
        return 2 * x, y


def test_measure_training_times_the_steps_through_the_source_hook():
    model = Tiny()
    batch = (torch.ones(8, 4), torch.zeros(8))
    result = measure.measure_training(
        model, batch, batch_size=8, source=Doubling(), accelerator="cpu", steps=3, warmup=1
    )
    assert len(model.seen) == 4 and all(torch.equal(x, 2 * torch.ones(8, 4)) for x in model.seen)
    assert len(result.losses) == 4 and result.losses_finite
    assert result.images_per_second == 8 / result.step_seconds and result.first_step_seconds > 0
    assert result.memory_peak > 0 and result.memory_kind.startswith("host")
    assert not result.out_of_memory


def test_measure_training_reports_an_allocation_failure():
    model = Tiny(fail=RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    result = measure.measure_training(model, (torch.ones(8, 4), torch.zeros(8)), batch_size=8, accelerator="cpu")
    assert result.out_of_memory and result.images_per_second is None and "out of memory" in result.error
    assert not result.losses_finite


def test_other_failures_are_raised():
    model = Tiny(fail=ValueError("a bug"))
    try:
        measure.measure_training(model, (torch.ones(8, 4), torch.zeros(8)), batch_size=8, accelerator="cpu")
    except ValueError as err:
        assert "a bug" in str(err)
    else:
        raise AssertionError("the error was swallowed")


def test_is_out_of_memory():
    assert measure.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert measure.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not measure.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not measure.is_out_of_memory(ValueError("out of memory"))


def test_measure_loader_counts_batches_across_epochs():
    data = TensorDataset(torch.arange(12.0))
    made = []

    def make():
        made.append(1)
        return DataLoader(data, batch_size=4, drop_last=True)

    result = measure.measure_loader(make, 4, seconds=0.0)
    assert result.batches == 2 and torch.equal(result.first_batch[0], torch.arange(4.0))
    assert result.images_per_second > 0 and torch.get_num_threads() >= 1
    slow = measure.measure_loader(make, 4, seconds=0.2)
    assert slow.batches >= 3 and len(made) >= 3  # re-started the 3-batch epoch


def test_augment_rate_and_peak_memory_on_the_cpu():
    calls = []
    rate = measure.augment_images_per_second(lambda x: calls.append(x.sum()), torch.ones(5), 5, torch.device("cpu"), 3)
    assert rate > 0 and len(calls) == 4  # one warm-up call
    measure.reset_peak_memory(torch.device("cpu"))
    peak, total, kind = measure.peak_memory(torch.device("cpu"))
    assert 0 < peak < total and kind.startswith("host")


def test_run_throughput_counts_the_wait_between_steps_but_not_validation(monkeypatch):
    """summary.json's images_per_second: from each epoch's start to its last step, loader waits included."""
    from types import SimpleNamespace

    from cssl.runtime import run

    clock = iter([0.0, 3.0, 10.0, 12.0, 20.0, 21.0])  # epoch start, step end, validation end, step end, ...
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(world_size=2)
    counter = run.Throughput(batch_size=4)
    counter.on_train_epoch_start(trainer)  # 0
    counter.on_train_batch_end(trainer)  # 3: the first step and the wait for its batch
    counter.on_validation_end(trainer)  # 10: a validation inside the epoch
    counter.on_train_batch_end(trainer)  # 12
    counter.on_train_epoch_start(trainer)  # 20: the next epoch
    counter.on_train_batch_end(trainer)  # 21
    assert counter.seconds == 3 + 2 + 1 and counter.images == 3 * 4 * 2
    assert counter.images_per_second == 24 / 6
