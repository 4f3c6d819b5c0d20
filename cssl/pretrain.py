"""Self-supervised pretraining: Hydra config -> objects -> Lightning fit -> run dir with summary.json."""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from cssl.core.errors import ConfigError, check
from cssl.data import MultiView, ViewAugment
from cssl.data.datamodules import ImageFolderDataModule
from cssl.data.folder import SkippedImages
from cssl.data.views import ViewSpec
from cssl.eval.embedding import embedding_map, log_image
from cssl.methods import method_class
from cssl.methods.base import ContrastiveMethod
from cssl.models.backbones import build_backbone
from cssl.models.optim import OptimSettings
from cssl.runtime import console, launch, loggers, run, slurm
from cssl.runtime.checkpoint import (
    FinishStep,
    MetricStates,
    RNGState,
    find_checkpoint,
    newest_readable,
    read_checkpoint,
    step_checkpoints,
)


def build_views(
    cfg: DictConfig, image_size: int, mean: Any, std: Any, num_views: int = 2, crop: bool = True
) -> MultiView:
    """``num_views`` views at ``image_size``, then the extra multi-crop views of ``data.multicrop`` (if any),
    then FNC's support views (``method.fnc_support_views`` when ``method.fnc`` is on).

    ``data.multicrop`` is null or ``{sizes: [S, ...], scales: [[min, max], ...]}``: one extra view per size,
    with its own crop area range and the rest of ``data.augment``. Methods that do not use extra views
    (SimCLR, MoCo) take ``views[:2]`` and ignore them. ``crop=False``: photometric part only, for views
    already cut from the original image (see :func:`view_specs`).

    ``data.augment_per_view`` (optional) is null or a list of ``num_views`` mappings, each overriding keys of
    ``data.augment`` for one view: BYOL's asymmetric views (e.g. solarisation on the second view only).
    """
    augment = run.plain(cfg.data.augment)
    per_view = per_view_augment(run.plain(cfg.data).get("augment_per_view"), num_views)
    views = [ViewAugment(image_size, mean=mean, std=std, crop=crop, **{**augment, **own}) for own in per_view]
    multicrop = run.plain(cfg.data).get("multicrop")
    if multicrop:
        check(
            isinstance(multicrop, dict) and set(multicrop) == {"sizes", "scales"},
            f"data.multicrop must be null or {{sizes: [...], scales: [[min, max], ...]}}, got {multicrop!r}",
        )
        sizes, scales = multicrop["sizes"], multicrop["scales"]
        check(
            isinstance(sizes, list) and isinstance(scales, list) and len(sizes) == len(scales) > 0,
            f"data.multicrop.sizes and data.multicrop.scales must be lists of equal length, got {sizes!r} and {scales!r}",
        )
        for size, scale in zip(sizes, scales, strict=True):
            check(
                isinstance(size, int) and not isinstance(size, bool) and size >= 8,
                f"data.multicrop.sizes entries must be integers >= 8, got {size!r}",
            )
            check(
                isinstance(scale, list)
                and len(scale) == 2
                and all(isinstance(v, int | float) for v in scale)
                and 0 < scale[0] <= scale[1] <= 1,
                f"data.multicrop.scales entries must be [min, max] with 0 < min <= max <= 1, got {scale!r}",
            )
            options = {**augment, "crop_scale": scale}
            views.append(ViewAugment(size, mean=mean, std=std, crop=crop, **options))
    # FNC's support views last: full-size views of the same augmentation (NEGATIVES.md 1.1, FNC data.py:116-133)
    views += [ViewAugment(image_size, mean=mean, std=std, crop=crop, **augment) for _ in range(support_view_count(cfg))]
    return MultiView(views)


def set_train_views(cfg: DictConfig, data: Any) -> None:
    """Give ``data`` the training views of ``cfg``: on the device for in-memory data, or cut from the original
    images on the loader workers for an image folder (photometry then on the device)."""
    data.train_transform = build_views(cfg, data.image_size, data.mean, data.std)
    if isinstance(data, ImageFolderDataModule):
        photometric = build_views(cfg, data.image_size, data.mean, data.std, crop=False)
        data.cut_views(view_specs(cfg, data.image_size), photometric)


def view_specs(cfg: DictConfig, image_size: int, num_views: int = 2) -> list[ViewSpec]:
    """Side and crop scale of every view of :func:`build_views` (same order), for loaders that cut the
    views from the original images (run after build_views, which checks ``data.multicrop``)."""
    scale = tuple(float(v) for v in cfg.data.augment.crop_scale)
    per_view = per_view_augment(run.plain(cfg.data).get("augment_per_view"), num_views)
    views = [ViewSpec(image_size, tuple(float(v) for v in own.get("crop_scale", scale))) for own in per_view]
    multicrop = run.plain(cfg.data).get("multicrop") or {"sizes": [], "scales": []}
    for size, extra in zip(multicrop["sizes"], multicrop["scales"], strict=True):
        views.append(ViewSpec(int(size), (float(extra[0]), float(extra[1]))))
    views += [ViewSpec(image_size, scale) for _ in range(support_view_count(cfg))]
    return views


def support_view_count(cfg: DictConfig) -> int:
    """FNC's extra support views per image: ``method.fnc_support_views`` when ``method.fnc`` is on, else 0."""
    count = OmegaConf.select(cfg, "method.fnc_support_views", default=0)
    if (
        OmegaConf.select(cfg, "method.fnc", default="none") == "none"
        or not isinstance(count, int)
        or isinstance(count, bool)
    ):
        return 0  # a bad value is reported by the method's own check
    return max(0, count)


def per_view_augment(per_view: Any, num_views: int) -> list[dict[str, Any]]:
    """The validated ``data.augment_per_view``: one (possibly empty) mapping of overrides per view."""
    if per_view is None:
        return [{} for _ in range(num_views)]
    known = set(inspect.signature(ViewAugment).parameters) - {"image_size", "mean", "std", "crop"}
    check(
        isinstance(per_view, list) and len(per_view) == num_views and all(isinstance(v, dict) for v in per_view),
        f"data.augment_per_view must be null or a list of {num_views} mappings (one per view), got {per_view!r}",
    )
    for own in per_view:
        unknown = sorted(set(own) - known)
        check(not unknown, f"data.augment_per_view: unknown augmentation keys {unknown}; choose from {sorted(known)}")
    return per_view


def build_method(cfg: DictConfig, num_classes: int, batch_size: int, cifar_stem: bool) -> ContrastiveMethod:
    """The method of ``cfg.method`` over the backbone of ``cfg.backbone``."""
    options = run.plain(cfg.method)
    name = str(options.pop("name"))
    cls = method_class(name)
    backbone = build_backbone(str(cfg.backbone), cifar_stem=cifar_stem, zero_init_residual=bool(cfg.zero_init_residual))
    try:
        optim = OptimSettings(**run.plain(cfg.optimizer))
        model = cls(
            backbone, num_classes=num_classes, batch_size=batch_size, optim=optim, **diagnostics_options(cfg), **options
        )
    except TypeError as err:
        raise ConfigError(f"method {name}: {err}") from None
    model.meta = {
        "format": 1,
        "method": name,
        "backbone": str(cfg.backbone),
        "cifar_stem": cifar_stem,
        "num_features": model.num_features,
        "image_size": int(cfg.data.image_size),
        "data": str(cfg.data.name),
        "config": run.plain(cfg),
    }
    return model


def diagnostics_options(cfg: DictConfig) -> dict[str, int]:
    """Method arguments of ``cfg.diagnostics`` (its interval must coincide with Lightning's logging steps)."""
    diag = cfg.diagnostics
    every = diag.every_n_steps
    run.check_int("diagnostics.every_n_steps", every, 0)
    log_every = int(cfg.trainer.get("log_every_n_steps") or 50)
    check(
        every % log_every == 0,
        f"diagnostics.every_n_steps={every} must be a multiple of trainer.log_every_n_steps={log_every} (or 0 to turn diagnostics off)",
    )
    return {
        "diagnostics_every_n_steps": every,
        "diagnostics_top_k": diag.top_k,
        "false_negative_k": diag.false_negative_k,
    }


class EmbeddingMaps(pl.Callback):
    """A 2-D map of the held-out embeddings every ``every_n_epochs`` validation epochs (run_dir/embeddings/)."""

    def __init__(self, run_dir: Path, every_n_epochs: int) -> None:
        self.run_dir, self.every_n_epochs = run_dir, every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, model: ContrastiveMethod) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and trainer.state.fn == "fit" and epoch % self.every_n_epochs == 0:
            write_embedding_map(model, self.run_dir / "embeddings" / f"epoch{epoch:04d}.png", trainer.global_step)


@rank_zero_only
def write_embedding_map(model: ContrastiveMethod, path: Path, step: int) -> None:
    if model.last_val_embedding is None:
        return
    feats, labels = model.last_val_embedding
    title = f"{model.meta.get('method', '')} step {step}"
    embedding_map(feats, labels, path, title=title)
    log_image(model.logger, "val/embedding", path, step)


def apply_speed_options(cfg: DictConfig, model: ContrastiveMethod) -> None:
    """``channels_last`` (weights and images in channels-last memory format) and ``compile`` (torch.compile
    of the backbone; skipped with a warning where unsupported). Both default to false."""
    options = {key: cfg.get(key, False) for key in ("channels_last", "compile")}
    for key, value in options.items():
        check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
    if options["channels_last"]:
        model.use_channels_last()
    if options["compile"]:
        model.compile_backbone()


def resolve_resume(resume: Any, run_dir: Path, method: str) -> str | None:
    """The checkpoint to resume from: None, a path, or ``auto`` (newest checkpoint of ``run_dir``)."""
    if resume in (None, "", "null"):
        return None
    if resume == "auto":
        found = newest_readable(run_dir, warn=_warn)
        if found is None:
            return None  # nothing to resume yet: start fresh (so resume=auto is safe in job scripts)
        path, ckpt = found
    else:
        path = find_checkpoint(Path(str(resume)))
        ckpt = read_checkpoint(path)
    saved = ckpt["cssl"].get("method")
    check(saved == method, f"resume: {path} is a {saved} checkpoint, but method={method}; pass method={saved}")
    return str(path)


@rank_zero_only
def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def label_run(cfg: DictConfig, model: ContrastiveMethod) -> tuple[str, list[str]]:
    """Resolve ``logger.group`` (default: the multirun's name, else ``<method>_<data>``) and ``logger.tags``
    (plus method, estimator and data tags) in ``cfg``, so the logger and config.yaml record them."""
    method, data = model.meta["method"], str(cfg.data.name)
    group = loggers.run_group(cfg.logger.get("group"), method=method, data=data, sweep=loggers.multirun_name())
    estimator = model.estimator
    tags = loggers.run_tags(run.plain(cfg.logger).get("tags"), method=method, estimator=estimator, data=data)
    with open_dict(cfg.logger):
        cfg.logger.group, cfg.logger.tags = group, tags
    return group, tags


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run one pretraining job described by ``cfg``; returns the summary written to summary.json."""
    start = time.time()
    run.check_int("seed", cfg.seed, 0)
    trainer_cfg = cfg.trainer
    launch.check_launch(trainer_cfg.get("devices"), trainer_cfg.get("num_nodes"), str(trainer_cfg.get("accelerator")))
    run_dir = run.output_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    data = run.build_data(cfg, train_split="pretrain", train_transform=None)
    data.check()  # a missing dataset fails here, before any model is built
    set_train_views(cfg, data)
    data.eval_transform = run.eval_transform(data)  # data.eval_image_size; the stem follows data.image_size
    cifar_stem = data.default_cifar_stem if cfg.cifar_stem is None else bool(cfg.cifar_stem)
    model = build_method(cfg, data.num_classes, data.batch_size, cifar_stem)
    apply_speed_options(cfg, model)
    resume = resolve_resume(cfg.resume, run_dir, model.meta["method"])

    every = cfg.checkpoint.every_n_epochs
    run.check_int("checkpoint.every_n_epochs", every, 1)
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="epoch{epoch:04d}",
        auto_insert_metric_name=False,
        every_n_epochs=every,
        save_top_k=-1,
        save_last=True,
        save_on_train_epoch_end=True,
        enable_version_counter=False,  # always overwrite last.ckpt, also in a copied run dir that is resumed
    )
    throughput = run.Throughput(data.batch_size)
    group, tags = label_run(cfg, model)
    data.val_views = model.diagnostics_every_n_steps > 0
    run.check_int("diagnostics.embedding_every_n_epochs", cfg.diagnostics.embedding_every_n_epochs, 0)
    maps = EmbeddingMaps(run_dir, int(cfg.diagnostics.embedding_every_n_epochs))
    callbacks = [
        FinishStep(),  # first: a step is complete before any callback checkpoints it
        checkpoints,
        *step_checkpoints(
            run_dir / "checkpoints",
            every_n_steps=cfg.checkpoint.every_n_steps,
            every_n_minutes=cfg.checkpoint.every_n_minutes,
            keep_last=cfg.checkpoint.keep_last,
        ),
        RNGState(),
        MetricStates(),
        throughput,
        maps,
        SkippedImages(),
    ]
    signum = slurm.requeue_signal(cfg.checkpoint.get("requeue_signal"))
    if signum is not None and slurm.on_slurm():
        callbacks.append(slurm.SlurmRequeue(run_dir, signum))
    trainer = run.build_trainer(cfg, run_dir, callbacks=callbacks, logger_config=run.plain(cfg))
    run.save_config(run_dir, cfg)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=resume)
    except slurm.Requeued as stop:  # SLURM's time-limit signal: the requeued job continues with resume=auto
        rank_zero_info(str(stop))
        return {"requeued": True, "global_step": int(trainer.global_step), "run_dir": str(run_dir)}
    train_metrics = {k: run.metric(trainer, k) for k in ("train/loss", "train/online_top1")}
    final_metrics = loggers.scalar_metrics(trainer.callback_metrics)  # train/... and neg/... of the last step
    if model.last_validated_step != trainer.global_step:  # the last validation did not see the final weights
        trainer.validate(model, datamodule=data, verbose=False)
        final_metrics.update(loggers.scalar_metrics(trainer.callback_metrics))
    if cfg.diagnostics.embedding:
        write_embedding_map(model, run_dir / "embedding.png", trainer.global_step)

    summary = {
        "method": model.meta["method"],
        "estimator": model.estimator,
        "data": str(cfg.data.name),
        "backbone": str(cfg.backbone),
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train_loss": train_metrics["train/loss"],
        "online_top1": run.metric(trainer, "val/online_top1"),
        "knn_top1": run.metric(trainer, "val/knn_top1"),
        "train_online_top1": train_metrics["train/online_top1"],
        "images_per_second": round(throughput.images_per_second, 2),
        "wall_seconds": round(time.time() - start, 2),
        "seed": int(cfg.seed),
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "group": group,
        "tags": tags,
        "metrics": final_metrics,
    }
    run.write_summary(run_dir, summary)
    next_command = console.linear_eval_command(run.plain(cfg.data), run_dir, CONFIGS)
    run.say(console.pretrain_end(summary, loggers.where_logged(trainer.loggers), next_command))
    return summary


CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the data configs' defaults, for the next command
