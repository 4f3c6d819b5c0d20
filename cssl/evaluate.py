"""Evaluation of a pretraining checkpoint: linear (under a protocol, ``protocol=default|moco|adco|dcl_hcl``,
configs/protocol/), fine-tuning (``protocol=simclr_finetune``), from a random initialisation (``init=random``),
on a label subset, or a kNN grid; shares data, trainer and loading with pretraining through
:mod:`cssl.runtime.run`. docs/evaluation.md describes the modes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from cssl.core.errors import ConfigError, check, check_int, is_int, is_number
from cssl.data.datamodules import ImageDataModule
from cssl.data.plan import ViewPlan
from cssl.eval.finetune import FineTuner, check_finetune_options
from cssl.eval.knn import KNN_PRESETS, knn_grid
from cssl.eval.probe import Classifier, LinearProbe, check_probe_options, last_and_best
from cssl.eval.results import eval_metrics, knn_cell
from cssl.eval.subsets import LabelSubset, SubsetWithSamples, describe, write_subset
from cssl.models.backbones import build_backbone, list_backbones
from cssl.models.optim import OptimSettings
from cssl.models.weights import backbone_weights
from cssl.runtime import console, loggers, run
from cssl.runtime.checkpoint import find_checkpoint, read_checkpoint, run_dir_of


def load_backbone(path: Path) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """The pretrained backbone of a checkpoint (or run dir), weights-only loading."""
    path = find_checkpoint(path)
    ckpt = read_checkpoint(path)
    meta = ckpt["cssl"]
    backbone = build_backbone(str(meta["backbone"]), cifar_stem=bool(meta["cifar_stem"]))
    weights = backbone_weights(ckpt["state_dict"])
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {path}: backbone weights do not match {meta['backbone']} ({len(missing)} missing)"
        )
    return backbone, meta, path


TRAIN_AUGMENT = ("linear", "pretrain")


def classifier_views(cfg: DictConfig, meta: dict[str, Any], path: Path) -> ViewPlan:
    """The training images of the classifier: ``augment.*`` at ``data.image_size`` (``train_augment=linear``),
    or the checkpoint's own pretraining augmentation at its pretraining size (``pretrain``: DCL/HCL
    linear.py train on utils.train_transform, the pretraining pipeline). For an image folder the random
    resized crop is cut from the original image on the loader workers (as MoCo's main_lincls.py
    RandomResizedCrop on the decoded file); test images stay resize ``load_size`` + centre crop."""
    if cfg.train_augment == "linear":
        return ViewPlan(augment=run.plain(cfg.augment), main=1, single=True)
    config = meta.get("config")
    augment = config.get("data", {}).get("augment") if isinstance(config, dict) else None
    check(
        isinstance(augment, dict) and isinstance(meta.get("image_size"), int),
        f"train_augment=pretrain: checkpoint {path} holds no pretraining augmentation; use train_augment=linear",
    )
    return ViewPlan(augment=augment, main=1, single=True, size=int(meta["image_size"]))


def check_normalisation(cfg: DictConfig, data: ImageDataModule, meta: dict[str, Any], path: Path) -> None:
    """With ``train_augment=pretrain`` the pipeline includes the pretraining normalisation, which the test
    images must share."""
    if cfg.train_augment != "pretrain":
        return
    for key in ("mean", "std"):
        saved = meta["config"].get("data", {}).get(key)
        check(
            saved is None or [round(float(v), 6) for v in saved] == [round(v, 6) for v in getattr(data, key)],
            f"train_augment=pretrain: data.{key}={list(getattr(data, key))} differs from the pretraining "
            f"data.{key}={saved} of {path}; pass data.{key}={saved}",
        )


MODES = ("linear", "finetune", "knn")
INITS = ("pretrained", "random")


def label_subset(cfg: DictConfig) -> LabelSubset:
    """``data.label_fraction`` / ``data.labels_per_class`` / ``data.label_subset`` (seeded by ``seed``)."""
    data = cfg.data
    return LabelSubset(
        fraction=data.get("label_fraction"),
        per_class=data.get("labels_per_class"),
        file=None if data.get("label_subset") is None else str(data.label_subset),
        seed=int(cfg.seed),
    )


def knn_settings(cfg: DictConfig) -> tuple[list[int], list[float], tuple[int, float] | None]:
    """The kNN grid: ``knn.k`` and ``knn.t`` (a number or a list each; default 20 and 0.07), or the preset's
    (``knn.preset``, :data:`~cssl.eval.knn.KNN_PRESETS`), and the preset's reported cell."""
    preset, k, t = cfg.knn.get("preset"), cfg.knn.get("k"), cfg.knn.get("t")
    if preset is not None:
        check(
            preset in KNN_PRESETS,
            f"knn.preset must be one of {', '.join(KNN_PRESETS)} or null, got {preset!r}",
        )
        check(k is None and t is None, f"knn.preset={preset} sets k and t; drop knn.k/knn.t or the preset")
        chosen = KNN_PRESETS[str(preset)]
        return list(chosen["k"]), list(chosen["t"]), tuple(chosen["main"])  # type: ignore[return-value]
    ks = [20] if k is None else list(k) if isinstance(k, list | ListConfig) else [k]
    ts = [0.07] if t is None else list(t) if isinstance(t, list | ListConfig) else [t]
    check(ks and all(is_int(v) and v >= 1 for v in ks), f"knn.k must be integers >= 1, got {_plain(k)!r}")
    check(ts and all(is_number(v) and v > 0 for v in ts), f"knn.t must be numbers > 0, got {_plain(t)!r}")
    return list(dict.fromkeys(int(v) for v in ks)), list(dict.fromkeys(float(v) for v in ts)), None


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def evaluated_backbone(cfg: DictConfig) -> tuple[torch.nn.Module | None, dict[str, Any], Path | None]:
    """The checkpoint's backbone (``init=pretrained``); for ``init=random`` only its architecture (the
    weights are made after seeding, :func:`random_backbone`), from the checkpoint or from ``backbone=NAME``."""
    if cfg.init == "pretrained":
        check(cfg.ckpt is not None, "ckpt=PATH is required: a pretraining checkpoint or run dir")
        check(cfg.get("backbone") is None, "backbone=NAME is for init=random; the checkpoint gives the architecture")
        return load_backbone(Path(str(cfg.ckpt)))
    check(
        (cfg.ckpt is None) != (cfg.get("backbone") is None),
        "init=random needs the architecture: ckpt=PATH (its weights are not used) or backbone=NAME, not both",
    )
    if cfg.ckpt is not None:
        path = find_checkpoint(Path(str(cfg.ckpt)))
        return None, dict(read_checkpoint(path)["cssl"]), path
    check(str(cfg.backbone) in list_backbones() or str(cfg.backbone).startswith("timm:"),
          f"backbone must be one of {', '.join(list_backbones())} or timm:NAME, got {cfg.backbone!r}")  # fmt: skip
    return None, {"backbone": str(cfg.backbone), "cifar_stem": None, "method": None}, None


def random_backbone(meta: dict[str, Any], data: ImageDataModule) -> torch.nn.Module:
    """A freshly initialised backbone of the checkpoint's architecture (seeded already)."""
    stem = meta.get("cifar_stem")
    return build_backbone(str(meta["backbone"]), cifar_stem=data.default_cifar_stem if stem is None else bool(stem))


def apply_subset(subset: LabelSubset, data: ImageDataModule, run_dir: Path) -> dict[str, Any] | None:
    """Train on the label subset only: the labelled split is replaced by the chosen images, which are written
    to ``RUN/label_subset.txt`` (:func:`~cssl.eval.subsets.write_subset`)."""
    if not subset.active:
        return None
    labelled = data.sets["labelled"]
    indices = subset.indices(labelled)
    path = write_subset(run_dir, labelled, indices) if rank_zero_only.rank == 0 else None
    data.sets["labelled"] = SubsetWithSamples(labelled, indices.tolist())
    return describe(subset, indices, labelled, path)


def linear_eval(cfg: DictConfig) -> dict[str, Any]:
    """Train a linear classifier on frozen features (``mode=linear``, under the protocol of ``protocol=``),
    fine-tune the whole network (``mode=finetune``; ``init=random``: from a random initialisation), or run
    a kNN grid (``mode=knn``), optionally on a label subset; the results also go into the pretraining run's
    W&B summary as ``eval/...`` keys."""
    start = time.time()
    check(cfg.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    check(cfg.init in INITS, f"init must be one of {', '.join(INITS)}, got {cfg.init!r}")
    check(cfg.init == "pretrained" or cfg.mode == "finetune", "init=random needs mode=finetune")
    check(
        cfg.train_augment in TRAIN_AUGMENT,
        f"train_augment must be one of {', '.join(TRAIN_AUGMENT)}, got {cfg.train_augment!r}",
    )
    check_probe_options(cfg.backbone_bn, cfg.init_std)
    ft = cfg.finetune
    check_finetune_options(ft.backbone_lr, ft.backbone_lr_ratio, ft.layer_decay)
    optim = OptimSettings(**run.plain(cfg.optimizer))
    check_int("seed", cfg.seed, 0)
    subset = label_subset(cfg)
    grid = knn_settings(cfg) if cfg.mode == "knn" else None
    backbone, meta, ckpt_path = evaluated_backbone(cfg)
    run_dir = run.output_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    views = classifier_views(cfg, meta, ckpt_path)
    data = run.build_data(cfg, train_split="labelled", views=views, val_bank=cfg.mode == "knn")
    check_normalisation(cfg, data, meta, ckpt_path)
    data.check()
    subset_info = apply_subset(subset, data, run_dir)
    if backbone is None:
        backbone = random_backbone(meta, data)
    logged = None
    if grid is not None:
        ks, ts, main = grid
        results: dict[str, Any] = knn_eval(backbone, data, ks=ks, temperatures=ts, main=main)
        results["preset"] = cfg.knn.get("preset")
        epochs = 0
    else:
        common = {
            "num_classes": data.num_classes,
            "batch_size": data.batch_size,
            "optim": optim,
            "feature_norm": bool(cfg.feature_norm),
            "init_std": cfg.init_std,
        }
        if cfg.mode == "linear":
            console.frozen_backbone_is_intended()
            model: Classifier = LinearProbe(backbone, backbone_bn=str(cfg.backbone_bn), **common)
        else:
            model = FineTuner(
                backbone,
                backbone_lr=ft.backbone_lr,
                backbone_lr_ratio=float(ft.backbone_lr_ratio),
                layer_decay=float(ft.layer_decay),
                **common,
            )
        trainer = run.build_trainer(cfg, run_dir, callbacks=[], logger_config=run.plain(cfg))
        run.save_config(run_dir, cfg)
        trainer.fit(model, datamodule=data)
        if not model.history or model.history[-1].step != trainer.global_step:  # final weights not validated yet
            trainer.validate(model, datamodule=data, verbose=False)
        results = last_and_best(model.history)
        results = {"top1": results["top1_last"], "top5": results["top5_last"], **results}
        epochs = int(trainer.current_epoch)
        logged = loggers.where_logged(trainer.loggers)
    summary = {
        "mode": str(cfg.mode),
        "protocol": str(cfg.protocol_name) if cfg.mode != "knn" else None,
        "init": str(cfg.init),
        **results,
        "epochs": epochs,
        "subset": subset_info,
        "checkpoint": None if ckpt_path is None else str(ckpt_path),
        "method": meta.get("method") if cfg.init == "pretrained" else None,
        "backbone": meta.get("backbone"),
        "data": str(cfg.data.name),
        "seed": int(cfg.seed),
        "wall_seconds": round(time.time() - start, 2),
    }
    run.write_summary(run_dir, summary)
    lines = console.linear_eval_end(summary, run_dir, logged, report_command(ckpt_path, run_dir))
    if cfg.wandb_summary:
        note = loggers.write_eval_summary(meta.get("wandb"), eval_metrics(summary), run_dir)
        lines += [note] if note else []
    run.say(lines)
    return summary


def report_command(ckpt_path: Path | None, run_dir: Path) -> str | None:
    """``python -m cssl.report PRETRAIN_RUN THIS_RUN``: the pretraining run's table with this evaluation
    joined (when the checkpoint lies in a run dir)."""
    if ckpt_path is None:
        return None
    pretrain_dir = run_dir_of(ckpt_path)
    if ckpt_path.parent.name != "checkpoints" or not (pretrain_dir / "summary.json").is_file():
        return None
    return f"python -m cssl.report {console.shown(pretrain_dir)} {console.shown(run_dir)}"


@torch.no_grad()
def knn_eval(
    backbone: torch.nn.Module,
    data: ImageDataModule,
    *,
    ks: list[int],
    temperatures: list[float],
    main: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Weighted kNN of the held-out split against the labelled train split for every (k, t) of the grid, from
    the backbone's pooled features extracted once. ``top1``/``top5`` are the ``main`` cell's (a preset's),
    the only cell's, or else the best cell's; ``grid`` holds every cell, ``best`` names the best."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = backbone.to(device).eval()

    def features(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for x, y in loader:
            feats.append(backbone(data.eval_transform(x.to(device))).float())
            labels.append(y.to(device))
        return torch.cat(feats), torch.cat(labels)

    bank_loader, val_loader = data.val_dataloader()
    bank, bank_y = features(bank_loader)
    query, query_y = features(val_loader)
    keep = bank_y >= 0
    cells = knn_grid(query, query_y, bank[keep], bank_y[keep], data.num_classes, ks=ks, temperatures=temperatures)
    grid = {knn_cell(k, t): {"top1": top1, "top5": top5} for (k, t), (top1, top5) in cells.items()}
    best = max(cells, key=lambda c: (cells[c][0], -ks.index(c[0]), -temperatures.index(c[1])))
    shown = main if main is not None else next(iter(cells)) if len(cells) == 1 else best
    return {
        "top1": cells[shown][0],
        "top5": cells[shown][1],
        "k": shown[0],
        "t": shown[1],
        "best": {"cell": knn_cell(*best), "k": best[0], "t": best[1], "top1": cells[best][0]},
        "grid": grid,
        "preset": None,
    }
