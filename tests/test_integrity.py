"""Checked files: a damaged checkpoint or export is refused where it is read, naming the newest intact file of its run."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from fixtures import write_meal_config

from cli import main
from datamodules import DataError
from models.loading import ModelLoadingError
from models.onnx_export import ExportInputError
from models.onnx_export import main as onnx_main
from storage.atomic_files import DamagedFileError
from storage.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def damage_largest_tensor(checkpoint: Path, count: int = 4000) -> None:
    """Overwrite ``count`` bytes inside the largest tensor record of a checkpoint, leaving the archive readable."""
    with zipfile.ZipFile(checkpoint) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    with open(checkpoint, "r+b") as handle:
        handle.seek(member.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
        handle.seek(member.header_offset + 30 + name_length + extra_length + 64)
        handle.write(b"\x55" * min(count, member.file_size - 64))


def damage_safetensors(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-200:-100] = b"\x55" * 100
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch MEAL V2 run with a held-out val split: last.ckpt, best-*.ckpt, student/{last,best}."""
    root = tmp_path_factory.mktemp("run")
    config = write_meal_config(root, data_args={"val_size": 16})
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    finally:
        os.chdir(cwd)
    return root, config, root / "runs/meal/version_0"


def copy_run(finished_run, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    root, config, run = finished_run
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    copied = tmp_path / config.name
    copied.write_text(copied.read_text().replace(str(root), str(tmp_path)))  # the copy's data and runs
    return copied, tmp_path / run.relative_to(root)


@pytest.mark.parametrize("subcommand", ["validate", "fit"])
def test_a_damaged_checkpoint_is_refused_naming_the_newest_intact_one(finished_run, tmp_path, monkeypatch, subcommand):
    config, run = copy_run(finished_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    damage_largest_tensor(run / "checkpoints/last.ckpt")
    best = next(run.glob("checkpoints/best-*.ckpt"))
    with pytest.raises(DamagedFileError, match=r"last.ckpt' is damaged \(.* fails its checksum\)") as info:
        main([subcommand, "--config", str(config), "--ckpt_path=last", "--trainer.max_epochs=3"])
    assert "\n" not in str(info.value) and f"the newest intact checkpoint of this run is '{best}'" in str(info.value)


def test_an_intact_checkpoint_passes_its_checksums(finished_run, tmp_path, monkeypatch):
    config, run = copy_run(finished_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    cli = main(["validate", "--config", str(config), "--ckpt_path=last"])
    assert cli.trainer.callback_metrics["val/top1"] >= 0


def test_a_damaged_export_is_refused_when_loaded_as_weights(finished_run, tmp_path, monkeypatch):
    config, run = copy_run(finished_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    damage_safetensors(run / "student/last/model.safetensors")
    weights = ["--model", "Classifier", "--model.model.name", "cifar_resnet8"]
    weights += ["--model.model.checkpoint", str(run / "student/last/model.safetensors")]
    with pytest.raises(DamagedFileError, match="tensors differ from the sha256 in its header") as info:
        main(["validate", "--config", str(config), *weights])
    assert "the newest intact checkpoint of this run is '" in str(info.value)


def test_ckpt_path_hpc_with_a_bad_file_is_one_line(finished_run, tmp_path, monkeypatch):
    config, _ = copy_run(finished_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="--ckpt_path hpc: no hpc_ckpt_N.ckpt in"):
        main(["fit", "--config", str(config), "--ckpt_path=hpc"])
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"hpc_ckpt_3.ckpt' cannot be read"):
        main(["fit", "--config", str(config), "--ckpt_path=hpc"])


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "has no config.json"),
        ("truncated", "config.json' cannot be read (JSONDecodeError): it is damaged"),
        ("no_pretrained_cfg", "lacks pretrained_cfg.input_size"),
        ("other_architecture", "do not fit a cifar_wrn_16_1"),
        ("damaged_weights", "is damaged (its tensors differ"),
    ],
)
def test_the_onnx_command_refuses_a_broken_export_folder_in_one_line(finished_run, tmp_path, breakage, message):
    _, run = copy_run(finished_run, tmp_path)
    folder = run / "student/last"
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    if breakage == "missing":
        config_file.unlink()
    elif breakage == "truncated":
        config_file.write_text(config_file.read_text()[:40])
    elif breakage == "no_pretrained_cfg":
        config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "pretrained_cfg"}))
    elif breakage == "other_architecture":
        config_file.write_text(json.dumps({**config, "architecture": "cifar_wrn_16_1"}))
    else:
        damage_safetensors(folder / "model.safetensors")
    with pytest.raises((ExportInputError, DamagedFileError, DataError)) as info:
        onnx_main([str(folder)])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_onnx_command_on_a_bad_checkpoint_exits_with_one_line(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"\x00" * 100)
    command = [sys.executable, "-m", "models.onnx_export", str(bad), "--image-size", "28"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: Cannot read checkpoint '{bad}' (") and "corrupt or not a weights file" in line


def test_weights_with_a_broken_safetensors_header_are_one_line(tmp_path):
    from models.loading import read_state_dict

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelLoadingError, match="Cannot read weights .* it is corrupt or not a safetensors file"):
        read_state_dict(bad)


def test_a_write_that_fails_for_another_reason_than_the_disk_is_not_called_a_disk_problem(tmp_path):
    from storage.atomic_files import atomic_write

    with pytest.raises(AttributeError, match="pickle"):
        atomic_write(tmp_path / "x.pt", lambda name: torch.save({"f": lambda: 1}, name))
    assert list(tmp_path.iterdir()) == []  # nor a partial file left
