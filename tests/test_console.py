"""What a person sees: no third-party chatter at start-up, a few closing lines, the full JSON in summary.json."""

import json
import logging
import warnings
from pathlib import Path

import pytest

from cssl.runtime import console
from tests.conftest import QUICK, REPO, cli_env, run_cli

# what the console showed before it was silenced (Lightning 2.6, wandb 0.31, torch 2.14)
NOISE = (
    "Tip:",  # Lightning's litlogger / litmodels adverts
    "litlogger",
    "anonymous setting",  # W&B
    "LeafSpec",  # torch's deprecation, triggered by Lightning's pytree helper
    "TPU available",
    "estimate number of stepping batches",
    "was configured so 100%",
    "module(s) in eval mode",  # the linear probe's frozen backbone
    "[INFO]",  # Hydra's log prefix
    '"metrics": {',  # the summary JSON, which stays in summary.json
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = cli_env(HOME=str(tmp_path))  # no W&B credentials: the run is logged offline
    env.pop("PYTHONWARNINGS")  # see every warning a person would see
    return env


def _noise(out: str) -> list[str]:
    return [word for word in NOISE if word in out]


def _closing(proc) -> list[str]:
    """The lines from ``done:`` on, of a run that ended well and printed none of :data:`NOISE`."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert _noise(out) == [], out
    return proc.stdout[proc.stdout.index("done: ") :].splitlines()


@pytest.mark.slow
def test_a_run_ends_with_a_few_lines_and_no_noise(tmp_path):
    run = tmp_path / "run"
    args = [a for a in QUICK if not a.startswith("logger=")]
    proc = run_cli(
        "train.py", *args, "logger=wandb", "trainer.max_epochs=1", "trainer.max_steps=2", f"run_dir={run}",
        env=_env(tmp_path),
    )  # fmt: skip
    closing = _closing(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"] and summary["global_step"] == 2  # the full JSON is in the file
    offline = next((run / "wandb").glob("offline-run-*"))
    assert closing == [
        f"done: simclr on digits, 1 epoch (2 steps) in {console.duration(summary['wall_seconds'])}, "
        f"{summary['images_per_second']:.0f} images/s",
        f"  kNN top-1 {summary['knn_top1']:.3f}   online probe top-1 {summary['online_top1']:.3f}   "
        f"loss {summary['train_loss']:.3f}",
        f"  run dir   {run}   (summary.json holds every metric)",
        f"  logged    W&B offline; upload with: wandb sync {offline}",
        f"next: python linear_eval.py ckpt={run}",
    ]

    lin = tmp_path / "lin"
    proc = run_cli(
        "linear_eval.py", f"ckpt={run}", "logger=csv", "trainer.progress_bar=false", "trainer.max_epochs=1",
        "data.batch_size=64", "trainer.limit_val_batches=2", f"run_dir={lin}", env=_env(tmp_path),
    )  # fmt: skip
    closing = _closing(proc)
    result = json.loads((lin / "summary.json").read_text())
    assert closing == [
        f"done: linear evaluation (protocol default) of simclr timm:test_resnet on digits, 1 epoch in "
        f"{console.duration(result['wall_seconds'])}",
        f"  top-1 {result['top1_last']:.3f} (last epoch), best {result['top1_best']:.3f} (epoch 1)   "
        f"top-5 {result['top5_last']:.3f}",
        f"  run dir   {lin}   (summary.json holds every metric)",
        f"  logged    {lin / 'csv' / 'metrics.csv'}",
        f"next: python -m cssl.report {run} {lin}",
        # the results also went into the pretraining run's W&B summary (offline: a run with its id, synced with it)
        f"W&B: 4 eval/ keys for run {offline.name.rsplit('-', 1)[-1]} (offline); upload both with: "
        f"wandb sync {offline} {next((lin / 'wandb').glob('offline-run-*'))}",
    ]


def test_the_next_command_carries_the_data_the_run_saw(tmp_path):
    digits = {"name": "digits", "root": "data", "batch_size": 7, "mean": [0.5, 0.5, 0.5], "augment": {}}
    assert console.linear_eval_command(digits, "runs/x", REPO / "configs") == "python linear_eval.py ckpt=runs/x"
    cifar = {"name": "cifar10", "root": "/data sets", "mean": [0.4914, 0.4822, 0.4465], "image_size": 32}
    cmd = console.linear_eval_command(cifar, "runs/x", REPO / "configs")
    assert cmd == "python linear_eval.py ckpt=runs/x data=cifar10 'data.root=/data sets'"
    stl = {"name": "stl10", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.201], "image_size": 32}
    cmd = console.linear_eval_command(stl, "runs/x", REPO / "configs")
    assert cmd.endswith("data=stl10 data.mean=[0.4914,0.4822,0.4465] data.std=[0.2023,0.1994,0.201]")
    lab = {"name": "lab", "generator_seed": 3, "train_size": 2000}
    cmd = console.linear_eval_command(lab, "runs/x", REPO / "configs")
    assert cmd.endswith("data=lab data.generator_seed=3")


def test_quiet_silences_only_the_named_messages():
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    rank_zero.addHandler(handler)
    level = rank_zero.level
    rank_zero.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            console.quiet()
            console.quiet()  # idempotent
            rank_zero.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
            rank_zero.info("GPU available: False, used: False")
            leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ... instead."
            for module in ("pytorch_lightning.utilities._pytree", "cssl.methods.base"):
                warnings.warn_explicit(leaf, FutureWarning, "x.py", 1, module=module)
            warnings.warn_explicit("another", FutureWarning, "x.py", 2, module="pytorch_lightning.utilities._pytree")
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.setLevel(level)
    assert seen == ["GPU available: False, used: False"]
    assert [(str(w.message)[:30], w.lineno) for w in caught] == [(leaf[:30], 1), ("another", 2)]
    assert rank_zero.filters.count(console._NOTES) == 1
