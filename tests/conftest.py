import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: no W&B credentials, quiet, repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
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
