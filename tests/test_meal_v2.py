"""MealV2's training step: wiring of teachers, student and discriminator, and frozen teachers."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import MealV2
from lightning_modules.losses import discriminator_loss

NUM_CLASSES = 5
DATA_MEAN, DATA_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_meal(**kwargs) -> MealV2:
    torch.manual_seed(0)
    defaults = dict(
        teachers=[{"name": "test_resnet", "mean": [0.5] * 3, "std": [0.5] * 3}, {"name": "cifar_resnet20"}],
        student={"name": "test_efficientnet"},
        num_classes=NUM_CLASSES,
        data_mean=DATA_MEAN,
        data_std=DATA_STD,
    )
    return MealV2(**{**defaults, **kwargs})


def batches(count: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    return images, labels


def test_distillation_losses_match_the_method_computed_by_hand():
    module = tiny_meal()
    images, _ = batches(4)
    out = module.distillation_losses(images)

    # Teacher 0 declares mean=std=0.5: its input is re-normalized from the data's ImageNet statistics.
    mean, std = torch.tensor(DATA_MEAN).view(1, 3, 1, 1), torch.tensor(DATA_STD).view(1, 3, 1, 1)
    raw = images * std + mean
    with torch.no_grad():
        t0 = module.teachers.members[0].model((raw - 0.5) / 0.5)
        t1 = module.teachers.members[1].model(images)  # declares nothing: sees the data as normalized
    probs = (t0.softmax(-1) + t1.softmax(-1)) / 2
    student = module.student(images)
    kd = -(probs * student.log_softmax(-1)).sum(-1).mean()
    d_out = module.discriminator(torch.cat([student, (t0 + t1) / 2]))
    d = discriminator_loss(d_out)

    torch.testing.assert_close(out["kd"], kd)
    torch.testing.assert_close(out["discriminator"], d)
    torch.testing.assert_close(out["loss"], kd + d)


def test_gradients_are_identical_when_labels_are_permuted():
    images, labels = batches(8)
    grads = []
    for batch_labels in (labels, labels.roll(3)):
        module = tiny_meal()
        loss = module.distillation_losses(images, batch_labels)["loss"]
        loss.backward()
        grads.append([p.grad.clone() for p in module.student.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_objective_and_hard_label_weights_scale_their_terms():
    images, labels = batches(8)
    plain = tiny_meal().distillation_losses(images, labels)
    weighed = tiny_meal(objective_weight=9.0, hard_label_weight=0.5).distillation_losses(images, labels)
    ce = torch.nn.functional.cross_entropy(plain["batch"].student_logits, labels)
    torch.testing.assert_close(weighed["kd"], 9.0 * plain["kd"])
    torch.testing.assert_close(weighed["loss"], plain["loss"] + 8.0 * plain["kd"] + 0.5 * ce)


def test_discriminator_receives_gradients():
    module = tiny_meal()
    images, _ = batches(8)
    module.distillation_losses(images)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.discriminator.layers[0].parameters())


def test_adversarial_mode_reverses_the_discriminator_gradient_into_the_student():
    images, _ = batches(8)
    grads = {}
    for mode in ("official", "adversarial"):
        module = tiny_meal(discriminator=mode)
        module.distillation_losses(images)["discriminator"].backward()
        grads[mode] = (
            [p.grad.clone() for p in module.student.parameters()],
            [p.grad.clone() for p in module.discriminator.parameters()],
        )
    for official, adversarial in zip(grads["official"][0], grads["adversarial"][0], strict=True):
        torch.testing.assert_close(adversarial, -official)
    for official, adversarial in zip(grads["official"][1], grads["adversarial"][1], strict=True):
        torch.testing.assert_close(adversarial, official)


def test_no_discriminator_mode_trains_on_kd_only():
    module = tiny_meal(discriminator="none")
    out = module.distillation_losses(batches(4)[0])
    assert module.discriminator is None
    torch.testing.assert_close(out["loss"], out["kd"])


def test_teachers_have_no_trainable_parameters_and_ignore_train_mode():
    module = tiny_meal()
    module.train()
    assert not any(p.requires_grad for p in module.teachers.parameters())
    assert not any(m.training for m in module.teachers.modules())
    assert module.student.training


class _ModeProbe(pl.Callback):
    """Records the teachers' and student's mode inside every training step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((any(m.training for m in module.teachers.modules()), module.student.training))


def _loader(count: int = 16, seed: int = 0, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(*batches(count, seed)), batch_size=4, shuffle=shuffle)


def test_teachers_stay_bit_identical_and_in_eval_mode_through_fit_validate_test(tmp_path):
    module = tiny_meal()
    before = copy.deepcopy({k: v.clone() for k, v in module.teachers.state_dict().items()})
    student_before = [p.clone() for p in module.student.parameters()]
    disc_before = [p.clone() for p in module.discriminator.parameters()]
    probe = _ModeProbe()
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[probe], logger=False, default_root_dir=tmp_path, enable_checkpointing=False
    )
    trainer.fit(module, _loader(shuffle=True), _loader(8, seed=1))
    trainer.validate(module, _loader(8, seed=1))
    trainer.test(module, _loader(8, seed=2))

    assert probe.seen and all(
        not teacher_training and student_training for teacher_training, student_training in probe.seen
    )
    after = module.teachers.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher tensor {key} changed"
    assert any(not torch.equal(a, b) for a, b in zip(student_before, module.student.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters(), strict=True))


def test_validation_logs_the_teacher_ceiling_once_per_fit(tmp_path):
    module = tiny_meal()
    trainer = pl.Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(module, _loader(), _loader(8, seed=1))
    metrics = trainer.callback_metrics
    assert {
        "val/teacher0_top1",
        "val/teacher1_top1",
        "val/ensemble_top1",
        "val/ensemble_top5",
        "val/top1",
        "val/top5",
        "val/loss",
    } <= set(metrics)
    assert not module._teacher_eval_pending


def test_checkpoints_leave_the_teachers_out_and_loading_stays_strict():
    """on_save_checkpoint drops the teachers; on load they are taken from the rebuilt ensemble, and Lightning's
    strict loading still refuses a key the module does not have (no strict_loading = False)."""
    module = tiny_meal()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = checkpoint["state_dict"].keys()
    assert keys and not any(k.startswith("teachers.") for k in keys)
    assert any(k.startswith("student.") for k in keys) and any(k.startswith("discriminator.") for k in keys)
    assert module.strict_loading
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    checkpoint["state_dict"]["student.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key.*student.extra"):
        module.load_state_dict(checkpoint["state_dict"], strict=True)


def test_cutmix_pastes_a_box_from_other_images_of_the_batch():
    module = tiny_meal(cutmix_prob=1.0)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    mixed = module._cutmix(images)
    assert mixed.shape == images.shape
    changed = (mixed != images).any(dim=1)
    assert changed.any(), "no box was pasted"
    assert torch.equal(images, torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 32, 32))


def test_cutmix_repeats_under_torchs_seed_and_its_box_covers_one_minus_lambda():
    """The box and shuffle come from torch's generator (restored on resume), not NumPy's global one."""
    from lightning_modules.meal_v2 import cutmix_box_mask

    module = tiny_meal(cutmix_prob=1.0)
    images = torch.randn(6, 3, 32, 32)
    torch.manual_seed(3)
    first = module._cutmix(images)
    torch.manual_seed(3)
    assert torch.equal(module._cutmix(images), first)
    torch.manual_seed(0)
    areas = [cutmix_box_mask(400, 400, 0.75).sum() / 400**2 for _ in range(200)]
    assert 0.12 < float(torch.stack(areas).mean()) <= 0.25  # 1 - lam = 0.25 when the box is not clipped


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_optimizer_has_student_and_discriminator_groups_with_their_own_lr(schedule, tmp_path):
    module = tiny_meal(lr=0.01, d_lr=1e-4, schedule=schedule, milestones=[1])
    used = {}

    class RecordLr(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            used[trainer.current_epoch] = [g["lr"] for g in trainer.optimizers[0].param_groups]

    trainer = pl.Trainer(
        max_epochs=2, logger=False, default_root_dir=tmp_path, enable_checkpointing=False, callbacks=[RecordLr()]
    )
    trainer.fit(module, _loader())
    optimizer = trainer.optimizers[0]
    assert [g["name"] for g in optimizer.param_groups] == ["student", "discriminator"]
    assert optimizer.defaults["weight_decay"] == 0 and optimizer.defaults["momentum"] == 0.9
    factor = 0.1 if schedule == "step" else 0.5  # epoch 1 of 2: past the milestone, or half-way down the cosine
    assert used == {0: pytest.approx([0.01, 1e-4]), 1: pytest.approx([0.01 * factor, 1e-4 * factor])}
