"""Evaluate a pretrained backbone: `python linear_eval.py ckpt=PATH [key=value ...]`
(see configs/linear_eval.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cssl.runtime import cli, console

CONFIGS = Path(__file__).resolve().parent / "configs"


@hydra.main(config_path="configs", config_name="linear_eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    console.quiet()  # before the heavy imports: third-party start-up chatter off
    from cssl.evaluate import linear_eval

    cli.guard(lambda: linear_eval(cfg))


if __name__ == "__main__":
    cli.check_group_overrides(sys.argv[1:], CONFIGS)
    main()
