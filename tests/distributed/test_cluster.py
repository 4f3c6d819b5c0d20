"""What a cluster does to a job, on two gloo processes on this machine, each against one uninterrupted run
of one node x two processes (Lightning's own launch) at the same global batch:

- torchrun with two agents on 127.0.0.1 (two "nodes" of one process, c10d rendezvous on a free port);
- a simulated SLURM job: two processes with the variables srun sets (SLURM_NTASKS, SLURM_PROCID, ...),
  killed with SIGKILL after a mid-epoch checkpoint and started again with the same command (resume=auto),
  then sent SIGUSR1 (the time-limit signal of ``--signal=SIGUSR1@120``) with a stand-in ``scontrol`` on
  PATH, and the requeued job started again.

Every scenario ends with the reference's weights, optimiser state and loss (1e-5; in practice bit-equal).
SimCLR, so that positives sit at global-rank columns of the gathered pool: ranks numbered by node-local
index would put node 1's positives on node 0's images and end elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cssl.runtime.checkpoint import resume_candidates
from tests.conftest import load_checkpoint, run_cli
from tests.interrupt import REPO, clean_env, finish, kill_group, max_difference, start, train_cmd, wait_for

STEPS_PER_EPOCH = 5
COMMAND = (
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "data=digits",
    "data.batch_size=8",  # per process: a global batch of 16
    "logger=none",
    "trainer.progress_bar=false",
    "backbone=timm:test_resnet",
    "method.proj_hidden_dim=64",
    "data.bank_limit=64",
    "trainer.limit_val_batches=2",
    "diagnostics.embedding=false",
    "trainer.max_epochs=2",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    "trainer.check_val_every_n_epoch=1",
    "checkpoint.every_n_steps=2",
    "seed=5",
    "resume=auto",
)
ONE_NODE = ("trainer.devices=2", "trainer.num_nodes=1")
TWO_NODES = ("trainer.devices=1", "trainer.num_nodes=2")
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_env(rank: int, port: int, bin_dir: Path, **extra: str) -> dict[str, str]:
    """What srun sets for task ``rank`` of a 2-node job with one task per node (both nodes: this host)."""
    return clean_env(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="cssl-test",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NNODES="2",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(rank),
        SLURM_NODELIST="127.0.0.1",
        SLURM_JOB_NODELIST="127.0.0.1",
        MASTER_PORT=str(port),
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    )


def final_state(run_dir: Path) -> tuple[dict, dict]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt"), json.loads((run_dir / "summary.json").read_text())


def assert_same_training(reference: tuple[dict, dict], other: tuple[dict, dict]) -> None:
    (a, sa), (b, sb) = reference, other
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    assert max_difference(a, b) <= TOLERANCE
    for key in ("train_loss", "online_top1", "knn_top1"):
        assert sa[key] == pytest.approx(sb[key], abs=TOLERANCE), key


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def reference(root: Path) -> tuple[dict, dict]:
    """One node, two processes started by Lightning, never interrupted."""
    run_dir = root / "reference"
    proc = start(train_cmd(*COMMAND, *ONE_NODE, f"run_dir={run_dir}"), clean_env(), root / "reference.log")
    finish(proc, root / "reference.log")
    return final_state(run_dir)


@pytest.mark.slow
def test_torchrun_two_agents_as_two_nodes(root: Path, reference: tuple[dict, dict]) -> None:
    run_dir = root / "torchrun"
    port = free_port()
    agents = []
    for node in range(2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=cssl-test",
            f"--node_rank={node}",
            "--max_restarts=0",
            str(REPO / "train.py"),
            *COMMAND,
            *TWO_NODES,
            f"run_dir={run_dir}",
        ]
        agents.append(start(cmd, clean_env(), root / f"torchrun-{node}.log"))
    for node, agent in enumerate(agents):
        finish(agent, root / f"torchrun-{node}.log")
    assert_same_training(reference, final_state(run_dir))


@pytest.mark.slow
def test_slurm_job_survives_a_node_failure_and_a_time_limit_requeue(root: Path, reference: tuple[dict, dict]) -> None:
    """Two simulated srun tasks: SIGKILL of both after a mid-epoch checkpoint (a node that dies), the job
    started again, SIGUSR1 to one task in the next epoch (the time-limit signal), the requeued job started
    again: the end equals the uninterrupted one-node run."""
    run_dir = root / "slurm"
    bin_dir = root / "bin"
    bin_dir.mkdir()
    calls = root / "scontrol-calls.txt"
    scontrol = bin_dir / "scontrol"  # records the call, where the real one would requeue the job
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    cmd = train_cmd(*COMMAND, *TWO_NODES, f"run_dir={run_dir}")

    def job(part: int, **extra: str) -> list[subprocess.Popen]:
        port = free_port()
        return [start(cmd, slurm_env(r, port, bin_dir, **extra), root / f"slurm-{part}-{r}.log") for r in range(2)]

    # 1. a node dies after the checkpoint of step 2
    tasks = job(1)
    wait_for(tasks[0], lambda: (run_dir / "checkpoints" / "step00000002.ckpt").is_file())
    for task in tasks:
        kill_group(task)
    resume_from = resume_candidates(run_dir)[0]
    killed_at = load_checkpoint(resume_from)["global_step"]
    assert killed_at % STEPS_PER_EPOCH != 0  # inside an epoch

    # 2. the job runs again until SLURM signals its time limit, in the second epoch
    tasks = job(2, SLURM_RESTART_COUNT="1")
    wait_for(tasks[0], lambda: (run_dir / "checkpoints" / "step00000006.ckpt").is_file())
    tasks[1].send_signal(signal.SIGUSR1)  # one rank gets it first: the ranks must still stop together
    logs = [finish(t, root / f"slurm-2-{r}.log", timeout=120) for r, t in enumerate(tasks)]
    assert str(resume_from) in logs[0]  # Lightning names the checkpoint it restores
    assert calls.read_text().split() == ["requeue", "4242"]
    hpc = list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"]
    stopped_at = load_checkpoint(hpc[0])["global_step"]
    assert 6 <= stopped_at < 2 * STEPS_PER_EPOCH
    assert resume_candidates(run_dir)[0] == hpc[0]  # the newest: what the requeued job resumes from
    assert not (run_dir / "summary.json").exists()  # the job stopped, it did not finish
    assert any(f"stopped at step {stopped_at} for a requeue" in log for log in logs)

    # 3. the requeued job
    logs = [finish(t, root / f"slurm-3-{r}.log") for r, t in enumerate(job(3, SLURM_RESTART_COUNT="2"))]
    assert str(hpc[0]) in logs[0]
    assert calls.read_text().split() == ["requeue", "4242"]  # no second requeue
    assert_same_training(reference, final_state(run_dir))


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, TWO_NODES, "not MASTER_ADDR and MASTER_PORT"),
        (
            {
                "SLURM_NTASKS": "2",
                "SLURM_NTASKS_PER_NODE": "2",
                "SLURM_NNODES": "1",
                "SLURM_PROCID": "0",
                "SLURM_LOCALID": "0",
                "SLURM_NODEID": "0",
                "SLURM_JOB_NAME": "x",
                "SLURM_NODELIST": "127.0.0.1",
            },
            ("trainer.devices=1", "trainer.num_nodes=1"),
            "SLURM started 2 tasks (SLURM_NTASKS) but trainer.devices x trainer.num_nodes = 1 x 1 = 1",
        ),
    ],
)
def test_a_bad_launch_is_one_line_and_exit_2_not_a_hang(root: Path, env: dict, args: tuple, message: str) -> None:
    started = time.monotonic()
    proc = run_cli("train.py", *COMMAND, *args, f"run_dir={root / 'bad'}", env=clean_env(**env), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: launch: ") and message in lines[0], proc.stderr
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_sigterm_to_rank_0_mid_epoch_stops_both_ranks_at_one_step_then_resume_exactly(
    root: Path, reference: tuple[dict, dict]
) -> None:
    """A preemption (Kubernetes signals the container's first process: rank 0, which Lightning started rank 1
    from): both ranks stop at the same step boundary, rank 0 writes hpc_ckpt_1.ckpt, the run exits 143;
    the same command then ends with the uninterrupted run's tensors."""
    run_dir = root / "sigterm"
    cmd = train_cmd(*COMMAND, *ONE_NODE, f"run_dir={run_dir}")
    proc = start(cmd, clean_env(), root / "sigterm-1.log")
    wait_for(proc, lambda: (run_dir / "checkpoints" / "step00000002.ckpt").is_file())
    proc.send_signal(signal.SIGTERM)  # rank 0 only: rank 1 learns it at the next batch end
    proc.wait(timeout=120)
    log = (root / "sigterm-1.log").read_text(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    deadline = time.monotonic() + 60
    while True:  # rank 1 ends too (it exits 0: rank 0's status is the job's)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "rank 1 did not end"
        time.sleep(0.1)
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    step = load_checkpoint(hpc)["global_step"]
    assert 2 < step < 2 * STEPS_PER_EPOCH
    assert f"stopped: SIGTERM at step {step}: {hpc} holds the state" in log
    assert resume_candidates(run_dir)[0] == hpc and not (run_dir / "summary.json").exists()
    finish(start(cmd, clean_env(), root / "sigterm-2.log"), root / "sigterm-2.log")
    assert str(hpc) in (root / "sigterm-2.log").read_text()
    assert_same_training(reference, final_state(run_dir))
