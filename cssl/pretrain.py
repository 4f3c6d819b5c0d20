"""Self-supervised pretraining: Hydra config -> objects -> Lightning fit -> run dir with summary.json."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from cssl.core import storage
from cssl.core.errors import ConfigError, check, check_int
from cssl.data.folder import SkippedImages
from cssl.data.plan import ViewPlan
from cssl.eval.embedding import embedding_map, log_image
from cssl.methods import ContrastiveMethod, Method, method_class
from cssl.models import speed
from cssl.models.backbones import build_backbone
from cssl.models.optim import OptimSettings
from cssl.models.weights import check_init_path, load_init
from cssl.runtime import console, faults, launch, loggers, preempt, run, slurm
from cssl.runtime.checkpoint import (
    FinishStep,
    MetricStates,
    RNGState,
    SpaceCheck,
    find_checkpoint,
    kept_checkpoints,
    newest_readable,
    read_checkpoint,
    step_checkpoints,
)


def method_options(cfg: DictConfig) -> tuple[type[Method], dict[str, Any]]:
    """The method class of ``cfg.method.name`` and its keyword options (the other ``method.*`` keys)."""
    options = run.plain(cfg.method)
    return method_class(str(options.pop("name"))), options


def pretrain_views(cfg: DictConfig) -> ViewPlan:
    """The training views of ``cfg``: the views the method asks for (:meth:`Method.view_needs`), augmented
    by ``data.augment`` (per main view ``data.augment_per_view``), with ``data.multicrop``'s extra views."""
    cls, options = method_options(cfg)
    try:
        needs = cls.view_needs(**options)
    except TypeError as err:
        raise ConfigError(f"method {cfg.method.name}: {err}") from None
    data = run.plain(cfg.data)
    return ViewPlan(
        augment=data["augment"],
        main=needs.main,
        per_view=data.get("augment_per_view"),
        multicrop=data.get("multicrop"),
        support=needs.support,
    )


def build_method(cfg: DictConfig, num_classes: int, batch_size: int, cifar_stem: bool) -> Method:
    """The method of ``cfg.method`` over the backbone of ``cfg.backbone``."""
    cls, options = method_options(cfg)
    name = str(cfg.method.name)
    every, top_k, false_negative_k = diagnostics_options(cfg)
    if issubclass(cls, ContrastiveMethod):  # the negatives report their own diagnostics
        options["diagnostics_top_k"] = top_k
    backbone = build_backbone(str(cfg.backbone), cifar_stem=cifar_stem, zero_init_residual=bool(cfg.zero_init_residual))
    init = None
    if cfg.get("backbone_init") not in (None, ""):  # before the method copies it (momentum encoders)
        init = load_init(backbone, Path(str(cfg.backbone_init)), name=str(cfg.backbone), cifar_stem=cifar_stem)
    try:
        optim = OptimSettings(**run.plain(cfg.optimizer))
        model = cls(
            backbone,
            num_classes=num_classes,
            batch_size=batch_size,
            optim=optim,
            diagnostics_every_n_steps=every,
            false_negative_k=false_negative_k,
            **options,
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
        "experiment": experiment_name(),
        "backbone_init": init,
        "config": run.plain(cfg),
    }
    return model


def experiment_name() -> str | None:
    """The ``experiment=NAME`` of this run (recorded in the checkpoint; model cards name it), if any."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get("experiment")
    except (ImportError, ValueError, AttributeError):
        return None
    return None if choice in (None, "null") else str(choice)


def diagnostics_options(cfg: DictConfig) -> tuple[int, int, int]:
    """``cfg.diagnostics``' interval, top-k and false-negative k (the interval must coincide with Lightning's
    logging steps)."""
    diag = cfg.diagnostics
    every = diag.every_n_steps
    check_int("diagnostics.every_n_steps", every, 0)
    log_every = int(cfg.trainer.get("log_every_n_steps") or 50)
    check(
        every % log_every == 0,
        f"diagnostics.every_n_steps={every} must be a multiple of trainer.log_every_n_steps={log_every} (or 0 to turn diagnostics off)",
    )
    return every, diag.top_k, diag.false_negative_k


class EmbeddingMaps(pl.Callback):
    """A 2-D map of the held-out embeddings every ``every_n_epochs`` validation epochs (run_dir/embeddings/)."""

    def __init__(self, run_dir: Path, every_n_epochs: int) -> None:
        self.run_dir, self.every_n_epochs = run_dir, every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, model: Method) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and trainer.state.fn == "fit" and epoch % self.every_n_epochs == 0:
            write_embedding_map(model, self.run_dir / "embeddings" / f"epoch{epoch:04d}.png", trainer.global_step)


@rank_zero_only
def write_embedding_map(model: Method, path: Path, step: int) -> None:
    if model.last_val_embedding is None:
        return
    feats, labels = model.last_val_embedding
    title = f"{model.meta.get('method', '')} step {step}"
    try:
        embedding_map(feats, labels, path, title=title)
    except Exception as err:  # noqa: BLE001 - an optional output: a warning, and training goes on
        storage.optional_output("embedding map", path, err)
        return
    log_image(model.logger, "val/embedding", path, step)


def apply_speed_options(cfg: DictConfig, model: Method) -> None:
    """``channels_last`` (weights and images in channels-last memory format) and ``compile`` (torch.compile
    of the backbone; skipped with a warning where unsupported). Both default to false."""
    options = {key: cfg.get(key, False) for key in ("channels_last", "compile")}
    for key, value in options.items():
        check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
    if options["channels_last"]:
        speed.use_channels_last(model)
    if options["compile"]:
        speed.compile_backbone(model)


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


def estimator_of(model: Method) -> str | None:
    """The estimator of a contrastive method (run tags, summary.json); None for a method without negatives."""
    return model.negatives.estimator if isinstance(model, ContrastiveMethod) else None


def label_run(cfg: DictConfig, model: Method) -> tuple[str, list[str]]:
    """Resolve ``logger.group`` (default: the multirun's name, else ``<method>_<data>``) and ``logger.tags``
    (plus method, estimator and data tags) in ``cfg``, so the logger and config.yaml record them."""
    method, data = model.meta["method"], str(cfg.data.name)
    group = loggers.run_group(cfg.logger.get("group"), method=method, data=data, sweep=loggers.multirun_name())
    estimator = estimator_of(model)
    tags = loggers.run_tags(run.plain(cfg.logger).get("tags"), method=method, estimator=estimator, data=data)
    with open_dict(cfg.logger):
        cfg.logger.group, cfg.logger.tags = group, tags
    return group, tags


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run one pretraining job described by ``cfg``; returns the summary written to summary.json."""
    start = time.time()
    check_int("seed", cfg.seed, 0)
    check_init_path(cfg.get("backbone_init"))  # a missing file fails before any work
    log_model = loggers.check_log_model(run.plain(cfg.logger))
    trainer_cfg = cfg.trainer
    launch.check_launch(trainer_cfg.get("devices"), trainer_cfg.get("num_nodes"), str(trainer_cfg.get("accelerator")))
    run_dir = run.output_dir(cfg)
    storage.guard_log_files()  # a log file on a full disk: one warning, not a traceback per record
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    diagnosing = diagnostics_options(cfg)[0] > 0  # validation then also takes view pairs (val/alignment)
    data = run.build_data(cfg, train_split="pretrain", views=pretrain_views(cfg), val_views=diagnosing)
    data.check()  # a missing dataset fails here, before any model is built
    cifar_stem = data.default_cifar_stem if cfg.cifar_stem is None else bool(cfg.cifar_stem)
    model = build_method(cfg, data.num_classes, data.batch_size, cifar_stem)
    model.online_probe = model.online_probe and data.online_probe  # labels only in the held-out images: off
    apply_speed_options(cfg, model)
    resume = resolve_resume(cfg.resume, run_dir, model.meta["method"])

    ck = cfg.checkpoint
    every = ck.every_n_epochs
    check_int("checkpoint.every_n_epochs", every, 1)
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
    check_int("diagnostics.embedding_every_n_epochs", cfg.diagnostics.embedding_every_n_epochs, 0)
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
        loggers.RecordRun(),  # the W&B run id in the checkpoints: evaluations write eval/... keys into that run
        throughput,
        maps,
        SkippedImages(),
        SpaceCheck(run_dir / "checkpoints", *kept_checkpoints(ck.every_n_steps, ck.every_n_minutes, ck.keep_last)),
    ]
    on_signal = preempt.signal_stop(  # SLURM's requeue signal, and SIGTERM (preemption) everywhere
        run_dir,
        requeue_signal=ck.get("requeue_signal"),
        preempt_signal_name=ck.get("preempt_signal", "SIGTERM"),
        grace_s=ck.get("preempt_grace_s", 25),
        on_slurm=slurm.on_slurm(),
    )
    callbacks += [on_signal] if on_signal is not None else []
    trainer = run.build_trainer(cfg, run_dir, callbacks=callbacks, logger_config=run.plain(cfg))
    run.save_config(run_dir, cfg)
    accumulate = int(trainer_cfg.get("accumulate_grad_batches") or 1)
    try:
        with faults.translated(  # out of memory, a killed loader worker, a full disk: one line each
            trainer,
            batch_size=data.batch_size,
            accumulate=accumulate,
            precision=trainer_cfg.get("precision"),
            num_workers=int(cfg.data.get("num_workers") or 0),
        ):
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
        "estimator": estimator_of(model),
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
        "backbone_init": (model.meta.get("backbone_init") or {}).get("path"),
        "metrics": final_metrics,
    }
    run.write_summary(run_dir, summary)
    if log_model:  # after summary.json: the model card quotes it
        summary["logged_model"] = log_backbone(trainer, run_dir)
        run.write_summary(run_dir, summary)
    next_command = console.linear_eval_command(run.plain(cfg.data), run_dir, CONFIGS)
    if data.num_classes == 0:  # unlabelled images: linear evaluation needs a few labels first
        next_command = f"label some images to evaluate: {next_command} data.eval_root=CLASS_FOLDERS"
    run.say(console.pretrain_end(summary, loggers.where_logged(trainer.loggers), next_command))
    return summary


@rank_zero_only
def log_backbone(trainer: pl.Trainer, run_dir: Path) -> str | None:
    """``logger.log_model``: export the final backbone (safetensors + model card, verified) to
    ``RUN_DIR/export/`` and log it as a W&B model artifact; any failure is one warning, training is done."""
    from cssl.export import export

    try:
        done = export(run_dir, "safetensors")  # the newest checkpoint: the final weights
        return loggers.log_artifact(trainer.loggers, done.files, name=f"backbone-{run_dir.name}", metadata=done.card)
    except Exception as err:  # noqa: BLE001 - an optional output: a warning, and the run ends as it would
        storage.optional_output("backbone artifact (logger.log_model)", run_dir / "export", err)
        return None


CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the data configs' defaults, for the next command
