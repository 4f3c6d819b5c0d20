"""See the views before spending GPU-days on them: ``python -m cssl.preview [train.py overrides] [preview.*]``.

Composes the same configuration as ``train.py`` (``data=...``, ``data.*``, ``data.multicrop``, ``method=...``,
``experiment=...``), takes one batch of the training loader, runs it through the on-device transform that
training uses (the data module's ``on_after_batch_transfer``, in its training mode) and writes

- ``views.pt``: a list with one uint8 tensor (N, 3, S_v, S_v) per view, denormalised: exactly the views
  training would feed (methods without multi-crop use the first two);
- ``views.png``: one row per image, one column per view.

Options: ``preview.images`` (N, default 8) and ``preview.out`` (a folder, default ``preview/``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cssl.runtime import cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULTS = {"images": 8, "out": "preview"}
CELL_MIN = 96  # small views are enlarged (nearest neighbour, whole factors) to at least this many pixels
BACKGROUND = (200, 212, 232)  # pale blue between and around the views


def parse_preview_options(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``preview.*`` options (checked) from the overrides for the training configuration."""
    from cssl.core.errors import ConfigError, check

    options: dict[str, Any] = dict(DEFAULTS)
    rest = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not key.startswith("preview."):
            rest.append(arg)
            continue
        name = key.removeprefix("preview.")
        if name not in DEFAULTS or not sep:
            raise ConfigError(f"unknown preview option {arg!r}: use preview.images=N and preview.out=FOLDER")
        options[name] = value
    try:
        options["images"] = int(options["images"])
    except ValueError:
        options["images"] = None
    check(
        options["images"] is not None and options["images"] >= 1,
        f"preview.images must be an integer >= 1, got {dict(a.partition('=')[::2] for a in argv).get('preview.images')!r}",
    )
    check(str(options["out"]) != "", "preview.out must be a folder path, got ''")
    return options, rest


def compose(overrides: list[str]) -> Any:
    """The configuration ``python train.py overrides...`` would run with (Hydra errors become one line)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cssl.core.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        cause = str(err.__cause__ or "").strip().splitlines()
        raise ConfigError(f"bad override: {first}" + (f" ({cause[0]})" if cause else "")) from None


def training_views(cfg: Any, images: int) -> list[Any]:
    """One training batch of ``images`` images as uint8 views: a list of (N, 3, S_v, S_v) tensors."""
    import pytorch_lightning as pl
    import torch
    from omegaconf import open_dict

    from cssl.core.errors import check, check_int
    from cssl.pretrain import pretrain_views
    from cssl.runtime import run

    check_int("seed", cfg.seed, 0)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    with open_dict(cfg.data):  # one batch of N images, read in this process
        cfg.data.batch_size, cfg.data.num_workers = 2, 0
    data = run.build_data(cfg, train_split="pretrain", views=pretrain_views(cfg))  # as pretrain() builds them
    data.check()
    available = len(data.sets[data.train_split])
    check(images <= available, f"preview.images={images} exceeds the {available} training images of {data.name}")
    data.batch_size = max(2, images)
    data.trainer = SimpleNamespace(training=True)  # the hook only asks whether the trainer is training
    batch = next(iter(data.train_dataloader()))
    views = data.on_after_batch_transfer(batch, 0)[0]
    views = views if isinstance(views, list | tuple) else [views]
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    return [(v[:images] * std + mean).clamp_(0, 1).mul_(255).round_().to(torch.uint8) for v in views]


def grid(views: list[Any], gap: int = 2) -> Any:
    """(rows * cell, columns * cell, 3) uint8 image: one row per image, one column per view; views smaller
    than ``CELL_MIN`` px are enlarged by whole factors (nearest neighbour), each cell placed top-left."""
    import torch

    n = views[0].shape[0]
    largest = max(v.shape[-1] for v in views)
    zoom = max(1, -(-CELL_MIN // largest))  # ceil
    cell = largest * zoom + gap
    canvas = (
        torch.tensor(BACKGROUND, dtype=torch.uint8).view(3, 1, 1).repeat(1, n * cell - gap, len(views) * cell - gap)
    )
    for col, view in enumerate(views):
        big = view.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)  # (N, 3, zS, zS)
        side = big.shape[-1]
        for row in range(n):
            canvas[:, row * cell : row * cell + side, col * cell : col * cell + side] = big[row]
    return canvas.permute(1, 2, 0).contiguous()


def preview(argv: list[str]) -> dict[str, Any]:
    """Write views.png and views.pt for the configuration of ``argv``; returns what was written."""
    import torch
    from PIL import Image

    options, overrides = parse_preview_options(argv)
    cfg = compose(overrides)
    views = training_views(cfg, options["images"])
    out = Path(str(options["out"]))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(views, out / "views.pt")
    Image.fromarray(grid(views).numpy()).save(out / "views.png")
    shapes = [tuple(v.shape) for v in views]
    print(
        f"wrote {out / 'views.png'} and {out / 'views.pt'}: {len(views)} views of {options['images']} images {shapes}"
    )
    return {"out": out, "shapes": shapes}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return
    cli.check_group_overrides(argv, CONFIGS)
    cli.guard(lambda: preview(argv))


if __name__ == "__main__":
    main()
