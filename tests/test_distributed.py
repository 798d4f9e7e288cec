"""DDP on CPU processes (gloo), precision modes, and TPU/multi-node presets."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from fixtures import fit_processes
from torch.utils.data import DataLoader, TensorDataset

import zoo
from cli import main
from lightning_modules import MealV2

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("discriminator", ["official", "adversarial"])
def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path, discriminator):
    single = fit_processes(tmp_path, "single", devices=1, per_device_batch=16, discriminator=discriminator)
    ddp = fit_processes(tmp_path, "ddp", devices=2, per_device_batch=8, discriminator=discriminator)

    rank0, rank1 = (torch.load(ddp / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    alone = torch.load(single / "ranks" / "rank0.pt", weights_only=True)
    for key, value in rank0["student"].items():
        assert torch.equal(value, rank1["student"][key]), f"ranks disagree on {key}"
        torch.testing.assert_close(
            value, alone["student"][key], rtol=1e-4, atol=1e-5, msg=f"DDP differs from one process on {key}"
        )
    assert not rank0["teacher_training"] and not rank1["teacher_training"]
    for tag in ("val/top1", "val/loss"):  # synchronized over ranks: the same 32 validation images either way
        ddp_value = zoo.read_scalars(ddp / "runs/x/v", tag)[-1]
        assert ddp_value == pytest.approx(zoo.read_scalars(single / "runs/x/v", tag)[-1], rel=1e-4)


def test_ddp_ignores_the_teachers():
    module = MealV2(teachers=["cifar_resnet8"], student={"name": "cifar_resnet8"}, num_classes=10)
    ignored = set(module._ddp_params_and_buffers_to_ignore)
    teacher_names = {f"teachers.{n}" for n, _ in module.teachers.named_parameters()} | {
        f"teachers.{n}" for n, _ in module.teachers.named_buffers()
    }
    assert ignored == teacher_names and not any(n.startswith("student") for n in ignored)


def test_sync_batchnorm_option_converts_the_student_only():
    module = MealV2(
        teachers=["cifar_resnet8"], student={"name": "cifar_resnet8"}, num_classes=10, sync_batchnorm_student=True
    )
    module.trainer = type("FakeTrainer", (), {"world_size": 2})()
    module.setup("fit")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.student.modules())
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.teachers.modules())


@pytest.mark.parametrize(
    "precision", ["32-true", "bf16-mixed", "bf16-true"]
)  # 16-mixed: GPU only (Lightning swaps in bf16 on CPU)
def test_precision_modes_train(precision, tmp_path):
    module = MealV2(teachers=["cifar_resnet8"], student={"name": "cifar_resnet8"}, num_classes=10, in_chans=1)
    loader = DataLoader(TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1, precision=precision, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, loader)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/kd_loss"])


def test_kd_loss_and_soft_targets_stay_fp32_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    module = MealV2(
        teachers=["cifar_resnet8", "cifar_wrn_16_1"], student={"name": "cifar_resnet8"}, num_classes=10, in_chans=1
    )
    images = torch.randn(8, 1, 28, 28)
    reference = module.distillation_losses(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.distillation_losses(images)
    assert mixed["kd"].dtype == torch.float32 and mixed["batch"].mean_probabilities.dtype == torch.float32
    torch.testing.assert_close(mixed["kd"], reference["kd"], rtol=0.02, atol=0.02)
    torch.testing.assert_close(
        mixed["batch"].mean_probabilities, reference["batch"].mean_probabilities, rtol=0, atol=0.02
    )


@pytest.mark.parametrize("preset", sorted((ROOT / "configs" / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_parse_on_top_of_a_recipe(preset, tmp_path, monkeypatch, offline_hub, imagenet_1000):
    """Parsed and validated on top of the paper's recipe; instantiated here with the CPU swapped in."""
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "configs" / "imagenet" / "resnet50_from_senet154+resnet152s.yaml"
    preset_trainer = yaml.safe_load(preset.read_text())["trainer"]
    cli = main(
        [
            "--config",
            str(recipe),
            "--config",
            str(preset),
            f"--data.init_args.data_dir={imagenet_1000}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.num_nodes=1",
            "--trainer.strategy=auto",
        ],
        run=False,
    )
    assert cli.config.trainer.precision == preset_trainer["precision"]
    assert cli.trainer.precision == preset_trainer["precision"]
