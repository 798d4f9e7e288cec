"""From a trained run to a deployed network: class names, classifying image files, ONNX with ONNX Runtime parity."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
import yaml
from fixtures import tensorboard_logger, write_fashion_mnist, write_meal_config, write_yaml
from PIL import Image
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf

import zoo
from cli import main
from datamodules import FashionMNISTData, fashion_mnist
from models.onnx_export import export_folder_onnx

ROOT = Path(__file__).resolve().parents[1]


def onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def onnx_metadata(path: Path) -> dict:
    return {entry.key: json.loads(entry.value) for entry in onnx.load(str(path)).metadata_props}


def classifier_config(tmp_path: Path) -> Path:
    data = {"data_dir": str(write_fashion_mnist(tmp_path / "data")), "batch_size": 16}
    return write_yaml(
        tmp_path / "classifier.yaml",
        {
            "model": {"class_path": "Classifier", "init_args": {"model": {"name": "cifar_resnet8"}}},
            "data": {"class_path": "FashionMNISTData", "init_args": data},
            "trainer": {"logger": tensorboard_logger(tmp_path)},
        },
    )


@pytest.mark.onnx
def test_the_export_folder_holds_class_names_and_an_onnx_with_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(write_meal_config(tmp_path)), "--trainer.max_epochs=1"])
    folder = tmp_path / "runs/meal/version_0/student/last"
    assert json.loads((folder / "config.json").read_text())["label_names"] == fashion_mnist.CLASSES
    metadata = onnx_metadata(folder / "model.onnx")
    assert metadata["label_names"] == fashion_mnist.CLASSES
    assert metadata["input_size"] == [1, 28, 28] and metadata["mean"] == pytest.approx([0.286])
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(folder / "model.onnx", images), model(images).numpy(), atol=1e-4)


def test_a_classifier_exports_into_model_not_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(classifier_config(tmp_path)), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/version_0"
    assert (run / "model/last/model.safetensors").is_file() and not (run / "student").exists()


def test_predict_classifies_image_files_into_csv_and_json_with_class_names(tmp_path, monkeypatch):
    """The exported student as a Classifier, as docs/own_data.md runs it: a folder (recursively) and a file."""
    monkeypatch.chdir(tmp_path)
    config = classifier_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    rng = np.random.default_rng(0)
    (tmp_path / "images/sub").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(tmp_path / f"images/sub/{index}.png")
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(tmp_path / "one.jpg")
    exported = tmp_path / "runs/meal/version_0/model/last/model.safetensors"
    model = ["--model", "Classifier", "--model.model.name", "cifar_resnet8", "--model.model.checkpoint", str(exported)]
    files = ["--data.init_args.predict_files", "[images, one.jpg]", "--predictions.top_k", "3"]
    cli = main(["predict", "--config", str(config), *model, *files])

    out = tmp_path / "runs/meal/version_1/predict"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [row["file"] for row in rows] == ["images/sub/0.png", "images/sub/1.png", "images/sub/2.png", "one.jpg"]
    assert list(rows[0]) == ["file", "class1", "probability1", "class2", "probability2", "class3", "probability3"]
    assert json.loads((out / "predictions.json").read_text())[0]["top"][0]["class"] == rows[0]["class1"]
    data = cli.datamodule
    image = data.file_transform()(Image.open(tmp_path / "images/sub/0.png").convert("L"))
    with torch.no_grad():
        probabilities = cli.model.eval()(image[None]).softmax(-1)[0]
    assert rows[0]["class1"] == fashion_mnist.CLASSES[int(probabilities.argmax())]
    assert float(rows[0]["probability1"]) == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_predict_without_files_or_cache_says_what_to_set(tmp_path, monkeypatch):
    from datamodules import DataError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="predict classifies data.init_args.predict_files"):
        main(["predict", "--config", str(classifier_config(tmp_path))])
    with pytest.raises(DataError, match="'missing.png' does not exist"):
        main(["predict", "--config", str(classifier_config(tmp_path)), "--data.init_args.predict_files=[missing.png]"])


def test_a_soft_label_cache_with_a_model_without_teachers_is_refused(tmp_path, monkeypatch):
    """Only MealV2 gives the cache its teachers: a Classifier neither trains on a cache's plain images nor writes one."""
    from datamodules import DataError

    monkeypatch.chdir(tmp_path)
    cache = [f"--data.init_args.soft_labels.dir={tmp_path / 'cache'}"]
    for subcommand in ("fit", "predict"):
        with pytest.raises(DataError, match="soft-label cache belongs to a teacher ensemble: .* with model MealV2"):
            main([subcommand, "--config", str(classifier_config(tmp_path)), *cache, "--trainer.max_epochs=1"])
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not fashion_mnist.SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_onnx_of_the_zoo_student_agrees_with_pytorch_on_real_test_images(tmp_path):
    folder = tmp_path / "student_init_resnet8"
    folder.mkdir()
    shipped = zoo.ZOO_DIR / "student_init_resnet8"
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes((shipped / name).read_bytes())
    export_folder_onnx(folder)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    data = FashionMNISTData()
    data.setup("test")
    images = torch.stack([data.test_set[i][0] for i in range(1000)])  # what 10,000 would show, in a tenth of the time
    for batch in (1, 8):
        with torch.no_grad():
            np.testing.assert_allclose(
                onnx_logits(folder / "model.onnx", images[:batch]), model(images[:batch]).numpy(), atol=1e-4
            )
    with torch.no_grad():
        reference = model(images).argmax(-1).numpy()
    assert len(images) == 1000 and (onnx_logits(folder / "model.onnx", images).argmax(-1) == reference).all()


def test_a_recipe_student_exports_to_onnx_with_timms_exportable_layers(tmp_path):
    """tf_mobilenetv3_small_075 (the ImageNet recipes' student, 'same' padding) at 64 px, random weights."""
    torch.manual_seed(0)
    model = timm.create_model("tf_mobilenetv3_small_075", num_classes=7).eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    save_config_for_hf(model, str(tmp_path / "config.json"), data_config={"input_size": (3, 64, 64)})
    export_folder_onnx(tmp_path)
    images = torch.randn(8, 3, 64, 64)
    for batch in (1, 8):
        with torch.no_grad():
            np.testing.assert_allclose(
                onnx_logits(tmp_path / "model.onnx", images[:batch]), model(images[:batch]).numpy(), atol=1e-4
            )


def test_the_onnx_command_exports_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(write_meal_config(tmp_path)), "--trainer.max_epochs=1"])
    checkpoint = tmp_path / "runs/meal/version_0/checkpoints/last.ckpt"
    command = [sys.executable, "-m", "models.onnx_export", str(checkpoint), "--image-size", "28"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(checkpoint, weights_only=True)
    model = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1).eval()
    model.load_state_dict({k[len("student.") :]: v for k, v in state["state_dict"].items() if k.startswith("student.")})
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(
            onnx_logits(checkpoint.with_suffix(".onnx"), images), model(images).numpy(), atol=1e-4
        )
    assert yaml.safe_load(json.dumps(onnx_metadata(checkpoint.with_suffix(".onnx"))))["input_size"] == [1, 28, 28]


def test_the_image_folder_chain_runs_as_its_header_prints_it(tmp_path, monkeypatch):
    """configs/image_folder: the four commands in data.yaml's header, on a tiny folder. The hub names are swapped for
    small local architectures (no network here), so what is tested is the chain: each step finds the last one's export."""
    from fixtures import write_image_folder

    monkeypatch.chdir(tmp_path)
    source = ROOT / "configs/image_folder"
    (tmp_path / "configs/image_folder").mkdir(parents=True)
    swaps = {
        "resnet50.a1_in1k": "test_resnet",
        "efficientnet_b2.ra_in1k": "cifar_resnet8",
        "resnet18.a1_in1k": "test_efficientnet",
    }
    for path in source.glob("*.yaml"):
        text = path.read_text().replace("pretrained: true", "pretrained: false")
        for hub, local in swaps.items():
            text = text.replace(hub, local)
        (tmp_path / "configs/image_folder" / path.name).write_text(text)
    commands = [
        line.removeprefix("#   python cli.py ").split()
        for line in (source / "data.yaml").read_text().splitlines()
        if line.startswith("#   python cli.py fit")
    ]
    assert len(commands) == 4
    images = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    shrink = [
        f"--data.init_args.data_dir={images}",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=1",
    ]
    for command in commands:
        main([*command, *shrink])
    run = tmp_path / "runs/image_folder/resnet18_from_resnet50+efficientnet_b2/main"
    assert json.loads((run / "student/last/config.json").read_text())["label_names"] == [
        "class_0",
        "class_1",
        "class_2",
    ]


def test_an_ensemble_below_its_best_teacher_is_flagged_before_training(tmp_path, monkeypatch):
    """Every label is 1; teacher 0 says 1 (p 0.9), teacher 1 says 3 with certainty: the ensemble says 3 (0 % < 100 %)."""
    from fixtures import write_idx, write_weights

    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)
    for split, count in (("train", 96), ("t10k", 32)):
        write_idx(tmp_path / f"data/{split}-labels-idx1-ubyte.gz", np.ones(count, dtype=np.uint8))
    for file, label, value in (("t0.pt", 1, 3.0), ("t1.pt", 3, 50.0)):
        name = "cifar_resnet8" if file == "t0.pt" else "cifar_wrn_16_1"
        state = torch.load(write_weights(tmp_path / file, name, 10, in_chans=1), weights_only=True)
        state["fc.weight"].zero_()
        state["fc.bias"].zero_()
        state["fc.bias"][label] = value
        torch.save(state, tmp_path / file)
    with pytest.warns(
        UserWarning,
        match=r"ensemble scores 0.00% top-1 on 32 val images, below its best teacher \(teacher0 100.00%, teacher1 0.00%\)",
    ):
        main(["fit", "--config", str(config), "--trainer.max_epochs=1"])


def test_the_deployment_benchmark_reports_every_network_in_both_runtimes(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deployment

    out, threads = tmp_path / "deployment.json", torch.get_num_threads()
    deployment.main(
        ["--repeats", "1", "--seconds", "0.01", "--threads", "1", "--demo", str(tmp_path), "--out", str(out)]
    )
    torch.set_num_threads(threads)  # the benchmark sets its own
    report = json.loads(out.read_text())
    assert [row["network"].split(":")[0] for row in report["rows"]] == [
        "teacher",
        "teacher",
        "teacher ensemble (both, mean of probabilities)",
        "MEAL V2 student",
    ]
    assert report["rows"][2]["parameters"] == report["rows"][0]["parameters"] + report["rows"][1]["parameters"]
    assert report["rows"][2]["val_top1"][0] == pytest.approx(95.40)
    assert all(row[k] > 0 for row in report["rows"] for k in ("torch_b1", "torch_b64", "onnx_b1", "onnx_b64"))
    assert "n/a (run the demo)" in capsys.readouterr().out  # no demo summary in tmp_path
