"""Lightning wiring of distributed training, without launching processes: the trainer=ddp config, the
strategy built from it, the global batch behind learning-rate scaling, and drop_last under a
DistributedSampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from pytorch_lightning.strategies import DDPStrategy
from torch.utils.data import DistributedSampler
from torch.utils.data.dataloader import DataLoader

from cssl.core.errors import ConfigError
from cssl.data import build_datamodule
from cssl.models.optim import OptimSettings, global_batch
from cssl.runtime import run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=["logger=none", *overrides])


def test_ddp_config_inherits_the_default_trainer() -> None:
    raw = yaml.safe_load((CONFIGS / "trainer" / "ddp.yaml").read_text())
    assert raw["defaults"] == ["default", "_self_"]
    default = yaml.safe_load((CONFIGS / "trainer" / "default.yaml").read_text())
    ddp = _config("trainer=ddp").trainer
    assert ddp.strategy == "ddp" and ddp.find_unused_parameters is False and ddp.sync_batchnorm is False
    for key, value in default.items():  # everything not set by ddp.yaml comes from default.yaml
        if key not in raw:
            assert ddp[key] == value, key


def test_ddp_strategy_on_cpu_uses_gloo_and_scales_the_global_batch(tmp_path: Path) -> None:
    cfg = _config(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.num_nodes=3",
        "trainer.accumulate_grad_batches=4",
        "trainer.progress_bar=false",
    )
    trainer = run.build_trainer(cfg, tmp_path, callbacks=[])
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._process_group_backend == "gloo"
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is False
    assert trainer.num_devices == 2 and trainer.num_nodes == 3 and trainer.world_size == 6
    # lr * batch * world * accumulate / 256, as used by Method.configure_optimizers
    assert global_batch(trainer, 32) == 32 * 6 * 4
    assert OptimSettings(lr=0.3).peak_lr(global_batch(trainer, 32)) == pytest.approx(0.3 * 32 * 6 * 4 / 256)
    assert OptimSettings(lr=0.3, scale_lr=False).peak_lr(global_batch(trainer, 32)) == 0.3


def test_find_unused_parameters_passes_through(tmp_path: Path) -> None:
    cfg = _config("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.find_unused_parameters=true")
    trainer = run.build_trainer(cfg, tmp_path, callbacks=[])
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True


def test_sync_batchnorm_on_cpu_is_a_config_error(tmp_path: Path) -> None:
    cfg = _config("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=true")
    with pytest.raises(ConfigError, match="trainer.sync_batchnorm"):
        run.build_trainer(cfg, tmp_path, callbacks=[])


def _distributed_loader(loader: DataLoader, rank: int) -> DataLoader:
    """The loader as Lightning re-creates it under DDP: same arguments, a DistributedSampler of 2 replicas."""
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last)


def test_pretraining_loader_drops_the_incomplete_batch_on_every_rank() -> None:
    data = build_datamodule("digits", batch_size=100)
    data.setup()
    n = len(data.sets["pretrain"])
    per_rank = (n + 1) // 2  # DistributedSampler pads to equal shares
    assert n % 200 != 0 and per_rank % 100 != 0  # there is a remainder to drop
    train = data.train_dataloader()
    assert train.drop_last
    for rank in (0, 1):
        sizes = [x.shape[0] for x, _ in _distributed_loader(train, rank)]
        assert sizes == [100] * (per_rank // 100)  # every step has the full B: N = 2 B_g - 2 holds
    # evaluation loaders keep every image
    for loader in data.val_dataloader():
        assert not loader.drop_last
        assert sum(y.shape[0] for _, y in loader) == len(loader.dataset)
