"""Tiny data sets in the real on-disk formats and tiny weight files, written by the tests themselves."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import lightning_modules  # noqa: F401  (registers the small-image backbones)

ROOT = Path(__file__).resolve().parents[1]

COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40), (200, 40, 200)]


def class_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A noisy image whose dominant color identifies its class, so tiny models can learn it."""
    base = np.array(COLORS[label % len(COLORS)], dtype=np.float32)
    noise = rng.normal(0, 40, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_image_folder(
    root: Path, num_classes: int = 3, train_per_class: int = 8, val_per_class: int = 4, size: int = 40
) -> Path:
    """``root/{train,val}/class_k/*.jpg`` as ImageNet is laid out."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(num_classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(class_image(rng, label, size)).save(folder / f"{index}.JPEG", quality=90)
    return root


def write_cifar(root: Path, variant: str = "cifar10", train_count: int = 32, test_count: int = 16) -> Path:
    """Python-pickle batches in torchvision's CIFAR layout (one train batch file per official name)."""
    rng = np.random.default_rng(0)
    num_classes = 10 if variant == "cifar10" else 100
    label_key = "labels" if variant == "cifar10" else "fine_labels"

    def batch(count: int) -> dict:
        labels = rng.integers(0, 4, size=count) % num_classes
        data = np.stack([class_image(rng, int(y), 32).transpose(2, 0, 1).reshape(-1) for y in labels])
        return {"data": data, label_key: labels.tolist()}

    if variant == "cifar10":
        folder, files = (
            root / "cifar-10-batches-py",
            {**{f"data_batch_{i}": train_count // 5 for i in range(1, 6)}, "test_batch": test_count},
        )
    else:
        folder, files = root / "cifar-100-python", {"train": train_count, "test": test_count}
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in files.items():
        with open(folder / name, "wb") as handle:
            pickle.dump(batch(count), handle)
    return root


def write_weights(path: Path, name: str, num_classes: int, in_chans: int = 3, seed: int = 0) -> Path:
    """A plain state_dict file (or .safetensors, by its name) of a randomly initialized timm model."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file (uint8), gzip-compressed when the name ends in .gz."""
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(root: Path, train_count: int = 64, test_count: int = 32, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files, class-coded images so tiny models learn something."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for split, count in (("train", train_count), ("t10k", test_count)):
        labels = rng.integers(0, 10, size=count)
        images = np.stack([np.clip(rng.normal(20 * y + 30, 20, size=(28, 28)), 0, 255) for y in labels])
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return root


def write_meal_config(tmp_path: Path, data_args: Optional[dict] = None, **model_args) -> Path:
    """A MealV2 config on tiny Fashion-MNIST files with two small local teachers (CutMix on, auto-numbered runs);
    ``data_args`` add to the data's init_args (e.g. ``val_size`` for a held-out val split and a "best" epoch)."""
    data_dir = write_fashion_mnist(tmp_path / "data", train_count=96, test_count=32)
    teachers = local_teachers(tmp_path, ["cifar_resnet8", "cifar_wrn_16_1"], 10, in_chans=1)
    config = {
        "seed_everything": 7,
        "model": {
            "class_path": "MealV2",
            "init_args": {
                "teachers": teachers,
                "student": {"name": "cifar_resnet8"},
                "lr": 0.05,
                "cutmix_prob": 0.5,
                **model_args,
            },
        },
        "data": {
            "class_path": "FashionMNISTData",
            "init_args": {"data_dir": str(data_dir), "batch_size": 16, **(data_args or {})},
        },
        "trainer": {"logger": tensorboard_logger(tmp_path)},
    }
    return write_yaml(tmp_path / "config.yaml", config)


def write_meal_config_for_data(tmp_path: Path, data: dict, num_classes: int) -> Path:
    """A MealV2 config on the given data (RGB) with two small local teachers; runs under tmp_path/runs/meal."""
    teachers = local_teachers(tmp_path, ["test_resnet", "cifar_resnet20"], num_classes)
    config = {
        "model": {
            "class_path": "MealV2",
            "init_args": {"teachers": teachers, "student": {"name": "test_efficientnet"}, "lr": 0.01},
        },
        "data": data,
        "trainer": {"max_epochs": 2, "logger": tensorboard_logger(tmp_path)},
    }
    return write_yaml(tmp_path / "config.yaml", config)


def local_teachers(tmp_path: Path, names: list[str], num_classes: int, in_chans: int = 3) -> list[dict]:
    """Teacher sources with weights written to tmp_path/t<k>.pt (seeds 1, 2, ...)."""
    return [
        {"name": name, "checkpoint": str(write_weights(tmp_path / f"t{k}.pt", name, num_classes, in_chans, seed=k + 1))}
        for k, name in enumerate(names)
    ]


def cli_process(subcommand: str, config: Path, *args: str) -> list[str]:
    """``cli.py SUBCOMMAND --config CONFIG ARGS`` as a separate process runs it (where the process boundary is the test)."""
    return [sys.executable, str(ROOT / "cli.py"), subcommand, "--config", str(config), *args]


def tensorboard_logger(tmp_path: Path) -> dict:
    """Runs under tmp_path/runs/meal/version_N."""
    return {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path / "runs"), "name": "meal"},
    }


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def ddp_config(tmp_path: Path, discriminator: str) -> Path:
    """MEAL V2 on 64 tiny Fashion-MNIST images, one conv teacher, a ViT student (no BatchNorm), 2 epochs of 3 steps."""
    data_dir = write_fashion_mnist(tmp_path / "data", train_count=64, test_count=32)
    teachers = local_teachers(tmp_path, ["cifar_resnet8"], 10, in_chans=1)
    student = {
        "name": "test_vit",
        "model_kwargs": {"img_size": 28, "patch_size": 4},
    }  # no BatchNorm: per-rank stats cannot differ
    config = {
        "seed_everything": 3,
        "model": {
            "class_path": "MealV2",
            "init_args": {"teachers": teachers, "student": student, "lr": 0.05, "discriminator": discriminator},
        },
        "data": {"class_path": "FashionMNISTData", "init_args": {"data_dir": str(data_dir), "augment": False}},
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "limit_train_batches": 3,
            "limit_val_batches": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "x", "version": "v"},
            },
        },
    }
    return write_yaml(tmp_path / "config.yaml", config)


def fit_processes(
    tmp_path: Path, folder: str, devices: int, per_device_batch: int, discriminator: str, *extra: str
) -> Path:
    """``cli.py fit`` of ``ddp_config`` on ``devices`` processes (DDP when more than one, or with ``--trainer.strategy=ddp``
    in ``extra``); every rank saves its batches and student into ``ranks/`` (tests/ddp_probe.py)."""
    run_dir = tmp_path / folder
    run_dir.mkdir()
    probe = '{"class_path": "ddp_probe.SaveRankState", "init_args": {"dirpath": "ranks"}}'
    command = cli_process(
        "fit",
        ddp_config(run_dir, discriminator),
        f"--trainer.devices={devices}",
        f"--data.init_args.batch_size={per_device_batch}",
        f"--trainer.callbacks+={probe}",
        *extra,
    )
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    subprocess.run(command, cwd=run_dir, env=env, check=True, capture_output=True)
    return run_dir


def every_objective() -> list[type]:
    """Every DistillationObjective class, so a new method joins the tests every objective must pass."""
    from lightning_modules.objectives import DistillationObjective
    from reference import every_subclass

    return every_subclass(DistillationObjective)
