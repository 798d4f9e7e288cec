"""Two nodes launched for real on one host: torchrun --nnodes 2 (gloo on 127.0.0.1), the multi-node preset with the
CPU and one process per node swapped in, a SIGTERM to one node mid-epoch, and a resume that ends where an
uninterrupted 2-node run ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures import write_meal_config

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "presets" / "multinode_gpu.yaml"
CHECKPOINTS = Path("runs/meal/version_0/checkpoints")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_command(config: Path, node_rank: int, port: int, *extra: str) -> list[str]:
    """What each node runs (docs/scale_out.md): torchrun, one process per node, then cli.py fit with the preset."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1", f"--master_port={port}",
        str(ROOT / "cli.py"), "fit", "--config", str(config), "--config", str(PRESET),
        "--trainer.accelerator=cpu", "--trainer.devices=1",  # the preset's 8 GPUs per node -> one CPU process
        "--trainer.max_epochs=1", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", *extra,
    ]  # fmt: skip


def start_nodes(run_dir: Path, *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    return [
        subprocess.Popen(
            node_command(run_dir / "config.yaml", rank, port, *extra),
            cwd=run_dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]


def finish(nodes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit status, stderr) of each node's torchrun."""
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    return [(node.returncode, stderr) for node, stderr in zip(nodes, errors, strict=True)]


def run_nodes(run_dir: Path, *extra: str) -> list[tuple[int, str]]:
    return finish(start_nodes(run_dir, *extra))


def worker_of(agent: subprocess.Popen) -> int:
    """The training process torchrun started for its node."""
    for _ in range(600):
        children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("torchrun started no worker")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def student_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(("student.", "discriminator."))}


def test_two_nodes_stop_together_on_a_sigterm_to_one_and_resume_to_the_uninterrupted_weights(tmp_path):
    straight_dir, preempted_dir = tmp_path / "straight", tmp_path / "preempted"
    for folder in (straight_dir, preempted_dir):
        write_meal_config(folder)
    outcomes = run_nodes(straight_dir)
    assert [status for status, _ in outcomes] == [0, 0], outcomes[0][1][-3000:] + outcomes[1][1][-3000:]
    straight = load(straight_dir / CHECKPOINTS / "last.ckpt")
    assert straight["global_step"] == 12  # 96 images, 2 nodes x batch 4: 12 steps, one epoch

    step_checkpoints = "--last_checkpoint.every_n_train_steps=3"
    nodes = start_nodes(preempted_dir, step_checkpoints)
    last = preempted_dir / CHECKPOINTS / "last.ckpt"
    worker = worker_of(nodes[1])
    deadline = time.time() + 240
    while time.time() < deadline and not (last.exists() and _step(last) >= 3):
        time.sleep(0.05)
    os.kill(worker, signal.SIGTERM)  # node 1 only, as a pre-emption of the second machine would
    outcomes = finish(nodes)

    saved = load(last)["global_step"]
    assert 3 <= saved < 12, f"not mid-epoch 0: step {saved}"
    line = (
        f"error: stopped by SIGTERM (pre-empted): {last} holds step {saved}; "
        "continue with the same command and --ckpt_path last."
    )
    for node, (_, stderr) in enumerate(outcomes):
        assert "exitcode  : 143" in stderr or "exitcode: 143" in stderr.replace(" ", ""), stderr[-3000:]
        assert line in stderr, f"node {node}: " + stderr[-3000:]

    outcomes = run_nodes(preempted_dir, step_checkpoints, "--ckpt_path=last")
    assert [status for status, _ in outcomes] == [0, 0], outcomes[0][1][-3000:] + outcomes[1][1][-3000:]
    resumed = load(last)
    assert resumed["global_step"] == straight["global_step"]
    for name, value in student_weights(straight).items():
        assert torch.equal(value, resumed["state_dict"][name]), f"{name} differs from the uninterrupted run"


def _step(path: Path) -> int:
    try:
        return load(path)["global_step"]
    except Exception:  # being written
        return -1
