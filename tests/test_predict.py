"""Classifying image files from what a user has: a run, its checkpoint, or an export alone; ONNX that describes itself."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import write_meal_config
from PIL import Image

from cli import main
from datamodules import DataError, FashionMNISTData
from errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RUN = "runs/image_folder/resnet18_from_resnet50+efficientnet_b2/main"  # the run docs/own_data.md names


def docs_block(document: str, opening: str) -> str:
    """The fenced block of ``document`` that starts with ``opening`` (as printed, without its fences)."""
    text = (ROOT / document).read_text()
    return opening + text.split(f"\n{opening}", 1)[1].split("```", 1)[0]


def top1(csv_file: Path) -> dict[str, str]:
    with open(csv_file) as handle:
        return {Path(row["file"]).name: row["class1"] for row in csv.DictReader(handle)}


def write_images(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:05d}.png" for index in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(np.asarray(image, dtype=np.uint8).squeeze()).save(path)
    return paths


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny MEAL V2 run laid out where docs/own_data.md's commands look for it."""
    root = tmp_path_factory.mktemp("project")
    config = yaml.safe_load(write_meal_config(root).read_text())
    config["trainer"]["logger"]["init_args"] = {
        "save_dir": str(root / "runs"),
        "name": "image_folder/x",
        "version": "v",
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--config", str(root / "config.yaml"), "--trainer.max_epochs=1"])
    finally:
        os.chdir(cwd)
    (root / RUN).parent.mkdir(parents=True)
    shutil.move(root / "runs/image_folder/x/v", root / RUN)
    images = FashionMNISTData(str(root / "data"), num_workers=0)
    images.setup("fit")
    raw = np.asarray(images.test_set.images)[:12]
    write_images(root / "photos", raw[:10])
    Image.fromarray(raw[10].squeeze()).save(root / "one.jpg")
    return root


def test_predict_from_a_run_its_checkpoint_or_its_export_alone_as_docs_own_data_prints_it(
    trained_run, tmp_path, monkeypatch
):
    """docs/own_data.md's three lines, their arguments as a shell splits them, in a folder with the run and the
    photos but no training data."""
    block = docs_block("docs/own_data.md", "python cli.py predict --from")
    lines = block.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"python cli.py predict --from {RUN}") for line in lines)
    shutil.copytree(trained_run / "runs", tmp_path / "runs")
    shutil.copytree(trained_run / "photos", tmp_path / "photos")
    shutil.copy(trained_run / "one.jpg", tmp_path / "one.jpg")
    monkeypatch.chdir(tmp_path)
    answers = []
    for line in lines:
        cli = main(shlex.split(line)[2:])
        assert type(cli.model).__name__ == "Classifier" and not hasattr(cli.model, "teachers")
        answers.append(top1(tmp_path / RUN / "predict/predictions.csv"))
    assert len(answers[0]) == 10 and len(answers[1]) == 11 and answers[0] == answers[2]
    assert {k: v for k, v in answers[1].items() if k != "one.jpg"} == answers[0]
    classes = set(json.loads((tmp_path / RUN / "student/last/config.json").read_text())["label_names"])
    assert set(answers[1].values()) <= classes


def test_predict_never_replaces_predictions_it_did_not_write(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_run)
    (tmp_path / "predictions.csv").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds predictions.csv, which this project did not write: it is left alone"):
        main(
            [
                "predict",
                "--from",
                RUN,
                "--data.init_args.predict_files=[photos/]",
                f"--predictions.output_dir={tmp_path}",
            ]
        )
    assert (tmp_path / "predictions.csv").read_text() == "mine"
    ours = tmp_path / "ours"
    for _ in range(2):  # its own predictions are replaced by the next predict
        main(["predict", "--from", RUN, "--data.init_args.predict_files=[photos/]", f"--predictions.output_dir={ours}"])
    assert len(top1(ours / "predictions.csv")) == 10


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(label_names=c["label_names"][:3]), r"3 label_names for 10 classes"),
        (lambda c: c["pretrained_cfg"].update(mean=[0.1, 0.2, 0.3]), r"3 mean values for 1 channels"),
    ],
)
def test_an_export_whose_config_contradicts_itself_is_refused_in_one_line(trained_run, tmp_path, edit, message):
    export = tmp_path / "export"
    shutil.copytree(trained_run / RUN / "student/last", export)
    config = json.loads((export / "config.json").read_text())
    edit(config)
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=rf"config.json' contradicts itself \({message}\): it was edited or damaged"):
        main(["predict", "--from", str(export), f"--data.init_args.predict_files=[{trained_run / 'one.jpg'}]"])


def test_predict_refuses_an_image_size_other_than_the_networks(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run)
    with pytest.raises(DataError, match=r"image_size is 64 but .* was trained on 28 px inputs: drop image_size"):
        main(["predict", "--from", RUN, "--data.init_args.predict_files=[photos/]", "--data.init_args.image_size=64"])


def test_predict_from_something_that_is_not_a_trained_network_says_what_to_give(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"is not a trained network: give an export folder"):
        main(["predict", "--from", str(tmp_path), "--data.init_args.predict_files=[x.png]"])


def test_every_export_carries_a_model_card(trained_run):
    card = (trained_run / RUN / "student/last/README.md").read_text()
    assert card.startswith("# cifar_resnet8 (MEAL V2, distilled from cifar_resnet8 + cifar_wrn_16_1)")
    for fact in (
        "parameters",
        "1 x 28 x 28, grey (L)",
        "bilinear",
        "mean [",
        "T-shirt/top",
        "val top-1 |",
        "teachers |",
    ):
        assert fact in card, fact


@pytest.mark.onnx
def test_the_docs_onnxruntime_script_agrees_with_predict_on_every_image(tmp_path, monkeypatch):
    """docs/own_data.md's plain onnxruntime script (no project import) on real Fashion-MNIST test images written as
    files, against `cli.py predict --from` on the same files, with the zoo's ResNet-20 teacher as the network."""
    from datamodules import fashion_mnist
    from models.onnx_export import export_folder_onnx

    if not fashion_mnist.SYSTEM_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (make data)")
    export = tmp_path / "resnet20"
    shutil.copytree(ROOT / "zoo/fashion_mnist/teacher_resnet20", export)
    (export / "manifest.json").unlink()
    export_folder_onnx(export)
    data = FashionMNISTData(str(fashion_mnist.SYSTEM_DIR), num_workers=0)
    data.setup("fit")
    write_images(tmp_path / "photos", np.asarray(data.test_set.images)[:2000])
    script = tmp_path / "classify.py"
    script.write_text(docs_block("docs/own_data.md", "import json\nimport sys\n"))
    files = sorted(str(p) for p in (tmp_path / "photos").iterdir())
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(export / "model.onnx"), *files], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plain = {Path(line.split(" ", 1)[0]).name: line.split(" ", 1)[1] for line in result.stdout.splitlines()}
    monkeypatch.chdir(tmp_path)
    main(["predict", "--from", str(export), f"--data.init_args.predict_files=[{tmp_path / 'photos'}]"])
    assert top1(Path("predictions/predictions.csv")) == plain and len(plain) == 2000
