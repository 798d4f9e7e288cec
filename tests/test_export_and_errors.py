"""The exported student, evaluation of each artifact, and one-line errors on bad input."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import timm
import torch
from fixtures import write_fashion_mnist, write_weights
from test_resume import write_config

from callbacks import FiniteLossGuard, NonFiniteTrainingError
from cli import main
from errors import WriteError, reason
from lightning_modules import MealV2
from models.loading import ModelLoadingError, ModelSource, create_model
from storage.atomic_files import atomic_write


def test_exported_student_loads_back_through_timm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(write_config(tmp_path, data_args={"val_size": 16})), "--trainer.max_epochs=1"])
    folder = tmp_path / "runs/meal/version_0/student"
    expected = {k: v.contiguous() for k, v in cli.model.student.state_dict().items()}
    config = json.loads((folder / "last" / "config.json").read_text())
    assert config["architecture"] == "cifar_resnet8" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.286]) and config["pretrained_cfg"][
        "std"
    ] == pytest.approx([0.353])

    by_file = timm.create_model(
        "cifar_resnet8",
        pretrained=True,
        num_classes=10,
        in_chans=1,
        pretrained_cfg_overlay=dict(file=str(folder / "last" / "model.safetensors")),
    )
    by_folder = timm.create_model(f"local-dir:{folder / 'last'}", pretrained=True)
    for model in (by_file, by_folder):
        state = model.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert (folder / "best" / "model.safetensors").is_file()


def test_validate_evaluates_checkpoint_exported_student_and_ensemble_alike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/version_0"
    from_checkpoint = main(
        ["validate", "--config", str(config), f"--ckpt_path={run / 'checkpoints/last.ckpt'}"]
    ).trainer.callback_metrics
    exported = main(
        [
            "validate",
            "--config",
            str(config),
            "--model=Classifier",
            "--model.model.name=cifar_resnet8",
            f"--model.model.checkpoint={run / 'student/last/model.safetensors'}",
        ]
    ).trainer.callback_metrics
    assert float(exported["val/top1"]) == pytest.approx(float(from_checkpoint["val/top1"]))
    assert float(exported["val/loss"]) == pytest.approx(float(from_checkpoint["val/loss"]), rel=1e-5)
    ensemble_only = main(["validate", "--config", str(config)]).trainer.callback_metrics
    assert float(ensemble_only["val/ensemble_top1"]) == pytest.approx(float(from_checkpoint["val/ensemble_top1"]))


def test_pretrained_teacher_with_another_head_is_refused_before_download():
    with pytest.raises(ModelLoadingError, match="pretrained weights for 1000 classes but the data has 10"):
        MealV2(
            teachers=[{"name": "resnet18.tv_in1k", "pretrained": True}],
            student={"name": "cifar_resnet8"},
            num_classes=10,
        )


def test_teacher_student_and_data_class_counts_must_agree(tmp_path):
    path = write_weights(tmp_path / "teacher.pt", "cifar_resnet8", 100)
    with pytest.raises(ModelLoadingError, match="fc.weight.*num_classes"):
        MealV2(
            teachers=[{"name": "cifar_resnet8", "checkpoint": str(path)}],
            student={"name": "cifar_resnet8"},
            num_classes=10,
        )


def test_images_with_the_wrong_channel_count_are_refused_in_one_line():
    module = MealV2(teachers=["cifar_resnet8"], student={"name": "cifar_resnet8"}, num_classes=10, in_chans=3)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 28, 28\).*\[batch, 3, H, W\]"):
        module.distillation_losses(torch.zeros(2, 1, 28, 28))


def test_unknown_teacher_name_fails_at_cli_parse_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadingError, match="Unknown timm model 'cifar_resnet9'.*cifar_resnet8"):
        main(["fit", "--config", str(write_config(tmp_path)), "--model.student.name=cifar_resnet9"])


class _ExplodingMeal(MealV2):
    """Loss turns NaN from global step 3 on."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.global_step >= 3 else loss


def test_non_finite_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", train_count=64, test_count=16)
    from datamodules import FashionMNISTData

    module = _ExplodingMeal(teachers=["cifar_resnet8"], student={"name": "cifar_resnet8"}, num_classes=10, in_chans=1)
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=2
    )
    trainer = pl.Trainer(max_epochs=2, logger=False, callbacks=[checkpoint, FiniteLossGuard(check_every_n_steps=50)])
    with pytest.raises(
        NonFiniteTrainingError, match=r"non-finite at step 4 .*Last good checkpoint: .*last.ckpt"
    ) as info:
        trainer.fit(module, datamodule=FashionMNISTData(str(data), batch_size=16))
    assert "\n" not in str(info.value)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_non_finite_loss_names_the_newest_checkpoint_of_the_clis_two_checkpoint_callbacks(tmp_path):
    """As the CLI sets them up: the best-val callback first (it has no last.ckpt), LastCheckpoint second."""
    data = write_fashion_mnist(tmp_path / "data", train_count=64, test_count=16)
    from callbacks import LastCheckpoint
    from datamodules import FashionMNISTData

    class ExplodingInEpoch2(_ExplodingMeal):
        def training_step(self, batch, batch_idx):
            loss = MealV2.training_step(self, batch, batch_idx)
            return loss * math.nan if self.global_step >= 5 else loss

    module = ExplodingInEpoch2(
        teachers=["cifar_resnet8"], student={"name": "cifar_resnet8"}, num_classes=10, in_chans=1
    )
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/top1", mode="max", filename="best")
    last = LastCheckpoint(dirpath=tmp_path / "ckpt", monitor="step", mode="max", filename="last")
    trainer = pl.Trainer(max_epochs=2, logger=False, callbacks=[best, last, FiniteLossGuard(check_every_n_steps=50)])
    with pytest.raises(
        NonFiniteTrainingError, match=r"non-finite at step 6 .*Last good checkpoint: .*ckpt/(last|best)\.ckpt"
    ):
        trainer.fit(module, datamodule=FashionMNISTData(str(data), batch_size=16))
    assert trainer.checkpoint_callback is best and best.last_model_path == ""  # what the message used to read


def test_missing_student_init_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadingError, match="does not exist: fix the path or train that model first"):
        create_model(ModelSource("cifar_resnet8", checkpoint=str(tmp_path / "init.ckpt")), num_classes=10)


@pytest.mark.parametrize("error", [OSError(), RuntimeError(""), ValueError("  \n "), KeyError()])
def test_error_handlers_give_one_line_for_an_error_without_a_message(tmp_path, error):
    assert reason(error) == type(error).__name__

    def write(_name):
        raise OSError() from error  # the disk failed and said nothing

    with pytest.raises(WriteError, match=r"Cannot write 'f.json' into .* \(OSError\)"):
        atomic_write(tmp_path / "f.json", write)
    assert list(tmp_path.iterdir()) == []  # no partial file left
