"""Fast teachers keep the soft targets, and the throughput benchmarks report every mode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fixtures import write_fashion_mnist
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from callbacks import FastTeachers
from callbacks.fast_teachers import accelerate_teacher
from datamodules import fashion_mnist
from lightning_modules import MealV2
from lightning_modules.losses import ensemble_soft_targets

ROOT = Path(__file__).resolve().parents[1]


def count_batchnorm(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


def small_meal() -> MealV2:
    torch.manual_seed(0)
    return MealV2(
        teachers=["cifar_resnet8", "cifar_wrn_16_1"], student={"name": "cifar_resnet8"}, num_classes=10, in_chans=1
    )


@pytest.mark.parametrize("precision, max_kl", [("32", 1e-6), ("bf16", 1e-2)])
def test_fast_teachers_keep_soft_targets_within_tolerance(precision, max_kl):
    module = small_meal()
    for teacher in module.teachers:  # give BatchNorm non-trivial statistics to fold
        for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    images = torch.randn(32, 1, 28, 28)
    norms_before = [count_batchnorm(t) for t in module.teachers]
    with torch.no_grad():
        reference = ensemble_soft_targets(module.teachers(images))
        for teacher in module.teachers:
            accelerate_teacher(teacher, precision, channels_last=True, fold_bn=True)
        fast = ensemble_soft_targets(module.teachers(images))
    assert fast.dtype == torch.float32
    norms_after = [count_batchnorm(t) for t in module.teachers]
    assert norms_after[0] == 0 and norms_after[1] < norms_before[1]  # pre-activation BN (after an add) stays
    kl = (reference * (reference.log() - fast.log())).sum(-1).mean()
    assert float(kl) < max_kl and (fast.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9


def test_fast_teachers_callback_applies_to_the_teachers_only(tmp_path):
    module = small_meal()
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[FastTeachers(precision="32")],
    )
    trainer.fit(module, loader)
    assert count_batchnorm(module.teachers.members[0]) == 0
    assert count_batchnorm(module.student) > 0
    assert trainer.global_step == 2


def test_throughput_benchmark_reports_every_mode(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    out = tmp_path / "throughput.json"
    tiny = ["--steps", "1", "--warmup", "0", "--batch-size", "4", "--teachers", "cifar_resnet8"]
    throughput.main([*tiny, "--cache-dir", str(tmp_path / "no-cache"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["loaded_note"].startswith("loaded rows skipped") and "no-cache" in report["loaded_note"]
    floors = {f"floor_{p}{c}" for p in ("fp32", "bf16") for c in ("", "_channels_last")}
    assert set(report["images_per_s"]) == floors | {
        "floor",
        "online_fp32",
        "online_fast",
        "teachers_alone",
        "online_limit",
        "cached",
    }
    assert all(v > 0 for v in report["images_per_s"].values())
    r = report["images_per_s"]
    assert r["online_limit"] == pytest.approx(1 / (1 / r["floor"] + 1 / r["teachers_alone"]))
    assert report["ratios"]["online_fast / online_limit"] == pytest.approx(r["online_fast"] / r["online_limit"])
    assert report["fast_soft_targets"]["top1_agreement"] == 1.0


def test_large_folder_benchmark_indexes_twice_samples_every_worker_and_sizes_the_cache(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import large_folder

    args = ["--images", "96", "--classes", "4", "--workers", "2", "--batch-size", "8", "--crops", "2", "--top-k", "2"]
    report = large_folder.main([*args, "--root", str(tmp_path / "folder"), "--out", str(tmp_path / "r.json")])
    first, second = report["runs"]
    assert first["batches"] == 12 and second["index_s"] > 0 and "worker_uss_kib" not in second
    assert all(len(uss) == 2 and min(uss) > 0 for uss in first["worker_uss_kib"].values())
    assert report["cache"]["bytes_on_disk"] >= 96 * report["cache"]["bytes_per_image"]


@pytest.mark.skipif(not fashion_mnist.SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_throughput_benchmark_times_both_steps_of_the_embedded_default_with_their_loaders(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    out = tmp_path / "throughput.json"
    tiny = ["--steps", "1", "--warmup", "0", "--loaded-steps", "2", "--teachers", "cifar_resnet8"]
    report = throughput.main([*tiny, "--data-dir", str(fashion_mnist.SYSTEM_DIR), "--out", str(out)])
    r = report["images_per_s"]
    assert r["hard_labels_loaded"] > 0 and r["cached_loaded"] > 0
    ratio = report["ratios"]["cached_loaded / hard_labels_loaded"]
    assert ratio == pytest.approx(r["cached_loaded"] / r["hard_labels_loaded"])
    assert json.loads(out.read_text())["loaded_note"].startswith("loaded rows:")


@pytest.mark.parametrize(
    "vendor, flags, precision",
    [
        ("GenuineIntel", {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16"),
        ("GenuineIntel", {"avx512f", "avx512_bf16"}, "32"),
        ("AuthenticAMD", {"avx512f", "avx512_bf16"}, "bf16"),
        ("AuthenticAMD", {"avx2"}, "32"),
    ],
)
def test_bf16_is_picked_on_cpus_only_where_it_measured_faster(monkeypatch, vendor, flags, precision):
    """AMX, or AVX-512-BF16 on AMD (Zen 4); an Intel Xeon with AVX-512-BF16 alone was no faster (issue 19)."""
    import lightning_modules.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: vendor)
    assert hardware.fast_precision("cpu") == precision


@pytest.mark.parametrize("fast_bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_fast_teachers_pick_their_precision_from_the_hardware(tmp_path, monkeypatch, fast_bf16, dtype):
    import lightning_modules.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: fast_bf16)
    module = small_meal()
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[FastTeachers()]
    )
    trainer.fit(module, loader)
    assert {p.dtype for t in module.teachers for p in t.parameters()} == {dtype}
    assert {p.dtype for p in module.student.parameters()} == {torch.float32}
    if (
        not torch.cuda.is_available()
    ):  # the Trainer's precision for the demo follows the same rule on a CPU-only machine
        assert hardware.fast_trainer_precision() == ("bf16-mixed" if fast_bf16 else "32-true")


@pytest.mark.slow
def test_compiled_fast_teachers_keep_the_soft_targets(tmp_path):
    module = small_meal()
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        reference = ensemble_soft_targets(module.teachers(images))
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[FastTeachers(precision="32", compile=True)],
    )
    trainer.validate(module, DataLoader(TensorDataset(images, torch.randint(0, 10, (16,))), batch_size=16))
    assert all(type(t.model).__name__ == "OptimizedModule" for t in module.teachers)
    with torch.no_grad():
        compiled = ensemble_soft_targets(module.teachers(images))
    kl = (reference * (reference.log() - compiled.log())).sum(-1).mean()
    assert (
        compiled.dtype == torch.float32 and float(kl) < 1e-6 and torch.equal(compiled.argmax(-1), reference.argmax(-1))
    )


def test_image_folder_benchmark_reports_every_setting_with_data_loading(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import image_folder_throughput

    source = write_fashion_mnist(tmp_path / "fmnist", train_count=200, test_count=8)
    out = tmp_path / "bench.json"
    tiny = ["--student", "test_resnet", "--teachers", "test_resnet", "--image-size", "32", "--batch-size", "8"]
    loop = [
        "--crops",
        "1",
        "4",
        "--warmup",
        "1",
        "--batches",
        "2",
        "--workers",
        "0",
        "--repeats",
        "2",
        "--loader-batches",
        "3",
    ]
    folder = ["--train-per-class", "4", "--val-per-class", "1", "--fashion-mnist", str(source)]
    paths = ["--folder", str(tmp_path / "jpeg"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    image_folder_throughput.main([*tiny, *loop, *folder, *paths])
    report = json.loads(out.read_text())
    rates = report["crops_per_s"]
    assert set(rates) == {"decode", "loader_online", "floor", "online"} | {
        f"{kind}_m{m}" for kind in ("cached", "loader_cached") for m in (1, 4)
    }
    assert all(rate["mean"] > 0 for rate in rates.values()) and len(report["runs"]) == 2
    paired = [run["floor"] / run["cached_m4"] for run in report["runs"]]
    assert report["ratios"]["floor / cached_m4"]["mean"] == pytest.approx(sum(paired) / 2)
    assert report["cache"]["images"] == 40 and report["cache"]["crops"] == 4
    sizes = [Image.open(path).size for path in (tmp_path / "jpeg" / "train").rglob("*.JPEG")]
    assert len(sizes) == 40 and all(256 <= side <= 500 for size in sizes for side in size)
