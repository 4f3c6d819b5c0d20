"""Pretrain a representation: `python train.py [key=value ...]` (see configs/train.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cssl.runtime import cli, console

CONFIGS = Path(__file__).resolve().parent / "configs"


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    console.quiet()  # before the heavy imports: third-party start-up chatter off
    from cssl.runtime.launch import check_launch

    trainer = cfg.trainer  # a bad launch stops here, in seconds, before the heavy imports
    cli.guard(lambda: check_launch(trainer.get("devices"), trainer.get("num_nodes"), str(trainer.get("accelerator"))))
    from cssl.pretrain import pretrain

    cli.guard(lambda: pretrain(cfg))


if __name__ == "__main__":
    cli.check_group_overrides(sys.argv[1:], CONFIGS)
    main()
