"""End-to-end: the CLI's fit / validate / test on generated data in the real on-disk formats."""

from __future__ import annotations

import pytest
import yaml
from fixtures import write_cifar, write_image_folder, write_meal_config
from fixtures import write_meal_config_for_data as meal_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import zoo
from cli import main


def image_folder_meal_config(tmp_path, train_per_class: int, val_per_class: int):
    root = write_image_folder(
        tmp_path / "imagenet", num_classes=5, train_per_class=train_per_class, val_per_class=val_per_class, size=40
    )
    data = {
        "class_path": "ImageFolderData",
        "init_args": {"data_dir": str(root), "image_size": 32, "batch_size": 4, "num_workers": 0},
    }
    return meal_config(tmp_path, data, num_classes=5)


def test_fit_validate_test_on_image_folder_writes_logs_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = image_folder_meal_config(tmp_path, train_per_class=4, val_per_class=2)

    main(["fit", "--config", str(config)])
    run_dir = tmp_path / "runs" / "meal" / "version_0"
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-epoch") for name in checkpoints)

    last = str(run_dir / "checkpoints" / "last.ckpt")
    validate = main(["validate", "--config", str(config), "--ckpt_path", last])
    assert {"val/top1", "val/top5", "val/loss", "val/ensemble_top1", "val/teacher0_top1"} <= set(
        validate.trainer.callback_metrics
    )
    test = main(["test", "--config", str(config), "--ckpt_path", last, "--data.init_args.test_split=val"])
    assert "test/top1" in test.trainer.callback_metrics


def test_fit_on_cifar_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_cifar(tmp_path / "cifar", "cifar10")
    data = {
        "class_path": "CIFARData",
        "init_args": {"data_dir": str(root), "variant": "cifar10", "batch_size": 8, "num_workers": 0},
    }
    cli = main(["fit", "--config", str(meal_config(tmp_path, data, num_classes=10))])
    metrics = cli.trainer.callback_metrics
    assert {"train/kd_loss", "train/discriminator_loss", "train/loss", "train/agreement", "val/top1"} <= set(metrics)
    assert cli.model.student.num_classes == 10


def test_rerun_into_the_same_run_directory_works_when_asked_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = image_folder_meal_config(tmp_path, train_per_class=2, val_per_class=1)
    args = ["fit", "--config", str(config), "--trainer.logger.init_args.version=main", "--trainer.max_epochs=1"]
    main(args)
    main(args + ["--overwrite=true"])  # config.yaml from the first run does not block the second
    assert (tmp_path / "runs" / "meal" / "main" / "config.yaml").is_file()


def test_print_config_shows_every_knob(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imagenet", num_classes=5, train_per_class=1, val_per_class=1)
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--model=MealV2",
                "--model.teachers=[{name: cifar_resnet20}]",
                "--model.student.name=cifar_resnet20",
                "--data=ImageFolderData",
                f"--data.data_dir={root}",
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    knobs = printed["model"]["init_args"]
    assert {
        "teachers",
        "student",
        "discriminator",
        "lr",
        "d_lr",
        "weight_decay",
        "schedule",
        "milestones",
        "cutmix_prob",
    } <= set(knobs)
    assert knobs["teachers"][0]["name"] == "cifar_resnet20" and "checkpoint" in knobs["teachers"][0]
    assert printed["checkpoint"]["monitor"] == "val/top1"
    assert printed["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")


def test_runs_record_hparams_with_their_final_top1_and_every_groups_lr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    main(["test", "--config", str(config), "--ckpt_path=last"])
    run = tmp_path / "runs/meal/version_0"
    tags = {
        tag
        for file in [*run.glob("events.out.tfevents.*"), *run.glob("test/events.out.tfevents.*")]
        for tag in EventAccumulator(str(file)).Reload().Tags()["scalars"]
    }
    assert {"hparams/val_top1", "hparams/test_top1", "lr-SGD/student", "lr-SGD/discriminator"} <= tags
    assert {"hparams/val_nll", "hparams/val_ece", "hparams/test_nll", "hparams/test_ece"} <= tags
    assert zoo.read_scalars(run / "test", "hparams/test_top1"), "test recorded outside its own folder"
    assert "hp_metric" not in tags and "lr" not in tags
    assert zoo.read_scalars(run, "hparams/val_top1") == zoo.read_scalars(run, "val/top1")[-1:]


def hparams_record(run) -> tuple[dict, list[str], list[str]]:
    """What a run's events give TensorBoard's HParams tab, read by TensorBoard: the session's values, and the
    experiment's columns and metrics in the order the table shows them."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    values, columns, metrics = {}, [], []
    for file in run.glob("events.out.tfevents.*"):
        accumulator = PluginAccumulator(str(file), size_guidance={"tensors": 0}).Reload()
        tags = accumulator.Tags()["tensors"]
        if "_hparams_/session_start_info" in tags:
            content = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
            hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
            values.update({key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()})
        if "_hparams_/experiment" in tags:
            content = accumulator.SummaryMetadata("_hparams_/experiment").plugin_data.content
            experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
            columns = [info.name for info in experiment.hparam_infos]
            metrics = [info.name.tag for info in experiment.metric_infos]
    return values, columns, metrics


def test_every_run_shows_the_same_columns_in_order_with_val_top1_first_and_one_name_per_loss(tmp_path, monkeypatch):
    """A Classifier run and a MEAL V2 run in one log folder: the HParams table reads method, student, teachers, ...
    for both; the hard-label loss and MEAL V2's loss never share a chart."""
    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "--config", str(write_meal_config(tmp_path)), "--trainer.max_epochs=1", "--trainer.log_every_n_steps=1"]
    )
    classifier = write_meal_config(tmp_path / "c")
    model = ["--model=Classifier", "--model.model.name=cifar_resnet8", "--trainer.log_every_n_steps=1"]
    main(["fit", "--config", str(classifier), *model, "--trainer.max_epochs=1"])
    meal, meal_columns, meal_metrics = hparams_record(tmp_path / "runs/meal/version_0")
    baseline, baseline_columns, _ = hparams_record(tmp_path / "c/runs/meal/version_0")
    order = ["method", "student", "teachers", "discriminator", "epochs", "lr", "weight_decay", "batch_size", "seed"]
    assert meal_columns == baseline_columns == [f"{i:02d} {name}" for i, name in enumerate([*order, "precision"], 1)]
    assert sorted(meal_columns) == meal_columns  # TensorBoard sorts them by name: the same order on screen
    meal = {key[3:]: value for key, value in meal.items()}
    baseline = {key[3:]: value for key, value in baseline.items()}
    assert meal_metrics[0] == "hparams/val_top1" and "hparams/test_top1" in meal_metrics
    assert meal["method"] == "MEAL V2" and meal["teachers"] == "cifar_resnet8 + cifar_wrn_16_1"
    assert meal["discriminator"] == "official" and meal["student"] == "cifar_resnet8"
    assert meal["lr"] == pytest.approx(0.05) and meal["epochs"] == 1 and meal["batch_size"] == 16
    assert meal["seed"] == 7 and meal["precision"] == "32-true"
    assert baseline["method"] == "hard labels" and baseline["teachers"] == "-" and baseline["discriminator"] == "-"
    assert "None" not in {str(v) for v in {**meal, **baseline}.values()}

    def scalar_tags(run):
        return set(EventAccumulator(str(next(run.glob("events*")))).Reload().Tags()["scalars"])

    meal_tags, baseline_tags = (
        scalar_tags(tmp_path / "runs/meal/version_0"),
        scalar_tags(tmp_path / "c/runs/meal/version_0"),
    )
    assert {"train/kd_loss", "train/kd_loss_epoch", "train/loss", "train/discriminator_loss", "val/top1"} <= meal_tags
    assert {"train/ce_loss", "train/ce_loss_epoch", "val/top1"} <= baseline_tags
    assert not baseline_tags & {"train/loss", "train/loss_epoch", "train/kd_loss"}
    assert not [tag for tag in meal_tags | baseline_tags if tag.endswith("_step")]


def test_one_notion_of_best_the_export_follows_the_checkpoint_monitor(tmp_path, monkeypatch):
    from callbacks import ExportStudent

    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path, data_args={"val_size": 16})
    cli = main(["--config", str(config), "--checkpoint.monitor=val/loss", "--checkpoint.mode=min"], run=False)
    export = next(c for c in cli.trainer.callbacks if isinstance(c, ExportStudent))
    assert (export.monitor, export.mode) == ("val/loss", "min")
    assert (cli.trainer.checkpoint_callback.monitor, cli.trainer.checkpoint_callback.mode) == ("val/loss", "min")
