"""Runs you can trust, through the CLI: no silent overwrite, requested checkpoints exist, wrong inputs stop in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import write_image_folder, write_meal_config, write_meal_config_for_data

from cli import USER_ERRORS, CheckpointError, ConfigError, main
from datamodules import DataError

ROOT = Path(__file__).resolve().parents[1]


def fixed_version(config_path, version: str = "main"):
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["logger"]["init_args"]["version"] = version
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_fit_into_a_finished_run_stops_and_says_how_to_resume_or_start_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    last = tmp_path / "runs/meal/main/checkpoints/last.ckpt"
    before = last.read_bytes()

    with pytest.raises(
        ConfigError,
        match=r"already holds a run .*--ckpt_path last.*--trainer.logger.init_args.version=NAME.*--overwrite true",
    ) as info:
        main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    one_line(info)
    assert last.read_bytes() == before


def test_overwrite_true_replaces_the_previous_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--overwrite=true"])
    run = tmp_path / "runs/meal/main"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4  # 1 epoch of 4 steps, not 2
    assert [p.name for p in run.glob("checkpoints/best-*.ckpt")] == ["best-epoch000.ckpt"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path, monkeypatch, subcommand):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="--ckpt_path last: no last\\*.ckpt under") as info:
        main([subcommand, "--config", str(write_meal_config(tmp_path)), "--ckpt_path=last"])
    assert ("drop --ckpt_path to start a new run" in one_line(info)) == (subcommand == "fit")


def test_ckpt_path_best_resolves_to_the_runs_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    cli = main(["validate", "--config", str(config), "--ckpt_path=best"])
    assert str(cli.trainer.ckpt_path).endswith("runs/meal/version_0/checkpoints/best-epoch000.ckpt")


def test_classifier_checkpoint_cannot_resume_meal_v2_and_the_reverse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meal_config = write_meal_config(tmp_path)
    main(["fit", "--config", str(meal_config), "--trainer.max_epochs=1"])
    meal_ckpt = tmp_path / "runs/meal/version_0/checkpoints/last.ckpt"
    classifier_config = yaml.safe_load(meal_config.read_text())
    classifier_config["model"] = {"class_path": "Classifier", "init_args": {"model": {"name": "cifar_resnet8"}}}
    classifier_config["trainer"]["logger"]["init_args"]["name"] = "classifier"
    (tmp_path / "classifier.yaml").write_text(yaml.safe_dump(classifier_config))
    main(["fit", "--config", str(tmp_path / "classifier.yaml"), "--trainer.max_epochs=1"])
    classifier_ckpt = tmp_path / "runs/classifier/version_0/checkpoints/last.ckpt"

    with pytest.raises(
        CheckpointError, match="is a Classifier checkpoint and cannot resume MealV2.*model.init_args.student.checkpoint"
    ) as info:
        main(["fit", "--config", str(meal_config), f"--ckpt_path={classifier_ckpt}"])
    one_line(info)
    with pytest.raises(
        CheckpointError, match="is a MealV2 checkpoint and cannot resume a Classifier.*model.init_args.model.checkpoint"
    ):
        main(["validate", "--config", str(tmp_path / "classifier.yaml"), f"--ckpt_path={meal_ckpt}"])


@pytest.mark.parametrize(
    "epochs, message",
    [(0, "trainer.max_epochs is 0: give a positive number"), (-2, "must be a non-negative integer or -1")],
)
def test_a_non_positive_epoch_count_is_refused(tmp_path, monkeypatch, epochs, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(USER_ERRORS, match=message) as info:
        main(["fit", "--config", str(write_meal_config(tmp_path)), f"--trainer.max_epochs={epochs}"])
    one_line(info)


def test_accelerator_gpu_without_a_gpu_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "fit",
            "--config",
            str(write_meal_config(tmp_path)),
            "--trainer.accelerator=gpu",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: ")
        and "torch sees no CUDA GPU on this machine" in result.stderr
    )


@pytest.mark.parametrize(
    "knob, value, message",
    [
        ("model.init_args.lr", 0, "lr is 0.0: it must be positive"),
        ("data.init_args.batch_size", 0, "data.batch_size must be >= 1"),
    ],
)
def test_a_non_positive_lr_or_batch_size_is_refused(tmp_path, monkeypatch, knob, value, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(USER_ERRORS, match=message) as info:
        main(["fit", "--config", str(write_meal_config(tmp_path)), f"--{knob}={value}"])
    one_line(info)


def test_a_training_subset_smaller_than_one_batch_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="has 8 images, 8 per device: fewer than one batch of 16") as info:
        main(["fit", "--config", str(write_meal_config(tmp_path)), "--data.init_args.train_subset=8"])
    one_line(info)


def test_download_without_network_is_one_line_that_says_what_to_do(tmp_path, monkeypatch):
    import datamodules.fashion_mnist as fashion_mnist

    def offline(*args, **kwargs):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error [Errno -3] Temporary failure>"
        )

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(fashion_mnist.datasets, "FashionMNIST", offline)
    data = fashion_mnist.FashionMNISTData(str(tmp_path / "empty"), download=True)
    with pytest.raises(
        DataError, match="Cannot download Fashion-MNIST into .*no network\\? Without network: install Debian's"
    ) as info:
        data.prepare_data()
    one_line(info)


def test_corrupt_image_in_a_folder_names_the_file_through_loader_workers(tmp_path):
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    broken = root / "train" / "class_1" / "2.JPEG"
    broken.write_bytes(b"not a jpeg")
    data = {
        "class_path": "ImageFolderData",
        "init_args": {"data_dir": str(root), "image_size": 32, "batch_size": 4, "num_workers": 1},
    }
    config = write_meal_config_for_data(tmp_path, data, num_classes=3)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line.startswith(f"error: Cannot read image '{broken}'") and last_line.endswith(
        "replace or remove the file."
    )


def test_model_in_chans_against_the_datas_linked_value_says_the_data_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError,
        match="model.init_args.in_chans is 3 but the data gives 1: the data's value is linked into the model and wins",
    ) as info:
        main(["fit", "--config", str(write_meal_config(tmp_path)), "--model.init_args.in_chans=3"])
    one_line(info)
