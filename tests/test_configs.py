"""Every recipe in configs/ parses and instantiates (hub downloads replaced by tiny local models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fixtures import write_cifar, write_fashion_mnist, write_weights

from callbacks import FiniteLossGuard, SoftLabelWriter
from cli import main
from datamodules import FashionMNISTData, ImageFolderData
from datamodules.soft_labels import SoftLabelCache
from errors import ConfigError
from lightning_modules import Classifier, MealV2

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "presets")  # presets: test_distributed
CONFIGS = [  # a data-only base is tested through its overlays
    p for p in ALL if "model" in yaml.safe_load(p.read_text()) or p.read_text().startswith("# Overlay on ")
]


def _checkpoint_paths(config: dict) -> list[tuple[str, str]]:
    init = config["model"]["init_args"]
    sources = init.get("teachers", []) + [init.get("student") or init.get("model")]
    return [(s["name"], s["checkpoint"]) for s in sources if s.get("checkpoint")]


def overlaid_configs(path: Path) -> list[Path]:
    """An overlay names its recipe on its first line (``# Overlay on configs/...yaml: ...``): recipe first, then the overlay."""
    first = path.read_text().splitlines()[0]
    if not first.startswith("# Overlay on "):
        return [path]
    return [ROOT / first.removeprefix("# Overlay on ").split(":")[0], path]


def merged(paths: list[Path]) -> dict:
    """The YAML files merged as jsonargparse merges them (dicts key by key, anything else replaced)."""

    def merge(base, update):
        if isinstance(base, dict) and isinstance(update, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in update.items()}}
        return update

    config: dict = {}
    for path in paths:
        config = merge(config, yaml.safe_load(path.read_text()))
    return config


def test_every_data_only_base_is_used_by_an_overlay():
    bases = {p for p in ALL if p not in CONFIGS}
    assert bases and bases <= {overlaid_configs(p)[0] for p in CONFIGS if len(overlaid_configs(p)) == 2}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_config_parses_and_instantiates(path, tmp_path, monkeypatch, offline_hub, imagenet_1000):
    monkeypatch.chdir(tmp_path)
    paths = overlaid_configs(path)
    config = merged(paths)
    data_class = config["data"]["class_path"]
    in_chans = 3
    if data_class == "ImageFolderData":
        data_dir, num_classes = imagenet_1000, 1000
    elif data_class == "CIFARData":
        data_dir, num_classes = write_cifar(tmp_path / "cifar", config["data"]["init_args"]["variant"]), 100
    elif data_class == "FashionMNISTData":
        data_dir, num_classes, in_chans = write_fashion_mnist(tmp_path / "fashion"), 10, 1
    else:
        pytest.fail(f"no fixture for {data_class}")
    for name, checkpoint in _checkpoint_paths(config):
        write_weights(tmp_path / checkpoint, name, num_classes, in_chans=in_chans)

    config_args = [arg for p in paths for arg in ("--config", str(p))]
    cli = main(
        [*config_args, f"--data.init_args.data_dir={data_dir}", "--trainer.devices=1", "--trainer.strategy=auto"],
        run=False,
    )
    assert cli.model.hparams.num_classes == num_classes
    if config["model"]["class_path"] == "MealV2":
        expected_hub = [t["name"] for t in config["model"]["init_args"]["teachers"] if t.get("pretrained")]
        assert offline_hub[: len(expected_hub)] == expected_hub
        assert len(cli.model.teachers) == len(config["model"]["init_args"]["teachers"])
        assert cli.model.hparams.discriminator == config["model"]["init_args"].get("discriminator", "official")
    if "logger" in config["trainer"]:
        assert cli.trainer.logger.name == config["trainer"]["logger"]["init_args"]["name"]


MEAL = {"teachers": [{"name": "cifar_resnet8"}], "student": {"name": "cifar_resnet8"}}


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MealV2(**MEAL, momentum=1.5), "momentum is 1.5: it must be between 0 and 1"),
        (lambda: MealV2(**MEAL, cutmix_prob=-0.1), "cutmix_prob is -0.1: it must be between 0 and 1"),
        (lambda: MealV2(**MEAL, weight_decay=-1e-4), "weight_decay is -0.0001: it must be 0 or more"),
        (lambda: MealV2(**MEAL, hard_label_weight=-1), "hard_label_weight is -1: it must be 0 or more"),
        (lambda: MealV2(**MEAL, objective_weight=0), "objective_weight is 0: it must be positive"),
        (lambda: Classifier({"name": "cifar_resnet8"}, label_smoothing=2), "label_smoothing is 2: it must be between"),
        (lambda: ImageFolderData("x", image_size=0), "image_size is 0: it must be positive"),
        (lambda: ImageFolderData("x", crop_pct=1.5), "crop_pct is 1.5: it must be between 0 and 1"),
        (lambda: ImageFolderData("x", scale=(0.9, 0.1)), r"scale \(0.9, 0.1\) and ratio .* low <= high"),
        (lambda: SoftLabelCache("c", crops=0), "crops is 0: it must be positive"),
        (lambda: SoftLabelCache("c", shard=2, num_shards=2), "shard is 2: it must be 0 .. num_shards - 1"),
        (lambda: SoftLabelWriter(commit_every=0), "commit_every is 0: it must be positive"),
        (lambda: FiniteLossGuard(check_every_n_steps=-1), "check_every_n_steps is -1: it must be 0 or more"),
        (lambda: FashionMNISTData(train_subset=0), "train_subset is 0: it must be positive"),
    ],
)
def test_an_argument_outside_its_range_is_refused_in_one_line_where_it_is_received(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert "\n" not in str(info.value)
