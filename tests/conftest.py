"""Shared test helpers: the quick config overrides, running an entry point (as a subprocess or in this process),
checkpoints, and tiny backbones for method tests.

Two tiers: ``python -m pytest -q -m "not slow"`` is the working loop; ``python -m pytest -q`` runs everything,
including the tests marked ``slow`` (learning guards, two-process DDP runs, interrupted and resumed runs,
command-line training runs).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
# launcher variables of an enclosing job would make Lightning join that job instead of spawning its own ranks
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: no W&B credentials, no enclosing job (launcher or SLURM variables),
    quiet, repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "WANDB_"))}
    env.update({"PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


def run_cli(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repo root and return the completed process."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


QUICK = (
    "logger=none",
    "trainer.progress_bar=false",
    "data.batch_size=32",
    "method.proj_hidden_dim=64",
    "backbone=timm:test_resnet",  # 0.4M parameters: quick steps, small checkpoints
    "trainer.limit_val_batches=2",
    "data.bank_limit=128",
    "diagnostics.embedding=false",  # the t-SNE map is tested once, in tests/test_registry.py
)


@pytest.fixture
def quick_args() -> tuple[str, ...]:
    return QUICK


def compose(config_name: str, overrides: list[str]):
    """The config that ``python <entry>.py overrides...`` would see (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def run_inprocess(entry: str, overrides: list[str]) -> tuple[int, str]:
    """Run an entry point's main function in this process with its error guard: (exit code, stderr)."""
    import contextlib
    import io

    from cssl.runtime import cli

    if entry == "train":
        from cssl.pretrain import pretrain as fn
    else:
        from cssl.evaluate import linear_eval as fn
    cfg = compose("train" if entry == "train" else "linear_eval", overrides)
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            cli.guard(lambda: fn(cfg))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def train_inprocess(*overrides: str) -> None:
    """``python train.py overrides...`` in this process (compose, the CLI's error guard, pretrain): no new
    interpreter to import torch into again. Fails unless it exits 0."""
    code, err = run_inprocess("train", list(overrides))
    assert code == 0, err[-3000:]


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``proc`` if it exited 0; else the test fails with the end of its stderr."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def load_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint's contents, on the CPU (tensors only: ``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def interrupted_copy(straight: Path, run_dir: Path, checkpoint: str = "epoch0000.ckpt") -> None:
    """Make ``run_dir`` an interrupted run: only ``straight``'s ``checkpoint`` survives, and ``resume=auto``
    continues from it."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / checkpoint).write_bytes((straight / "checkpoints" / checkpoint).read_bytes())


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same step, weights, buffers and optimiser state, bit for bit."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        for key in sa:
            assert torch.equal(sa[key], sb[key])


class TinyNet(nn.Sequential):
    """A tiny conv backbone for method tests: conv 3x3 (3 -> ``width``), optionally BN and ReLU, then global
    average pooling to ``width`` features. Without BN, rows are independent (batch composition cannot change a
    row); with it, train mode normalises with the statistics of whatever batch it sees."""

    def __init__(self, width: int = 8, *, bn: bool = True, relu: bool = True, padding: int = 1) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=padding)]
        layers += [nn.BatchNorm2d(width)] if bn else []
        layers += [nn.ReLU()] if relu else []
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = width


class StandIn(nn.Module):
    """A stand-in backbone (a linear map of each image's mean colour to 8 features): building a method with
    it checks the method's arguments in milliseconds."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 8)
        return self.fc(x.mean((2, 3)))


def same(out: torch.Tensor, want: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """(B,) bool: which images of ``out`` equal those of ``want`` (within ``atol``)."""
    return (out - want).flatten(1).abs().amax(dim=1) <= atol


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size, read_only=False) -> folder``: a size-limited file system of its own (a tmpfs), for
    real ENOSPC and EROFS. Mounting needs root; the test is skipped, saying why, where it cannot mount."""
    import shutil

    mounted: list[str] = []

    def mount(size: str, *, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip(f"a size-limited file system needs `mount -t tmpfs`, which needs root (euid {os.geteuid()})")
        if shutil.which("mount") is None:
            pytest.skip("no mount command to make a size-limited file system")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"mount -t tmpfs -o {options} failed ({proc.stderr.strip()}): no size-limited file system here")
        mounted.append(str(folder))
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", folder], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """A ballast file in ``folder`` that leaves about ``leave`` bytes free on its file system."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    ballast = folder / "ballast"
    with open(ballast, "ab") as f:
        if free > leave:
            os.posix_fallocate(f.fileno(), f.tell(), free - leave)
    return ballast
