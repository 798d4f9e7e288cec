"""The embedded default: Fashion-MNIST from IDX files, and the demo pipeline end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import write_fashion_mnist
from safetensors.torch import load_file

import datamodules.fashion_mnist as fashion_mnist
import demo
import zoo
from cli import main
from datamodules import DataError, FashionMNISTData
from datamodules.soft_labels import FILES, FORMAT, SoftLabelStore
from models.loading import weights_digest

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


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A zoo rebuilt from the zoo configs by ``demo.py --rebuild-zoo`` on a tiny data set (1 epoch each)."""
    root = tmp_path_factory.mktemp("zoo")
    data_dir = write_fashion_mnist(root / "data", train_count=64, test_count=32)
    command = [
        sys.executable,
        str(ROOT / "demo.py"),
        "--rebuild-zoo",
        "--smoke",
        "--zoo",
        str(root / "zoo"),
        "--out",
        str(root / "work"),
        "--data-dir",
        str(data_dir),
        "--no-progress-bar",
    ]
    subprocess.run(command, check=True, cwd=root, capture_output=True)
    return root / "zoo", data_dir


@pytest.mark.slow
def test_rebuilt_zoo_has_weights_config_and_a_manifest_that_matches(tiny_zoo):
    zoo_dir, _ = tiny_zoo
    manifests = zoo.verify(zoo_dir)
    assert [m["name"] for m in manifests] == [m.name for m in zoo.MODELS]
    for manifest in manifests:
        folder = zoo_dir / manifest["name"]
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == manifest["architecture"] and config["pretrained_cfg"]["mean"] == [0.2860]
        assert (
            manifest["sha256"] == zoo.sha256(folder / "model.safetensors")
            and manifest["bytes"] == (folder / "model.safetensors").stat().st_size
        )
        assert manifest["weights_dtype"] in ("float16", "float32") and 0 <= manifest["val_top1"] <= 100
        expected = f"python cli.py fit --config configs/fashion_mnist/zoo/{manifest['name']}.yaml " + " ".join(
            demo.SMOKE_ARGS
        )
        assert manifest["command"] == expected + " --trainer.enable_progress_bar=false" and manifest["val"].endswith(
            "32 official Fashion-MNIST test images (fp32 compute)"
        )
        assert manifest["epochs"] == 1 and manifest["parameters"] > 0 and manifest["wall_seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.CACHE_CONFIGS))
def test_rebuilt_zoo_ships_the_ensembles_soft_labels_for_every_training_image(tiny_zoo, name):
    zoo_dir, _ = tiny_zoo
    manifest = zoo.verify_soft_labels(zoo_dir, name)
    meta = json.loads((zoo_dir / name / "meta.json").read_text())
    assert (manifest["images"], manifest["crops"], manifest["top_k"], manifest["classes"]) == (64, 7, 10, 10)
    assert manifest["fingerprint"] == meta["fingerprint"] and meta["ensemble_val_top1"]["images"] == 32
    configs = " ".join(f"--config {config}" for config in zoo.CACHE_CONFIGS[name])
    assert manifest["command"] == " ".join(
        [
            f"python cli.py predict {configs}",
            f"--trainer.precision=32-true --trainer.logger.init_args.name=zoo_{name}",
            *demo.SMOKE_ARGS,
            "--trainer.enable_progress_bar=false",
        ]
    )
    mixed = {"partners.npy", "lambdas.npy"} if name == zoo.MIXED else set()
    assert set(manifest["files"]) == {f"{name}.npy" for name in FILES} | {"meta.json"} | mixed
    assert manifest["bytes"] == sum((zoo_dir / name / file).stat().st_size for file in manifest["files"])


@pytest.mark.slow
def test_rebuilding_over_an_existing_zoo_reexports_it_and_keeps_its_soft_labels(tiny_zoo):
    zoo_dir, data_dir = tiny_zoo
    before = zoo.verify_soft_labels(zoo_dir)
    command = [sys.executable, str(ROOT / "demo.py"), "--rebuild-zoo", "--smoke", "--zoo", str(zoo_dir)]
    command += ["--out", str(zoo_dir.parent / "work"), "--data-dir", str(data_dir), "--no-progress-bar"]
    result = subprocess.run(command, cwd=zoo_dir.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained earlier" in result.stdout and "soft_labels: made earlier" in result.stdout
    assert "soft_labels_mixed: made earlier" in result.stdout
    assert zoo.verify(zoo_dir) and zoo.verify_soft_labels(zoo_dir) == before


@pytest.mark.slow
def test_zoo_weights_that_differ_from_the_manifest_are_refused(tiny_zoo, tmp_path):
    zoo_dir, _ = tiny_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    weights = copy / "teacher_resnet20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(zoo.ZooError, match="do not match their manifest.*--rebuild-zoo"):
        zoo.verify(copy)
    shutil.copy(zoo_dir / "teacher_resnet20" / "model.safetensors", weights)
    values = copy / "soft_labels" / "values.npy"
    values.write_bytes(values.read_bytes()[:-1] + b"\0")
    with pytest.raises(zoo.ZooError, match="Zoo soft labels .*values.npy' do not match their manifest"):
        zoo.verify(copy)
    shutil.copy(zoo_dir / "soft_labels" / "values.npy", values)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), "--zoo", str(copy), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (
        result.returncode != 0
        and result.stderr.strip().startswith("error: Zoo weights")
        and "Traceback" not in result.stderr
    )


@pytest.mark.slow
def test_demo_distils_the_zoo_end_to_end_and_skips_finished_steps(tiny_zoo, tmp_path):
    zoo_dir, data_dir = tiny_zoo
    out = tmp_path / "results"
    command = [
        sys.executable,
        str(ROOT / "demo.py"),
        "--smoke",
        "--zoo",
        str(zoo_dir),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--no-progress-bar",
        "--precision",
        "32-true",
    ]
    first = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert "zoo on the 10,000 test images: teacher: ResNet-20" in first.stdout

    result = json.loads((out / "results.json").read_text())
    runs = [row["run"] for row in result["rows"]]
    assert runs == [
        "teacher: ResNet-20",
        "teacher: WRN-16-2",
        "teacher ensemble (mean of probabilities)",
        "student init (hard labels)",
        "baseline: init + hard labels",
        "MEAL V2 student",
    ]
    assert all(0 <= row["val_top1"] <= 100 and row["params"] > 0 for row in result["rows"])
    by_run = {row["run"]: row["val_top1"] for row in result["rows"]}
    assert result["meal_minus_baseline"] == pytest.approx(
        by_run["MEAL V2 student"] - by_run["baseline: init + hard labels"]
    )
    assert (out / "results.md").read_text().count("\n| ") == len(runs) + 1 + 10 + 1  # the runs, then per class
    assert (out / "val_top1.png").stat().st_size > 1000 and (out / "confusion_matrix.png").stat().st_size > 1000
    per_class = result["per_class"]
    assert per_class["classes"][0] == "T-shirt/top" and len(per_class["MEAL V2 student"]) == 10
    assert set(per_class) == {
        "classes",
        "student init (hard labels)",
        "baseline: init + hard labels",
        "MEAL V2 student",
    }
    meal_run = out / "runs" / "fashion_mnist" / "meal_v2" / "main"
    assert (
        yaml.safe_load((meal_run / "config.yaml").read_text())["model"]["init_args"]["student"]["checkpoint"]
        == "zoo/fashion_mnist/student_init_resnet8/model.safetensors"
    )

    assert (out / "logs" / "meal_v2.log").is_file()
    assert "meal_v2: epoch 1/1: val/top1" in first.stdout  # a line per epoch, no bars
    assert f"tensorboard --logdir {out / 'runs' / 'fashion_mnist'}" in first.stdout  # where its runs are

    rerun = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert rerun.stdout.count("done earlier, skipped") == 3


def test_demo_summary_gives_mean_interval_and_paired_gaps_over_seeds(tmp_path):
    for seed, (init, baseline, meal, ensemble) in enumerate([(90.0, 90.2, 90.8, 92.0), (89.0, 89.3, 90.1, 93.0)]):
        rows = [
            {"run": "student init (hard labels)", "val_top1": init},
            {"run": "baseline: init + hard labels", "val_top1": baseline},
            {"run": "MEAL V2 student", "val_top1": meal},
            {"run": "teacher ensemble (mean of probabilities)", "val_top1": ensemble},
        ]
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "results.json").write_text(
            json.dumps({"seed": seed, "rows": rows, **demo.gaps({r["run"]: r["val_top1"] for r in rows})})
        )

    summary = demo.main(["--summary", "--out", str(tmp_path)])

    meal = next(row for row in summary["rows"] if row["run"] == "MEAL V2 student")
    assert (meal["n"], meal["mean"]) == (2, pytest.approx(90.45))
    assert meal["half_width"] == pytest.approx(12.706 * 0.4950 / 2**0.5, abs=1e-3)  # t(0.975, 1 df) x sd / sqrt(n)
    assert summary["meal_minus_baseline"]["mean"] == pytest.approx(0.7)
    assert summary["gap_closed"]["by_seed"] == {0: pytest.approx(40.0), 1: pytest.approx(27.5)}
    text = (tmp_path / "summary.md").read_text()
    assert "| MEAL V2 - baseline (points) | 2 | +0.70 | 1.27 | s0 +0.60, s1 +0.80 |" in text
    assert "| share of init -> ensemble gap closed (%) | 2 | 33.75 | 79.41 | s0 40.00, s1 27.50 |" in text


def test_committed_zoo_matches_its_manifests_and_loads_through_the_recipe(tmp_path, monkeypatch):
    manifests = {m["name"]: m for m in zoo.verify()}  # sha256 of every shipped file against its manifest
    assert all(m["val_top1"] >= 93.0 for m in manifests.values() if m["role"] == "teacher")
    monkeypatch.chdir(ROOT)  # the recipe names zoo/fashion_mnist/... relative to the repository
    data = write_fashion_mnist(tmp_path / "data")
    cli = main(["--config", str(demo.MEAL_CONFIG), f"--data.init_args.data_dir={data}"], run=False)
    for teacher, name in zip(cli.model.teachers, ("teacher_resnet20", "teacher_wrn_16_2"), strict=True):
        shipped = load_file(str(zoo.weights_path(zoo.ZOO_DIR, name)))
        assert all(
            torch.equal(teacher.model.state_dict()[k], v.float()) for k, v in shipped.items() if v.is_floating_point()
        )
        assert not teacher.renormalize  # config.json's mean/std are the data's: no re-normalization
    assert cli.model.student.state_dict()["fc.weight"].dtype == torch.float32


@pytest.mark.parametrize("name", list(zoo.CACHE_CONFIGS))
def test_committed_soft_labels_match_their_manifest_and_the_zoo_teachers(monkeypatch, tmp_path, name):
    manifest = zoo.verify_soft_labels(name=name)  # sha256 of every shipped file
    meta = json.loads((zoo.ZOO_DIR / name / "meta.json").read_text())
    assert manifest["fingerprint"] == meta["fingerprint"] and meta["format"] == FORMAT
    assert (meta["images"], meta["top_k"], meta["classes"]) == (60000, 10, 10)  # every image, every class
    monkeypatch.chdir(ROOT)
    configs = [a for config in zoo.CACHE_CONFIGS[name] for a in ("--config", config)]
    cli = main([*configs, f"--data.init_args.data_dir={write_fashion_mnist(tmp_path)}"], run=False)
    assert cli.model.hparams.soft_targets == "cached" and cli.datamodule.soft_labels.crops == meta["crops"]
    teachers = [
        {"name": t["name"], "sha256": weights_digest(m.model)}
        for t, m in zip(cli.model.hparams.teachers, cli.model.teachers, strict=True)
    ]
    assert meta["fingerprint"]["teachers"] == teachers
    assert meta["fingerprint"]["crop"] == cli.datamodule.crop_settings()
    assert meta.get("mixup_alpha") == cli.datamodule.soft_labels.mixup_alpha
    store = SoftLabelStore(zoo.ZOO_DIR / name, meta, "r")
    for start in range(0, meta["images"], 4096):  # every row passes its CRC and holds probabilities
        store.checked_rows(np.arange(start, min(start + 4096, meta["images"])))


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist.SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_demo_trains_from_the_shipped_zoo_and_soft_labels_on_the_real_data(tmp_path):
    """`python demo.py` as the README runs it, shrunk to a few batches: the shipped cache fits the real training set."""
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "demo.py"), "--smoke", "--out", str(out), "--precision", "32-true"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    meal = yaml.safe_load((out / "runs/fashion_mnist/meal_v2/main/config.yaml").read_text())
    assert meal["model"]["init_args"]["soft_targets"] == "cached"
    assert meal["data"]["init_args"]["soft_labels"]["dir"] == "zoo/fashion_mnist/soft_labels"
    assert "Warning" not in result.stdout and "warn" not in result.stdout.lower()
    rows = {row["run"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["MEAL V2 student"]["epochs"] == 1 and rows["baseline: init + hard labels"]["epochs"] == 1


@pytest.mark.slow
def test_method_table_chooses_on_held_out_images_then_trains_its_rows_end_to_end(tiny_zoo, tmp_path):
    """`make ablations` shrunk: the zoo evaluated, Hinton KD's T chosen on held-out images, two rows, the table."""
    zoo_dir, data_dir = tiny_zoo
    out = tmp_path / "table"
    command = [
        sys.executable,
        str(ROOT / "experiments" / "method_table.py"),
        *("--smoke", "--zoo", str(zoo_dir), "--out", str(out), "--data-dir", str(data_dir)),
        *(
            "--precision",
            "32-true",
            "--seeds",
            "1",
            "--held-out",
            "16",
            "--rows",
            "meal_v2",
            "hinton_kd",
        ),
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "chosen on 16 held-out training images" in run.stdout
    table = json.loads((out / "table.json").read_text())
    assert [row["key"] for row in table["rows"]] == ["meal_v2", "hinton_kd"]
    assert set(table["selection"]["hinton_kd"]) == {"1", "2", "4", "8"}
    kd = yaml.safe_load((out / "seed0/runs/fashion_mnist/hinton_kd/main/config.yaml").read_text())
    assert kd["data"]["init_args"]["val_size"] == 0  # reported on the test images, chosen elsewhere
    assert kd["model"]["init_args"]["objective"]["init_args"]["temperature"] == table["chosen"]["hinton_kd"]
    for row in table["rows"]:
        assert all(row[metric] is not None for metric in ("top1", "agreement", "nll", "ece"))


def test_a_results_folder_holds_one_precisions_runs(tmp_path):
    demo.Pipeline(tmp_path / "out", precision="bf16-mixed").prepare()
    with pytest.raises(demo.DemoError, match="holds runs made in bf16-mixed, not 32-true: give another --out"):
        demo.Pipeline(tmp_path / "out", precision="32-true").prepare()
    assert demo.default_results("32-true") != demo.default_results("bf16-mixed")  # each precision its own folder


def test_a_resumed_runs_time_includes_its_earlier_starts(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    pipeline = demo.Pipeline(tmp_path / "out")
    step = demo.STEPS[1]
    with SummaryWriter(pipeline.run_dir(step)) as earlier:  # an earlier start that logged for 100 s, then was killed
        earlier.add_scalar("val/top1", 0.9, global_step=1, walltime=time.time() + 100)
    pipeline.command = lambda _: [sys.executable, "-c", "pass"]  # the resumed start: ends at once
    demo.run_side_by_side([(pipeline, step)])
    done = json.loads((pipeline.run_dir(step) / "done.json").read_text())
    assert 100 <= done["seconds"] < 160 and done["earlier_starts_seconds"] == pytest.approx(100, abs=1)


def test_make_demo_passes_its_precision_to_the_demo():
    dry = subprocess.run(["make", "-n", "demo", "PRECISION=32-true"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "demo.py --precision 32-true" in dry.stdout
