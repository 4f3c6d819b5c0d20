"""Linear (or kNN) evaluation of a pretraining checkpoint under a protocol (``protocol=default|moco|adco|
dcl_hcl``, configs/protocol/); shares data, trainer and loading with pretraining through :mod:`cssl.runtime.run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from cssl.core.errors import ConfigError, check, check_int
from cssl.data.datamodules import ImageDataModule
from cssl.data.plan import ViewPlan
from cssl.eval.knn import knn_predict
from cssl.eval.probe import LinearProbe, check_probe_options, last_and_best
from cssl.models.backbones import build_backbone
from cssl.models.optim import OptimSettings
from cssl.runtime import console, loggers, run
from cssl.runtime.checkpoint import find_checkpoint, read_checkpoint


def load_backbone(path: Path) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """The pretrained backbone of a checkpoint (or run dir), weights-only loading."""
    path = find_checkpoint(path)
    ckpt = read_checkpoint(path)
    meta = ckpt["cssl"]
    backbone = build_backbone(str(meta["backbone"]), cifar_stem=bool(meta["cifar_stem"]))
    weights = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
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


def linear_eval(cfg: DictConfig) -> dict[str, Any]:
    """Train a linear classifier on frozen features (``mode=linear``, under the protocol of ``protocol=``) or
    run kNN (``mode=knn``)."""
    start = time.time()
    check(cfg.mode in ("linear", "knn"), f"mode must be linear or knn, got {cfg.mode!r}")
    check(cfg.ckpt is not None, "ckpt=PATH is required: a pretraining checkpoint or run dir")
    check(
        cfg.train_augment in TRAIN_AUGMENT,
        f"train_augment must be one of {', '.join(TRAIN_AUGMENT)}, got {cfg.train_augment!r}",
    )
    check_probe_options(cfg.backbone_bn, cfg.init_std)
    optim = OptimSettings(**run.plain(cfg.optimizer))
    backbone, meta, ckpt_path = load_backbone(Path(str(cfg.ckpt)))
    check_int("seed", cfg.seed, 0)
    run_dir = run.output_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    views = classifier_views(cfg, meta, ckpt_path)
    data = run.build_data(cfg, train_split="labelled", views=views, val_bank=cfg.mode == "knn")
    check_normalisation(cfg, data, meta, ckpt_path)
    data.check()
    if cfg.mode == "knn":
        results: dict[str, Any] = knn_eval(backbone, data, k=int(cfg.knn.k), temperature=float(cfg.knn.t))
        epochs = 0
    else:
        console.frozen_backbone_is_intended()
        model = LinearProbe(
            backbone,
            num_classes=data.num_classes,
            batch_size=data.batch_size,
            optim=optim,
            feature_norm=bool(cfg.feature_norm),
            backbone_bn=str(cfg.backbone_bn),
            init_std=cfg.init_std,
        )
        trainer = run.build_trainer(cfg, run_dir, callbacks=[], logger_config=run.plain(cfg))
        run.save_config(run_dir, cfg)
        trainer.fit(model, datamodule=data)
        if not model.history or model.history[-1].step != trainer.global_step:  # final weights not validated yet
            trainer.validate(model, datamodule=data, verbose=False)
        results = last_and_best(model.history)
        results = {"top1": results["top1_last"], "top5": results["top5_last"], **results}
        epochs = int(trainer.current_epoch)
    summary = {
        "mode": str(cfg.mode),
        "protocol": str(cfg.protocol_name) if cfg.mode == "linear" else None,
        **results,
        "epochs": epochs,
        "checkpoint": str(ckpt_path),
        "method": meta.get("method"),
        "backbone": meta.get("backbone"),
        "data": str(cfg.data.name),
        "wall_seconds": round(time.time() - start, 2),
    }
    run.write_summary(run_dir, summary)
    logged = loggers.where_logged(trainer.loggers) if cfg.mode == "linear" else None
    run.say(console.linear_eval_end(summary, run_dir, logged, report_command(ckpt_path, run_dir)))
    return summary


def report_command(ckpt_path: Path, run_dir: Path) -> str | None:
    """``python -m cssl.report PRETRAIN_RUN THIS_RUN``: the pretraining run's table with this evaluation
    joined (when the checkpoint lies in a run dir)."""
    pretrain_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None
    if pretrain_dir is None or not (pretrain_dir / "summary.json").is_file():
        return None
    return f"python -m cssl.report {console.shown(pretrain_dir)} {console.shown(run_dir)}"


@torch.no_grad()
def knn_eval(backbone: torch.nn.Module, data: ImageDataModule, *, k: int, temperature: float) -> dict[str, float]:
    """Weighted kNN top-1/top-5 of the held-out split against the labelled train split."""
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
    scores = knn_predict(query, bank[keep], bank_y[keep], data.num_classes, k=k, temperature=temperature)
    top5 = scores.topk(min(5, data.num_classes), dim=1).indices
    return {
        "top1": float((top5[:, 0] == query_y).float().mean()),
        "top5": float((top5 == query_y[:, None]).any(1).float().mean()),
    }
