"""Precision paths on a CUDA GPU (marked ``gpu``: skipped where torch sees none, so CI on CPUs skips them)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from fixtures import fit_processes
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ChannelsLast, FastTeachers
from lightning_modules import MealV2
from lightning_modules.losses import ensemble_soft_targets

pytestmark = pytest.mark.gpu


def tiny_meal(**kwargs) -> MealV2:
    torch.manual_seed(0)
    return MealV2(
        teachers=["cifar_resnet8", "cifar_wrn_16_1"], student={"name": "cifar_resnet8"}, num_classes=10, **kwargs
    )


def loader(count: int = 16, size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(count, 3, size, size), torch.randint(0, 10, (count,))), batch_size=8)


def fit(module: pl.LightningModule, precision: str, tmp_path, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(module, loader(), loader())
    return trainer


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true"])
def test_fit_on_gpu_in_every_precision_keeps_a_finite_fp32_loss(precision, tmp_path):
    module = tiny_meal()
    trainer = fit(module, precision, tmp_path)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/kd_loss"])
    teacher_dtypes = {p.dtype for p in module.teachers.parameters()}
    assert teacher_dtypes == ({torch.bfloat16} if precision == "bf16-true" else {torch.float32})


def test_channels_last_on_gpu(tmp_path):
    module = tiny_meal()
    fit(module, "bf16-mixed", tmp_path, [ChannelsLast()])
    conv = module.student.conv1.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)


def test_soft_targets_and_kd_loss_stay_fp32_under_cuda_autocast():
    module = tiny_meal().cuda()
    images = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = module.distillation_losses(images)
    assert out["batch"].mean_probabilities.dtype == torch.float32 and out["kd"].dtype == torch.float32
    with torch.no_grad():
        reference = module.distillation_losses(images)
    torch.testing.assert_close(out["kd"], reference["kd"], rtol=0.02, atol=0.02)


def test_compiled_bf16_fast_teachers_agree_with_fp32_teachers_on_gpu(tmp_path):
    module = tiny_meal()
    images = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        reference = ensemble_soft_targets(module.teachers(images)).cuda()
    fit(module, "bf16-mixed", tmp_path, [FastTeachers(precision="bf16", compile=True)])
    with torch.no_grad():
        fast = ensemble_soft_targets(module.teachers(images.cuda()))
    kl = (reference * (reference.log() - fast.log())).sum(-1).mean()
    assert fast.dtype == torch.float32 and float(kl) < 1e-2
    assert (fast.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95


def test_imagenet_recipe_architectures_fit_a_few_steps_on_random_data(tmp_path):
    """resnet50 from senet154 + resnet152s (random weights; the hub is not needed) at a small size."""
    torch.manual_seed(0)
    module = MealV2(teachers=["senet154", "resnet152s"], student={"name": "resnet50"}, num_classes=1000)
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False, enable_checkpointing=False,
        default_root_dir=tmp_path, limit_val_batches=0, callbacks=[ChannelsLast(), FastTeachers()],
    )  # fmt: skip
    images = DataLoader(TensorDataset(torch.randn(16, 3, 128, 128), torch.randint(0, 1000, (16,))), batch_size=8)
    trainer.fit(module, images)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/kd_loss"])


def test_a_cached_fit_keeps_the_teachers_in_host_memory(tmp_path):
    """From the soft-label cache no teacher runs: their weights stay off the GPU (one rank's memory for nothing)."""
    module = tiny_meal(soft_targets="cached")
    soft, logits = torch.softmax(torch.randn(16, 10), -1), torch.randn(16, 10)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)), soft, logits)
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert trainer.global_step == 2 and module.student.conv1.weight.is_cuda
    assert not any(p.is_cuda for p in module.teachers.parameters())


def test_ddp_over_nccl_trains_the_same_student_on_every_gpu(tmp_path):
    """DDP on the GPUs there are (up to 2; one GPU still runs the NCCL process group): every rank ends with the
    same student, the teachers stay in eval mode, and the run says it used NCCL."""
    devices = min(2, torch.cuda.device_count())
    run = fit_processes(
        tmp_path, "nccl", devices, 8, "official", "--trainer.accelerator=gpu", "--trainer.strategy=ddp",
        "--trainer.precision=bf16-mixed",
    )  # fmt: skip
    ranks = [torch.load(run / "ranks" / f"rank{r}.pt", weights_only=True) for r in range(devices)]
    assert all(state["backend"] == "nccl" for state in ranks)
    for key, value in ranks[0]["student"].items():
        assert torch.isfinite(value.float()).all()
        assert all(torch.equal(value, other["student"][key]) for other in ranks[1:]), f"ranks disagree on {key}"
    assert not any(state["teacher_training"] for state in ranks)
