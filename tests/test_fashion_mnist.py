"""The embedded default: Fashion-MNIST from IDX files, and the demo pipeline end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import write_fashion_mnist

import datamodules.fashion_mnist as fashion_mnist
import demo
from datamodules import DataError, FashionMNISTData

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_reads_idx_files_gzip_or_raw(tmp_path, gz):
    data = FashionMNISTData(str(write_fashion_mnist(tmp_path, 40, 20, gz=gz)), batch_size=8)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), data.num_classes, data.in_chans) == (40, 20, 10, 1)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    raw = fashion_mnist.read_idx(next(tmp_path.glob("t10k-images*")))
    expected = (torch.from_numpy(raw[0].copy()).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(data.val_set[0][0][0], expected)


def test_three_channel_option_replicates_the_image(tmp_path):
    data = FashionMNISTData(str(write_fashion_mnist(tmp_path)), in_chans=3)
    data.setup("fit")
    image = data.val_set[0][0]
    assert image.shape == (3, 28, 28) and torch.equal(image[0], image[2]) and len(data.mean) == 3


def test_train_subset_is_fixed_by_its_seed(tmp_path):
    root = str(write_fashion_mnist(tmp_path))
    subsets = []
    for _ in range(2):
        data = FashionMNISTData(root, train_subset=10, subset_seed=3)
        data.setup("fit")
        subsets.append(data.train_set.labels.clone())
    assert len(subsets[0]) == 10 and torch.equal(*subsets)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    data = FashionMNISTData(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*download=true") as info:
        data.prepare_data()
    assert "\n" not in str(info.value)


def test_truncated_idx_file_is_refused(tmp_path):
    root = write_fashion_mnist(tmp_path, gz=False)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist.read_idx(path)


def test_demo_pipeline_end_to_end_on_a_tiny_subset(tmp_path):
    data_dir = write_fashion_mnist(tmp_path / "data", train_count=64, test_count=32)
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "demo.py"), "--budget", "smoke", "--out", str(out), "--data-dir", str(data_dir), "--no-progress-bar"]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)

    result = json.loads((out / "results.json").read_text())
    runs = [row["run"] for row in result["rows"]]
    assert runs == ["teacher: ResNet-14", "teacher: WRN-16-1", "teacher ensemble (mean of probabilities)",
                    "student init (hard labels)", "baseline: init + hard labels", "MEAL V2 student"]
    assert all(0 <= row["val_top1"] <= 100 and row["params"] > 0 and row["images_per_s"] > 0 for row in result["rows"])
    assert (out / "results.md").read_text().count("\n| ") == len(runs) + 1
    assert (out / "val_top1.png").stat().st_size > 1000
    assert list((out / "runs" / "fashion_mnist" / "resnet8_from_resnet14+wrn_16_1" / "main").glob("events.out.tfevents.*"))

    rerun = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert rerun.stdout.count("done earlier, skipped") == len(runs) - 1


def test_demo_summary_gives_mean_std_and_gap_over_seeds(tmp_path):
    for seed, (baseline, meal) in enumerate([(86.0, 86.5), (85.0, 85.9)]):
        rows = [{"run": "baseline: init + hard labels", "val_top1": baseline}, {"run": "MEAL V2 student", "val_top1": meal}]
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "results.json").write_text(
            json.dumps({"seed": seed, "rows": rows, "meal_minus_baseline": meal - baseline}))

    summary = demo.main(["--budget", "full", "--summary", "--out", str(tmp_path)])

    meal = next(row for row in summary["rows"] if row["run"] == "MEAL V2 student")
    assert (meal["n"], meal["mean"], meal["std"]) == (2, pytest.approx(86.2), pytest.approx(0.4243, abs=1e-4))
    assert summary["meal_minus_baseline"]["mean"] == pytest.approx(0.7)
    assert "| MEAL V2 - baseline (points) | 2 | 0.70 | 0.28 | s0 +0.50, s1 +0.90 |" in (tmp_path / "summary.md").read_text()


def test_demo_reuses_finished_teachers_of_the_same_budget_and_refuses_others(tmp_path):
    donor = tmp_path / "seed0" / "runs" / "fashion_mnist"
    for name in ("teacher_resnet14", "teacher_wrn_16_1"):
        run = donor / name / "main"
        run.mkdir(parents=True)
        (run / "done.json").write_text("{}")
        (run / "config.yaml").write_text("trainer:\n  max_epochs: 1\ndata:\n  init_args:\n    train_subset: 64\n")
    pipeline = demo.Pipeline("smoke", tmp_path / "seed1", teachers_from=tmp_path / "seed0")
    pipeline.reuse_teachers()
    assert all((pipeline.run_dir(step) / "done.json").is_file() for step in pipeline.steps() if step.stage == "teacher")

    with pytest.raises(SystemExit, match="was trained for 1 epochs on subset 64, budget 'full' needs 6 on 20000"):
        demo.Pipeline("full", tmp_path / "seed2", teachers_from=tmp_path / "seed0").reuse_teachers()
