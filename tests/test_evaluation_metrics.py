"""What every evaluated run reports beside top-1: agreement with the teacher ensemble, NLL and calibration."""

from __future__ import annotations

import pytest
import torch
import yaml
from fixtures import write_meal_config

from cli import main
from errors import ConfigError
from lightning_modules.losses import ensemble_soft_targets


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """By hand: 15 equal-width confidence bins, |accuracy - confidence| weighted by each bin's share."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).float()
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += float(inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs())
    return total


def test_validation_logs_agreement_nll_and_ece_as_computed_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path, cutmix_prob=0.0)
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--trainer.callbacks+=EnsembleAgreement"])
    logged = cli.trainer.callback_metrics
    module = cli.model.eval()
    logits, teachers, labels = [], [], []
    with torch.no_grad():
        for index, (images, batch_labels) in enumerate(cli.datamodule.val_dataloader()):
            if index == 2:  # the tests' limit_val_batches
                break
            logits.append(module(images))
            teachers.append(ensemble_soft_targets(module.teachers(images)).argmax(-1))
            labels.append(batch_labels)
    logits, teachers, labels = torch.cat(logits), torch.cat(teachers), torch.cat(labels)
    assert float(logged["val/agreement"]) == pytest.approx(float((logits.argmax(-1) == teachers).float().mean()))
    nll = torch.nn.functional.cross_entropy(logits, labels)
    assert float(logged["val/loss"]) == pytest.approx(float(nll), rel=1e-4)
    assert float(logged["val/ece"]) == pytest.approx(expected_calibration_error(logits.softmax(-1), labels), abs=1e-5)


def classifier_config(tmp_path, callback: dict) -> str:
    meal = yaml.safe_load(write_meal_config(tmp_path).read_text())
    config = {
        "model": {"class_path": "Classifier", "init_args": {"model": {"name": "cifar_resnet8"}, "lr": 0.05}},
        "data": meal["data"],
        "trainer": {"logger": meal["trainer"]["logger"], "callbacks": [callback]},
    }
    path = tmp_path / "classifier.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path), meal["model"]["init_args"]["teachers"]


def test_a_hard_label_run_measures_agreement_with_the_teachers_it_lists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, teachers = classifier_config(tmp_path, {})
    config, _ = classifier_config(tmp_path, {"class_path": "EnsembleAgreement", "init_args": {"teachers": teachers}})
    cli = main(["fit", "--config", config, "--trainer.max_epochs=1"])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/agreement"]) <= 1.0
    checkpoint = torch.load(next(tmp_path.glob("runs/meal/*/checkpoints/last.ckpt")), weights_only=True)
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])  # no teacher weights saved with it
    cli = main(["test", "--config", config, "--ckpt_path=last"])
    assert {"test/agreement", "test/ece", "test/loss", "test/top1"} <= set(cli.trainer.callback_metrics)


def test_agreement_without_an_ensemble_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = classifier_config(tmp_path, {"class_path": "EnsembleAgreement"})
    with pytest.raises(ConfigError, match="EnsembleAgreement has no ensemble to compare Classifier with") as info:
        main(["fit", "--config", config, "--trainer.max_epochs=1"])
    assert "\n" not in str(info.value)


def test_an_evaluation_runs_the_teachers_once_per_batch_for_their_ceiling_and_the_agreement(tmp_path, monkeypatch):
    from lightning_modules.teachers import FrozenTeacher

    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path, cutmix_prob=0.0)
    calls = []
    forward = FrozenTeacher.forward
    monkeypatch.setattr(FrozenTeacher, "forward", lambda self, images: calls.append(1) or forward(self, images))
    cli = main(["validate", "--config", str(config), "--trainer.callbacks+=EnsembleAgreement"])
    logged = cli.trainer.callback_metrics
    assert {"val/agreement", "val/ensemble_top1", "val/teacher0_top1"} <= set(logged)
    assert len(calls) == 2 * len(cli.model.teachers)  # the tests' 2 val batches, each teacher once per batch
