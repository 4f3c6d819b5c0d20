"""Where a run's time will go, measured on the node where it will run, before it is launched:

    python -m cssl.doctor [the overrides you give train.py, e.g. experiment=lab data.num_workers=4]

In about a minute it measures what one loader worker delivers on the real data (views included), what the
device augmentation and the training step consume on a batch of that data replayed (this method, backbone,
batch and precision), the memory at this batch, and for DDP the all-gather time per step; then it prints one
table and one verdict: the stage that bounds the run, the ``data.num_workers`` that removes a loader
bottleneck (or that no worker count can), whether the batch fits, and the expected images/s and training
time per epoch (validation excluded: the figure ``summary.json`` reports as ``images_per_second``).

The verdict is a pure function of the measurements (:func:`verdict`), so it can be checked on crafted ones.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cssl.runtime import cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADER_SHARE = 0.1  # data.num_workers=0: loading in the main process may take this share of a batch
MARGIN = 1.1  # recommended workers deliver 10% more than the device consumes (files differ in cost)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class Measurements:
    """What the doctor measured (rates in images per second of one device, or of one loader worker).

    Attributes:
        batch_size: images per step on one device.
        world_size: processes of the run (devices x nodes).
        num_workers: ``data.num_workers`` as configured (loader processes per device).
        worker_cores: CPU cores that one device's loader workers can have (the main process keeps one).
        loader: images/s that one loader worker makes (one process, one thread), views included.
        augment: images/s of the device augmentation (or device decode) of a batch.
        step: images/s of the training step alone; None when it did not run (out of memory).
        gather_seconds: DDP all-gather of the projections per step (0 on one device).
        memory_peak, memory_total: bytes at this batch, and bytes the device has (None: unknown).
        out_of_memory: the step failed to allocate.
        images_per_epoch: training images per epoch over all ranks.
    """

    batch_size: int
    world_size: int
    num_workers: int
    worker_cores: int
    loader: float
    augment: float
    step: float | None
    gather_seconds: float = 0.0
    memory_peak: int | None = None
    memory_total: int | None = None
    out_of_memory: bool = False
    images_per_epoch: int = 0


@dataclass(frozen=True)
class Verdict:
    """The doctor's conclusion.

    Attributes:
        bound: ``"loader"``, ``"step"`` (the device: augmentation, step and gather) or ``"out of memory"``.
        num_workers: the ``data.num_workers`` to use: the fewest workers that keep up with the device, 0 when
            loading in the main process costs little, None when no worker count within ``worker_cores`` can.
        batch_fits: the batch ran within the device's memory.
        images_per_second: expected, all ranks, with ``data.num_workers`` as configured (None: does not run).
        epoch_seconds: training time per epoch at that rate (validation excluded).
        best_images_per_second: expected with the recommended ``num_workers`` (or every worker core).
        reason: one sentence with the figures behind the verdict.
    """

    bound: str
    num_workers: int | None
    batch_fits: bool
    images_per_second: float | None
    epoch_seconds: float | None
    best_images_per_second: float | None
    reason: str


def verdict(m: Measurements) -> Verdict:
    """The stage that bounds a run with these measurements, and what to do about it.

    Per device and batch of B images, the device spends ``B/augment + B/step + gather_seconds``. With
    ``num_workers = 0`` the main process loads each batch first (``B/loader`` more); with N workers loading
    overlaps and the rate is ``min(N * loader, device rate)``. The run is loader-bound when the workers make
    fewer images than the device consumes, or (no workers) when loading takes more than ``LOADER_SHARE`` of a
    batch. Rates add over ranks (each has its own workers).
    """
    peak_over = m.memory_total is not None and m.memory_peak is not None and m.memory_peak > m.memory_total
    if m.out_of_memory or m.step is None or peak_over:
        return Verdict(
            "out of memory",
            None,
            False,
            None,
            None,
            None,
            f"data.batch_size={m.batch_size} does not fit on the device; lower it (or use "
            "trainer.precision=bf16-mixed)",
        )
    b = m.batch_size
    augment_s, step_s = b / m.augment, b / m.step
    device_s = augment_s + step_s + m.gather_seconds  # one batch on one device
    device_rate = b / device_s
    load_s = b / m.loader  # one batch by one worker
    needed = max(1, math.ceil(MARGIN * device_rate / m.loader))
    if m.num_workers == 0:
        rate = b / (load_s + device_s)
        share = load_s / (load_s + device_s)
        loader_bound = share > LOADER_SHARE
        where = f"loading in the main process takes {share:.0%} of each batch"
    else:
        rate = min(m.num_workers * m.loader, device_rate)
        loader_bound = m.num_workers * m.loader < device_rate
        workers = f"{m.num_workers} worker makes" if m.num_workers == 1 else f"{m.num_workers} workers make"
        where = f"{workers} {_rate(m.num_workers * m.loader)} images/s"
    device = (
        f"the device takes {device_s * 1e3:.1f} ms per batch of {b} (augmentation {augment_s * 1e3:.1f}, "
        f"step {step_s * 1e3:.1f}, gather {m.gather_seconds * 1e3:.1f}), {_rate(device_rate)} images/s"
    )
    if m.num_workers == 0 and not loader_bound:
        recommended: int | None = 0
        best = rate
    elif needed <= m.worker_cores:
        recommended, best = needed, device_rate
    else:
        recommended = None
        best = min(m.worker_cores * m.loader, device_rate) if m.worker_cores > 0 else rate
        best = max(best, rate)
    if recommended is None:
        advice = (
            f"no worker count can keep up: {needed} workers of {_rate(m.loader)} images/s would be needed, "
            f"{m.worker_cores} cores per device are free (data.decode=gpu moves decoding to the device)"
        )
    elif recommended == 0:
        advice = "data.num_workers=0 is enough"
    else:
        advice = f"data.num_workers={recommended} keeps up ({_rate(m.loader)} images/s per worker)"
    total = rate * m.world_size
    epoch = m.images_per_epoch / total if m.images_per_epoch > 0 else None
    return Verdict(
        "loader" if loader_bound else "step",
        recommended,
        True,
        total,
        epoch,
        best * m.world_size,
        f"{where}; {device}; {advice}",
    )


# -- the entry flow ----------------------------------------------------------------------------------------
def compose_config(overrides: list[str]) -> Any:
    """The config ``python train.py overrides...`` would run (Hydra's compose API); a bad override is a
    one-line :class:`ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cssl.core.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2]) or type(err).__name__) from None


def _worker_cores(per_node: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, cores // max(1, per_node) - 1)


def _images_per_epoch(size: int, batch: int, world: int, limit: Any) -> int:
    steps = size // (batch * world)  # drop_last
    if isinstance(limit, int) and not isinstance(limit, bool):
        steps = min(steps, limit)
    elif isinstance(limit, float) and limit < 1.0:
        steps = int(steps * limit)
    return steps * batch * world


def doctor(cfg: Any, *, loader_seconds: float = 5.0, steps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Measure the run of ``cfg`` on this machine, print the table and the verdict; returns them as plain data
    (``measurements``, ``verdict``, ``details``)."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.utilities import move_data_to_device

    from cssl.core.errors import check_int
    from cssl.pretrain import apply_speed_options, build_method, pretrain_views
    from cssl.runtime import launch, measure, run

    check_int("seed", cfg.seed, 0)
    trainer_cfg = cfg.trainer
    accelerator = str(trainer_cfg.get("accelerator"))
    launch.check_launch(trainer_cfg.get("devices"), trainer_cfg.get("num_nodes"), accelerator)
    per_node = launch.device_count(trainer_cfg.get("devices"), accelerator) or 1
    nodes = trainer_cfg.get("num_nodes") or 1
    world = per_node * int(nodes)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    data = run.build_data(cfg, train_split="pretrain", views=pretrain_views(cfg))  # as pretrain() builds them
    data.check()  # a missing dataset fails here, in one line
    cifar_stem = data.default_cifar_stem if cfg.cifar_stem is None else bool(cfg.cifar_stem)
    model = build_method(cfg, data.num_classes, data.batch_size, cifar_stem)
    apply_speed_options(cfg, model)
    device = measure.resolve_device(accelerator)
    b = data.batch_size

    workers, pin = data.num_workers, data.pin_memory
    data.num_workers, data.pin_memory = 0, False  # one worker's work, made here
    try:
        loader = measure.measure_loader(data.train_dataloader, b, seconds=loader_seconds)
    finally:
        data.num_workers, data.pin_memory = workers, pin

    on_device = move_data_to_device(loader.first_batch, device)
    data.trainer = SimpleNamespace(training=True)  # the hook augments training batches only
    try:
        augment = measure.augment_images_per_second(lambda x: data.on_after_batch_transfer(x, 0), on_device, b, device)
    finally:
        data.trainer = None
    del on_device
    options = run.plain(trainer_cfg)
    with measure.quiet():
        step = measure.measure_training(
            model,
            loader.first_batch,
            batch_size=b,
            source=data,
            accelerator=accelerator,
            steps=steps,
            warmup=warmup,
            trainer_options=options,
        )
    step_alone = None
    if step.step_seconds is not None:
        seconds = max(step.step_seconds - b / augment, 0.05 * step.step_seconds)  # the step without augmentation
        step_alone = b / seconds
    gather = 0.0
    if per_node > 1 and not step.out_of_memory:
        dim = _projection_dim(model, torch)
        backend = "nccl" if device.type == "cuda" else "gloo"
        gather = measure.gather_seconds(per_node, (2 * b, dim), backend=backend)
    m = Measurements(
        batch_size=b,
        world_size=world,
        num_workers=workers,
        worker_cores=_worker_cores(per_node),
        loader=loader.images_per_second,
        augment=augment,
        step=step_alone,
        gather_seconds=gather,
        memory_peak=step.memory_peak,
        memory_total=step.memory_total,
        out_of_memory=step.out_of_memory,
        images_per_epoch=_images_per_epoch(
            len(data.sets["pretrain"]), b, world, trainer_cfg.get("limit_train_batches")
        ),
    )
    v = verdict(m)
    details = {
        "method": model.meta["method"],
        "backbone": str(cfg.backbone),
        "data": str(cfg.data.name),
        "precision": str(options.get("precision")),
        "channels_last": bool(cfg.get("channels_last", False)),
        "compile": bool(cfg.get("compile", False)),
        "device": _device_name(device, torch),
        "devices": per_node,
        "nodes": int(nodes),
        "augment_and_step": step.images_per_second,
        "first_step_seconds": step.first_step_seconds,
        "memory_kind": step.memory_kind,
        "losses_finite": step.losses_finite,
        "loader_batches": loader.batches,
    }
    print(format_report(m, v, details))
    return {"measurements": asdict(m), "verdict": asdict(v), "details": details}


def _projection_dim(model: Any, torch: Any) -> int:
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.probe]
    return heads[-1].out_features if heads else model.num_features


def _device_name(device: Any, torch: Any) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _ms(batch: int, value: float | None) -> str:
    return "-" if not value else f"{batch / value * 1e3:,.1f}"


def format_report(m: Measurements, v: Verdict, d: dict[str, Any]) -> str:
    """The table and the verdict as printed."""
    b = m.batch_size
    rows = [
        ("loader, one worker", _rate(m.loader), _ms(b, m.loader), f"data.num_workers={m.num_workers} configured"),
        ("device augmentation", _rate(m.augment), _ms(b, m.augment), "views of one batch"),
        ("training step", _rate(m.step), _ms(b, m.step), "forward, backward, optimiser, after-step"),
    ]
    if d["devices"] > 1:
        rows.append(("all-gather (DDP)", "-", f"{m.gather_seconds * 1e3:,.1f}", f"{d['devices']} processes"))
    if m.memory_peak is not None:
        total = "unknown" if m.memory_total is None else f"{m.memory_total / 2**30:.1f} GiB"
        head = "" if m.memory_total is None else f", headroom {1 - m.memory_peak / m.memory_total:.0%}"
        rows.append(("memory", "-", "-", f"peak {m.memory_peak / 2**30:.2f} GiB of {total}{head} ({d['memory_kind']})"))
    width = max(len(r[0]) for r in rows)
    lines = [
        f"cssl doctor: {d['method']} on {d['backbone']}, data={d['data']}, batch {b} per device x {m.world_size}, "
        f"precision {d['precision']}, channels_last={d['channels_last']}, compile={d['compile']}",
        f"device: {d['device']}; {m.worker_cores} CPU cores per device for loader workers",
        "",
        f"{'stage':<{width}}  {'images/s':>10}  {'ms/batch':>9}  note",
    ]
    lines += [f"{name:<{width}}  {rate:>10}  {ms:>9}  {note}" for name, rate, ms, note in rows]
    lines.append("")
    bound = {"loader": "loader-bound", "step": "step-bound", "out of memory": "out of memory"}[v.bound]
    lines.append(f"verdict: {bound}. {v.reason}.")
    if v.batch_fits:
        workers = "none can keep up" if v.num_workers is None else str(v.num_workers)
        epoch = (
            ""
            if v.epoch_seconds is None
            else f", {_duration(v.epoch_seconds)} per epoch of {m.images_per_epoch} images"
        )
        lines.append(f"recommended data.num_workers: {workers}; batch fits: yes")
        lines.append(f"expected: {_rate(v.images_per_second)} images/s as configured{epoch} (validation excluded)")
        if v.best_images_per_second and v.best_images_per_second > 1.05 * (v.images_per_second or 0):
            lines.append(f"with the recommended workers: {_rate(v.best_images_per_second)} images/s")
    else:
        lines.append("batch fits: no")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    cli.check_group_overrides(argv, CONFIGS)
    cfg = cli.guard(lambda: compose_config(argv))
    cli.guard(lambda: doctor(cfg))


if __name__ == "__main__":
    main()
