"""Checkpoints and resume: no teachers stored, exact continuation, hard kills, TensorBoard continuity."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import cli_process
from fixtures import write_meal_config as write_config
from safetensors.torch import load_file

import zoo
from callbacks import NonFiniteTrainingError
from cli import main
from errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=f"{key} differs")
    for group_a, group_b in zip(
        a["optimizer_states"][0]["param_groups"], b["optimizer_states"][0]["param_groups"], strict=True
    ):
        assert group_a["lr"] == group_b["lr"]
    for index, state in a["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(
            state["momentum_buffer"], b["optimizer_states"][0]["state"][index]["momentum_buffer"], rtol=0, atol=0
        )
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.mark.slow
@pytest.mark.trainer(max_epochs=4)
def test_resume_from_last_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    straight_config = write_config(tmp_path / "straight")
    main(["fit", "--config", str(straight_config), "--trainer.max_epochs=4"])

    resumed_config = write_config(tmp_path / "resumed")
    main(["fit", "--config", str(resumed_config), "--trainer.max_epochs=2"])
    main(["fit", "--config", str(resumed_config), "--trainer.max_epochs=4", "--ckpt_path=last"])

    straight = load(tmp_path / "straight/runs/meal/version_0/checkpoints/last.ckpt")
    resumed = load(tmp_path / "resumed/runs/meal/version_0/checkpoints/last.ckpt")
    assert straight["global_step"] == 4 * 4
    assert_same_training_state(straight, resumed)
    assert [p.name for p in (tmp_path / "resumed/runs/meal").iterdir()] == ["version_0"], (
        "resume opened a new TensorBoard run"
    )
    assert len(list((tmp_path / "resumed/runs/meal/version_0").glob("events.out.tfevents.*"))) == 2


@pytest.mark.trainer(max_epochs=4)
def test_resume_follows_the_schedule_and_lr_it_is_given(tmp_path, monkeypatch):
    """Train longer with a new lr: the extra epochs follow cosine over the new length at the new lr, and that is recorded."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, schedule="cosine")
    main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    main(["fit", "--config", str(config), "--trainer.max_epochs=4", "--model.init_args.lr=0.02", "--ckpt_path=last"])

    run = tmp_path / "runs/meal/version_0"
    cosine = lambda epoch, length: 0.5 * (1 + math.cos(math.pi * epoch / length))  # noqa: E731
    expected = [0.05 * cosine(0, 2), 0.05 * cosine(1, 2), 0.02 * cosine(2, 4), 0.02 * cosine(3, 4)]
    assert zoo.read_scalars(run, "lr-SGD/student") == pytest.approx(expected)  # LearningRateMonitor, once per epoch
    assert zoo.read_scalars(run, "lr-SGD/discriminator") == pytest.approx(expected)
    assert load(run / "checkpoints/last.ckpt")["hyper_parameters"]["lr"] == 0.02
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lr"] == 0.02


@pytest.mark.trainer(max_epochs=3)
def test_last_checkpoint_is_the_final_state_with_step_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, data_args={"val_size": 16})
    main(["fit", "--config", str(config), "--trainer.max_epochs=2", "--last_checkpoint.every_n_train_steps=3"])
    checkpoints = tmp_path / "runs/meal/version_0/checkpoints"
    last, best = load(checkpoints / "last.ckpt"), load(next(checkpoints.glob("best-*.ckpt")))
    assert last["global_step"] == 2 * 4  # 4 steps per epoch: the step checkpoints came at 3 and 6 only
    assert best["global_step"] <= last["global_step"]

    main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=3",
            "--last_checkpoint.every_n_train_steps=3",
            "--ckpt_path=last",
        ]
    )
    assert load(checkpoints / "last.ckpt")["global_step"] == 3 * 4  # resumes after the final step: one more epoch


def test_diverged_run_writes_no_checkpoint_and_exports_no_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="non-finite"):
        main(["fit", "--config", str(write_config(tmp_path)), "--trainer.max_epochs=1", "--model.init_args.lr=1e30"])
    run = tmp_path / "runs/meal/version_0"
    for file in [*run.glob("checkpoints/*.ckpt")]:
        assert all(torch.isfinite(v).all() for v in load(file)["state_dict"].values() if v.is_floating_point())
    for file in run.glob("student/*/model.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(str(file)).values())
    assert not list(run.glob("student/*/model.safetensors")) and not list(run.glob("checkpoints/*.ckpt"))


def test_checkpoint_is_student_and_discriminator_only_and_weights_only_loadable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(write_config(tmp_path)), "--trainer.max_epochs=1"])
    checkpoint = load(tmp_path / "runs/meal/version_0/checkpoints/last.ckpt")  # weights_only=True
    keys = checkpoint["state_dict"].keys()
    assert not any(k.startswith("teachers.") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"student", "discriminator"}
    assert checkpoint["hyper_parameters"]["teachers"][0]["name"] == "cifar_resnet8"
    stored = sum(v.numel() for v in checkpoint["state_dict"].values())
    trainable = sum(p.numel() for p in cli.model.student.parameters()) + sum(
        p.numel() for p in cli.model.discriminator.parameters()
    )
    assert stored < 1.1 * trainable + 1000


def test_checkpoint_missing_a_student_key_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    path = tmp_path / "runs/meal/version_0/checkpoints/last.ckpt"
    checkpoint = load(path)
    del checkpoint["state_dict"]["student.fc.weight"]
    torch.save(checkpoint, tmp_path / "broken.ckpt")
    with pytest.raises(ConfigError, match="lacks 1 student/discriminator weights.*student.fc.weight"):
        main(["validate", "--config", str(config), f"--ckpt_path={tmp_path / 'broken.ckpt'}"])


@pytest.mark.parametrize("trained, resumed", [("official", "none"), ("none", "adversarial")])
def test_resuming_with_the_discriminator_switched_on_or_off_says_what_to_do(tmp_path, monkeypatch, trained, resumed):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, discriminator=trained)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    with pytest.raises(ConfigError, match=f"trained with discriminator '{trained}'.*discriminator {trained}") as info:
        args = ["--trainer.max_epochs=2", f"--model.init_args.discriminator={resumed}", "--ckpt_path=last"]
        main(["fit", "--config", str(config), *args])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [(b"garbage", "cannot be read"), (None, "not a Lightning checkpoint"), ("missing", "does not exist")],
)
def test_bad_ckpt_path_is_refused_before_anything_is_built(tmp_path, monkeypatch, content, message):
    from storage.checkpoints import CheckpointError

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.ckpt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        main(["fit", "--config", str(write_config(tmp_path)), f"--ckpt_path={path}"])
    assert "\n" not in str(info.value)


def fit_command(config: Path, *extra: str) -> list[str]:
    """cli.py fit of the tiny MEAL V2 config: 96 images in batches of 4, 24 steps per epoch, 2 epochs."""
    return cli_process(
        "fit",
        config,
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=1",
        "--data.init_args.batch_size=4",
        *extra,
    )


def interrupt_after_step(
    command: list[str], cwd: Path, checkpoint: Path, step: int, signum: int, whole_group: bool = False
):
    """Start ``command``, send ``signum`` once ``checkpoint`` holds at least ``step`` (to its whole process group, as a
    terminal's Ctrl+C does, with ``whole_group``); returns (exit status, stderr)."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=whole_group
    )
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                if load(checkpoint)["global_step"] >= step:
                    break
            except Exception:  # being written
                pass
        time.sleep(0.05)
    (os.killpg if whole_group else os.kill)(process.pid, signum)
    _, stderr = process.communicate(timeout=180)
    return process.returncode, stderr


def straight_run(tmp_path: Path, *extra: str) -> dict:
    config = write_config(tmp_path / "straight")
    subprocess.run(fit_command(config, *extra), cwd=tmp_path / "straight", check=True, capture_output=True)
    return load(tmp_path / "straight/runs/meal/version_0/checkpoints/last.ckpt")


@pytest.fixture(scope="module")
def straight_with_workers(tmp_path_factory) -> dict:
    """The uninterrupted run (2 loader workers) that the SIGTERM and Ctrl+C resumes must equal."""
    return straight_run(tmp_path_factory.mktemp("reference"), "--data.init_args.num_workers=2")


@pytest.mark.slow
def test_hard_kill_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    """SIGKILL after a step checkpoint in the middle of epoch 0; --ckpt_path last trains the batches not yet seen."""
    straight = straight_run(tmp_path, "--last_checkpoint.every_n_train_steps=5")
    config = write_config(tmp_path / "killed")
    checkpoint = tmp_path / "killed/runs/meal/version_0/checkpoints/last.ckpt"
    command = fit_command(config, "--last_checkpoint.every_n_train_steps=5")
    interrupt_after_step(command, tmp_path / "killed", checkpoint, 5, signal.SIGKILL)
    killed_at = load(checkpoint)["global_step"]
    assert 0 < killed_at < 24 and killed_at % 5 == 0, f"not a mid-epoch step checkpoint: step {killed_at}"

    subprocess.run(command + ["--ckpt_path=last"], cwd=tmp_path / "killed", check=True, capture_output=True)
    assert_same_training_state(straight, load(checkpoint))


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, why, whole_group",
    [(signal.SIGTERM, "SIGTERM (pre-empted)", False), (signal.SIGINT, "SIGINT (Ctrl+C)", True)],
    ids=["sigterm", "ctrl-c"],
)
def test_a_stop_signal_saves_the_current_step_exits_nonzero_and_resumes_exactly(
    tmp_path, straight_with_workers, signum, why, whole_group
):
    """SLURM and Kubernetes pre-empt with SIGTERM; Ctrl+C in a terminal reaches the whole process group (loader workers
    too). Either way the step is saved, the exit is 128 + the signal (`fit && test` stops), the resume is exact."""
    checkpoints = tmp_path / "runs/meal/version_0/checkpoints"
    command = fit_command(
        write_config(tmp_path), "--data.init_args.num_workers=2", "--last_checkpoint.every_n_train_steps=3"
    )
    status, stderr = interrupt_after_step(command, tmp_path, checkpoints / "last.ckpt", 3, signum, whole_group)

    assert status == 128 + signum, stderr[-2000:]
    saved = load(checkpoints / "last.ckpt")["global_step"]
    assert 3 <= saved < 48
    assert stderr.strip().splitlines()[-1] == (
        f"error: stopped by {why}: {checkpoints / 'last.ckpt'} holds step {saved}; "
        "continue with the same command and --ckpt_path last."
    )
    subprocess.run(command + ["--ckpt_path=last"], cwd=tmp_path, check=True, capture_output=True)
    assert_same_training_state(straight_with_workers, load(checkpoints / "last.ckpt"))


def _rank_states() -> list[dict]:
    """Two processes' random states, as a 2-process checkpoint stores them."""
    from callbacks.rng_state import own_state

    states = []
    for seed in (11, 22):
        torch.manual_seed(seed)
        states.append(own_state())
    return states


def test_each_rank_restores_its_own_random_state(monkeypatch):
    import torch.distributed as dist

    from callbacks import RestoreRandomState

    states = _rank_states()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    RestoreRandomState().load_state_dict({"ranks": states})
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])


def test_resuming_on_another_number_of_processes_says_in_one_line_it_cannot_be_exact():
    from callbacks import RestoreRandomState

    states = _rank_states()
    with pytest.warns(UserWarning, match="Resumed on 1 process.*checkpoint of 2.*cannot repeat") as record:
        RestoreRandomState().load_state_dict({"ranks": states})
    assert "\n" not in str(record[0].message)
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])  # rank 0 continues saved rank 0's stream
