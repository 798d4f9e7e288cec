"""Teacher and student weights from local files of every supported kind, and clear errors."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import timm
import torch
from fixtures import write_weights
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import Classifier, MealV2
from models.loading import ModelLoadingError, ModelSource, create_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plain_state_dict_and_safetensors_load_bit_exactly_also_from_a_compiled_or_ddp_model(tmp_path):
    path = write_weights(tmp_path / "w.pth", "cifar_resnet20", 7)
    reference = timm.create_model("cifar_resnet20", num_classes=7)
    reference.load_state_dict(torch.load(path))
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    prefixes = ("_orig_mod.", "module._orig_mod.", "_orig_mod.module.")  # compiled; compiled in DDP; DDP of compiled
    for prefix in prefixes:
        torch.save({prefix + k: v for k, v in reference.state_dict().items()}, tmp_path / f"{prefix}pth")
    for file in (path, tmp_path / "w.safetensors", *(tmp_path / f"{prefix}pth" for prefix in prefixes)):
        model, _ = create_model(ModelSource("cifar_resnet20", checkpoint=str(file)), num_classes=7)
        assert _same_weights(model, reference)


def test_classifier_checkpoint_loads_as_teacher_with_its_normalization(tmp_path):
    mean, std = (0.3, 0.3, 0.3), (0.2, 0.2, 0.2)
    classifier = Classifier(model={"name": "cifar_resnet20"}, num_classes=5, data_mean=mean, data_std=std)
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(classifier, loader)
    trainer.save_checkpoint(tmp_path / "classifier.ckpt")

    meal = MealV2(
        teachers=[{"name": "cifar_resnet20", "checkpoint": str(tmp_path / "classifier.ckpt")}],
        student={"name": "cifar_resnet20", "checkpoint": str(tmp_path / "classifier.ckpt")},
        num_classes=5,
    )
    teacher = meal.teachers.members[0]
    assert _same_weights(teacher.model, classifier.model) and _same_weights(meal.student, classifier.model)
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(teacher.scale.flatten(), imagenet_std / torch.tensor(std))
    torch.testing.assert_close(teacher.shift.flatten(), (imagenet_mean - torch.tensor(mean)) / torch.tensor(std))


def test_exported_folder_gives_a_teacher_its_normalization(tmp_path):
    """timm's export format (the zoo, exported students): mean/std come from the config.json beside the weights."""
    model, _ = create_model(ModelSource("cifar_resnet8"), num_classes=4, in_chans=1)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    save_config_for_hf(
        model, str(tmp_path / "config.json"), data_config={"mean": (0.25,), "std": (0.5,), "input_size": (1, 28, 28)}
    )

    meal = MealV2(
        teachers=[{"name": "cifar_resnet8", "checkpoint": str(tmp_path / "model.safetensors")}],
        student={"name": "cifar_resnet8"},
        num_classes=4,
        in_chans=1,
        data_mean=(0.5,),
        data_std=(0.25,),
    )
    teacher = meal.teachers.members[0]
    assert teacher.renormalize and _same_weights(teacher.model, model)
    torch.testing.assert_close(teacher.scale.flatten(), torch.tensor([0.25 / 0.5]))
    torch.testing.assert_close(teacher.shift.flatten(), torch.tensor([(0.5 - 0.25) / 0.5]))


def test_meal_checkpoint_student_loads_as_a_new_student(tmp_path):
    meal = MealV2(teachers=["cifar_resnet20"], student={"name": "test_efficientnet"}, num_classes=5)
    torch.save(
        {"state_dict": meal.state_dict(), "hyper_parameters": dict(meal.hparams), "pytorch-lightning_version": "2.6"},
        tmp_path / "m.ckpt",
    )
    student, _ = create_model(ModelSource("test_efficientnet", checkpoint=str(tmp_path / "m.ckpt")), num_classes=5)
    assert _same_weights(student, meal.student)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ModelLoadingError, match=r"Unknown timm model 'resnet5O'.*resnet50"):
        create_model(ModelSource("resnet5O"), num_classes=10)


def test_checkpoint_with_another_head_is_refused(tmp_path):
    path = write_weights(tmp_path / "w.pt", "cifar_resnet20", 10)
    with pytest.raises(
        ModelLoadingError, match=r"'fc.weight' has shape \(10, 64\).*\(100, 64\).*num_classes.*set new_head: true"
    ):
        create_model(ModelSource("cifar_resnet20", checkpoint=str(path)), num_classes=100)


def test_a_teacher_checkpoint_with_another_head_is_told_to_fine_tune_not_new_head(tmp_path):
    path = write_weights(tmp_path / "w.pt", "cifar_resnet20", 5)
    with pytest.raises(
        ModelLoadingError, match=r"a teacher must be trained for the data's classes: fine-tune it"
    ) as info:
        create_model(ModelSource("cifar_resnet20", checkpoint=str(path)), num_classes=10, keep_pretrained_head=True)
    assert "set new_head: true beside" not in str(info.value)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = write_weights(tmp_path / "w.pt", "cifar_resnet20", 10)
    with pytest.raises(ModelLoadingError, match="does not fit 'test_resnet'.*missing keys"):
        create_model(ModelSource("test_resnet", checkpoint=str(path)), num_classes=10)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadingError, match="corrupt or not a weights file") as info:
        create_model(ModelSource("cifar_resnet20", checkpoint=str(path)), num_classes=10)
    assert "\n" not in str(info.value)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_weights_file_whose_pickle_would_run_code_is_refused_naming_the_global(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"fc.weight": torch.zeros(1), "hook": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadingError, match=r"GLOBAL (posix|os)\.system.*corrupt or not a weights file") as info:
        create_model(ModelSource("cifar_resnet20", checkpoint=str(tmp_path / "evil.pt")), num_classes=10)
    assert "\n" not in str(info.value) and not (tmp_path / "pwned").exists()


def test_foreign_lightning_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "pytorch-lightning_version": "2.6"}, path)
    with pytest.raises(ModelLoadingError, match="from another project"):
        create_model(ModelSource("cifar_resnet20", checkpoint=str(path)), num_classes=10)


def test_missing_checkpoint_file_is_refused(tmp_path):
    with pytest.raises(ModelLoadingError, match="does not exist"):
        create_model(ModelSource("cifar_resnet20", checkpoint=str(tmp_path / "nope.pt")), num_classes=10)


def test_weights_that_differ_from_the_manifest_beside_them_are_refused_by_the_cli(tmp_path, monkeypatch):
    """A zoo teacher swapped for other weights of the same architecture: the manifest's sha256 catches it."""
    import json

    from fixtures import write_meal_config

    from cli import main

    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path, cutmix_prob=0.0)
    manifest = {"weights": "t0.pt", "sha256": "0" * 64}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ModelLoadingError, match=r"t0.pt' do not match the sha256 in .*manifest.json' .*restore them"
    ) as info:
        main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    assert "\n" not in str(info.value)
    manifest["sha256"] = __import__("zoo").sha256(tmp_path / "t0.pt")  # the recorded weights load
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    main(["--config", str(config)], run=False)


def classifier_config(tmp_path, model: dict):
    """A Classifier fit on the tiny Fashion-MNIST files (10 classes)."""
    import yaml
    from fixtures import tensorboard_logger, write_fashion_mnist

    data_dir = str(write_fashion_mnist(tmp_path / "d"))
    data = {"class_path": "FashionMNISTData", "init_args": {"data_dir": data_dir, "batch_size": 16}}
    config = {
        "model": {"class_path": "Classifier", "init_args": {"model": model}},
        "data": data,
        "trainer": {"logger": tensorboard_logger(tmp_path)},
    }
    path = tmp_path / "classifier.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_classifier_fine_tunes_a_checkpoint_of_another_class_count_with_new_head(tmp_path, monkeypatch):
    from cli import main

    monkeypatch.chdir(tmp_path)
    weights = write_weights(tmp_path / "five.pt", "cifar_resnet8", 5, in_chans=1)
    model = {"name": "cifar_resnet8", "checkpoint": str(weights), "new_head": True}
    cli = main(["--config", str(classifier_config(tmp_path, model))], run=False)
    loaded, stored = cli.model.model.state_dict(), torch.load(weights, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in stored.items() if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (10, stored["fc.weight"].shape[1])
    main(["fit", "--config", str(classifier_config(tmp_path, model)), "--trainer.max_epochs=1"])


def test_a_teacher_with_a_new_head_is_refused():
    with pytest.raises(ModelLoadingError, match="a teacher with a random head teaches nothing"):
        create_model(ModelSource("cifar_resnet8", new_head=True), num_classes=10, keep_pretrained_head=True)


def test_hub_weights_without_network_stop_in_one_line_at_once(tmp_path):
    """Not cached and the hub unreachable (here: a closed local port as the hub): one line before any retry."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = classifier_config(tmp_path, {"name": "resnet18.a1_in1k", "pretrained": True})
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
    result = subprocess.run(
        [sys.executable, str(root / "cli.py"), "fit", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Pretrained weights of 'resnet18.a1_in1k' are not in the local cache and 127.0.0.1 cannot be reached "
        "(Connection refused): download them once with network (timm caches them in ~/.cache/huggingface (HF_HOME)), "
        "or give a local weights file as checkpoint: PATH."
    )
