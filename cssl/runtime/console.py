"""What a person sees in the terminal: no third-party chatter at start-up, a few lines at the end.

Start-up: :func:`quiet` silences the messages that say nothing about the run, each where it is made and by its
module and text (never all warnings): Lightning's litlogger and litmodels tips, its TPU and step-estimation
notes, the deprecation warning that Lightning's pytree helper triggers in torch, and matplotlib's note that it
built its font cache (the first run on a machine); :func:`frozen_backbone_is_intended` silences Lightning's
"modules in eval mode" warning where the linear probe freezes its backbone on purpose. Some are not made at
all: W&B's "anonymous setting" warning (:class:`cssl.runtime.loggers.SafeWandbLogger` does not pass that
setting) and Lightning's "limit_train_batches=1.0 was configured so ..." notes
(:func:`cssl.runtime.run.build_trainer` does not pass its default values).

End: :func:`pretrain_end` and :func:`linear_eval_end` give the few lines a run closes with (the headline
metrics rounded, the run dir, where the metrics were logged, the next command); ``summary.json`` keeps every
number at full precision. Imported before torch, so only the standard library at module level.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Lightning's info messages that are about Lightning, not about the run (prefixes of the message).
LIGHTNING_NOTES = (
    "💡 Tip: ",  # adverts for litlogger (every Trainer) and litmodels (Lightning's default checkpointing)
    "TPU available: False",  # "GPU available: ..." stays: it says whether the GPU is used
    "Loading `train_dataloader` to estimate number of stepping batches",
)
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
# torch deprecated LeafSpec; Lightning 2.6's pytree helper still builds one on every fit (its problem, not ours)
PYTREE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
PYTREE_MODULE = r"pytorch_lightning\.utilities\._pytree"
FIT_LOOP_MODULE = r"pytorch_lightning\.loops\.fit_loop"


class _DropNotes(logging.Filter):
    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


_NOTES = _DropNotes(LIGHTNING_NOTES)


def quiet() -> None:
    """Silence the third-party start-up messages listed above (idempotent; call before the heavy imports)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _NOTES not in logger.filters:
            logger.addFilter(_NOTES)
    warnings.filterwarnings("ignore", message=PYTREE_WARNING, category=FutureWarning, module=PYTREE_MODULE)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)


def frozen_backbone_is_intended() -> None:
    """Silence Lightning's warning that modules are in eval mode at the start of training: the linear probe's
    frozen backbone is, by design (``backbone_bn=eval``)."""
    warnings.filterwarnings(
        "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training", module=FIT_LOOP_MODULE
    )


# -- the closing lines ------------------------------------------------------------------------------------------
def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as a person would type it: relative to the working directory when it lies below it."""
    text = str(path)
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive
        return text
    return text if rel.startswith("..") else rel


def count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def fraction(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def duration(seconds: Any) -> str:
    seconds = round(float(seconds or 0))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def arg(key: str, value: Any) -> str:
    """A Hydra override ``key=value`` for a shell: lists without spaces, quoted where needed (lists are left
    unquoted, as everywhere in cssl's docs: bash passes a pattern that matches no file as it is)."""
    if isinstance(value, list | tuple):
        text = "[" + ",".join(str(v) for v in value) + "]"
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    word = f"{key}={text}"
    return word if re.fullmatch(r"[\w./=:,\[\]+@%-]+", word) else shlex.quote(word)


def pretrain_end(summary: Mapping[str, Any], logged: str | None, next_command: str) -> list[str]:
    """The closing lines of a pretraining run."""
    lines = [
        f"done: {summary['method']} on {summary['data']}, {count(summary['epochs'], 'epoch')} "
        f"({count(summary['global_step'], 'step')}) "
        f"in {duration(summary['wall_seconds'])}, {float(summary['images_per_second']):.0f} images/s",
        f"  kNN top-1 {fraction(summary['knn_top1'])}   online probe top-1 {fraction(summary['online_top1'])}   "
        f"loss {fraction(summary['train_loss'])}",
        f"  run dir   {shown(summary['run_dir'])}   (summary.json holds every metric)",
    ]
    if logged:
        lines.append(f"  logged    {logged}")
    lines.append(f"next: {next_command}")
    return lines


def linear_eval_end(
    summary: Mapping[str, Any], run_dir: Path, logged: str | None, next_command: str | None
) -> list[str]:
    """The closing lines of a linear, fine-tuning or kNN evaluation."""
    of = f"{summary.get('method')} {summary.get('backbone')} on {summary['data']}"
    if summary.get("init") == "random":
        of = f"{summary.get('backbone')} from a random initialisation on {summary['data']}"
    subset = summary.get("subset")
    if subset:
        of += f", {subset['images']} of {subset['of']} labelled images ({subset['tag']})"
    if summary["mode"] == "knn":
        cell = f" (k {summary['k']}, t {summary['t']:g})" if "k" in summary else ""
        lines = [
            f"done: kNN evaluation of {of} in {duration(summary['wall_seconds'])}",
            f"  top-1 {fraction(summary['top1'])}   top-5 {fraction(summary['top5'])}{cell}",
        ]
        grid = summary.get("grid") or {}
        if len(grid) > 1:
            best = summary["best"]
            lines.append(f"  grid of {len(grid)} (k, t): best top-1 {fraction(best['top1'])} at {best['cell']}")
    else:
        kind = "fine-tuning" if summary["mode"] == "finetune" else "linear evaluation"
        lines = [
            f"done: {kind} (protocol {summary['protocol']}) of {of}, {count(summary['epochs'], 'epoch')} in "
            f"{duration(summary['wall_seconds'])}",
            f"  top-1 {fraction(summary['top1_last'])} (last epoch), best {fraction(summary['top1_best'])} "
            f"(epoch {summary['best_epoch']})   top-5 {fraction(summary['top5_last'])}",
        ]
    lines.append(f"  run dir   {shown(run_dir)}   (summary.json holds every metric)")
    if logged:
        lines.append(f"  logged    {logged}")
    if next_command:
        lines.append(f"next: {next_command}")
    return lines


# data keys that say which images a run saw (carried to the evaluation); the others only say how it trained
TRAINING_ONLY = (
    "name",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "download",
    "verify_checksums",
    "bank_limit",
    "image_size",
    "eval_image_size",
    "decode",
    "skip_bad_images",
    "augment",
    "augment_per_view",
    "multicrop",
)


def linear_eval_command(data: Mapping[str, Any], run_dir: str | os.PathLike[str], configs: Path) -> str:
    """``python linear_eval.py ckpt=RUN_DIR`` with the data of the pretraining run: ``data=NAME`` unless digits
    (linear_eval.py's default), and each data key that says which images the run saw (root, normalisation,
    the lab generator's keys, ...) where it differs from the data config's default."""
    from omegaconf import OmegaConf

    parts = ["python linear_eval.py", arg("ckpt", shown(run_dir))]
    name = str(data["name"])
    if name != "digits":
        parts.append(f"data={name}")
    path = configs / "data" / f"{name}.yaml"
    defaults: dict[str, Any] = {}
    if path.is_file():
        defaults = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[assignment]
    for key, value in data.items():
        if key in TRAINING_ONLY or defaults.get(key, object()) == value:
            continue
        parts.append(arg(f"data.{key}", value))
    return " ".join(parts)
