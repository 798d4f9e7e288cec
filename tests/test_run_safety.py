"""Runs you can trust, through the CLI: no silent overwrite, requested checkpoints exist, wrong inputs stop in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from fixtures import cli_process, write_image_folder, write_meal_config, write_meal_config_for_data
from safetensors.torch import load_file

from cli import main
from console import USER_ERRORS
from datamodules import DataError
from errors import CheckpointError, ConfigError
from storage.run_folder import RunFolderError

ROOT = Path(__file__).resolve().parents[1]


def fixed_version(config_path, version: str = "main"):
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["logger"]["init_args"]["version"] = version
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_fit_into_a_finished_run_stops_and_says_how_to_resume_or_start_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    last = tmp_path / "runs/meal/main/checkpoints/last.ckpt"
    before = last.read_bytes()

    with pytest.raises(
        RunFolderError,
        match=r"already holds a run .*--ckpt_path last.*--trainer.logger.init_args.version=NAME.*--overwrite true",
    ) as info:
        main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    one_line(info)
    assert last.read_bytes() == before


def test_overwrite_true_replaces_the_previous_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path, data_args={"val_size": 16}))
    main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--overwrite=true"])
    run = tmp_path / "runs/meal/main"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4  # 1 epoch of 4 steps, not 2
    assert [p.name for p in run.glob("checkpoints/best-*.ckpt")] == ["best-epoch000.ckpt"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path, monkeypatch, subcommand):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="--ckpt_path last: no last\\*.ckpt under") as info:
        main([subcommand, "--config", str(write_meal_config(tmp_path)), "--ckpt_path=last"])
    assert ("drop --ckpt_path to start a new run" in one_line(info)) == (subcommand == "fit")


def test_ckpt_path_best_resolves_to_the_runs_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path, data_args={"val_size": 16})
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    cli = main(["validate", "--config", str(config), "--ckpt_path=best"])
    assert str(cli.trainer.ckpt_path).endswith("runs/meal/version_0/checkpoints/best-epoch000.ckpt")


def test_classifier_checkpoint_cannot_resume_meal_v2_and_the_reverse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meal_config = write_meal_config(tmp_path)
    main(["fit", "--config", str(meal_config), "--trainer.max_epochs=1"])
    meal_ckpt = tmp_path / "runs/meal/version_0/checkpoints/last.ckpt"
    classifier_config = yaml.safe_load(meal_config.read_text())
    classifier_config["model"] = {"class_path": "Classifier", "init_args": {"model": {"name": "cifar_resnet8"}}}
    classifier_config["trainer"]["logger"]["init_args"]["name"] = "classifier"
    (tmp_path / "classifier.yaml").write_text(yaml.safe_dump(classifier_config))
    main(["fit", "--config", str(tmp_path / "classifier.yaml"), "--trainer.max_epochs=1"])
    classifier_ckpt = tmp_path / "runs/classifier/version_0/checkpoints/last.ckpt"

    with pytest.raises(
        CheckpointError, match="is a Classifier checkpoint and cannot resume MealV2.*model.init_args.student.checkpoint"
    ) as info:
        main(["fit", "--config", str(meal_config), f"--ckpt_path={classifier_ckpt}"])
    one_line(info)
    with pytest.raises(
        CheckpointError, match="is a MealV2 checkpoint and cannot resume a Classifier.*model.init_args.model.checkpoint"
    ):
        main(["validate", "--config", str(tmp_path / "classifier.yaml"), f"--ckpt_path={meal_ckpt}"])


@pytest.mark.parametrize(
    "argument, error, message",
    [
        ("trainer.max_epochs=0", USER_ERRORS, "trainer.max_epochs is 0: give a positive number"),
        ("trainer.max_epochs=-2", USER_ERRORS, "must be a non-negative integer or -1"),
        ("model.init_args.lr=0", USER_ERRORS, "lr is 0.0: it must be positive"),
        ("data.init_args.batch_size=0", USER_ERRORS, "data.batch_size must be >= 1"),
        ("data.init_args.train_subset=8", DataError, "has 8 images, 8 per device: fewer than one batch of 16"),
        ("model.init_args.in_chans=3", ConfigError, "model.init_args.in_chans is 3 but the data gives 1: the data's "
         "value is linked into the model and wins"),
    ],
)  # fmt: skip
def test_a_bad_fit_argument_is_refused_in_one_line(tmp_path, monkeypatch, argument, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message) as info:
        main(["fit", "--config", str(write_meal_config(tmp_path)), f"--{argument}"])
    one_line(info)


def test_accelerator_gpu_without_a_gpu_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        cli_process("fit", write_meal_config(tmp_path), "--trainer.accelerator=gpu"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: ")
        and "torch sees no CUDA GPU on this machine" in result.stderr
    )


def test_download_without_network_is_one_line_that_says_what_to_do(tmp_path, monkeypatch):
    import datamodules.fashion_mnist as fashion_mnist

    def offline(*args, **kwargs):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error [Errno -3] Temporary failure>"
        )

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(fashion_mnist.datasets, "FashionMNIST", offline)
    data = fashion_mnist.FashionMNISTData(str(tmp_path / "empty"), download=True)
    with pytest.raises(
        DataError, match="Cannot download Fashion-MNIST into .*no network\\? Without network: install Debian's"
    ) as info:
        data.prepare_data()
    one_line(info)


def test_corrupt_image_in_a_folder_names_the_file_through_loader_workers(tmp_path):
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    broken = root / "train" / "class_1" / "2.JPEG"
    broken.write_bytes(b"not a jpeg")
    data = {
        "class_path": "ImageFolderData",
        "init_args": {
            "data_dir": str(root),
            "image_size": 32,
            "batch_size": 4,
            "num_workers": 1,
            "check_images": False,
        },
    }
    config = write_meal_config_for_data(tmp_path, data, num_classes=3)
    result = subprocess.run(
        cli_process("fit", config, "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line.startswith(f"error: Cannot read image '{broken}'") and last_line.endswith(
        "replace or remove the file."
    )


def test_a_full_disk_keeps_the_previous_checkpoint_whole_and_stops_in_one_line(tmp_path):
    """A write that fails part-way (here the file size limit, as a full disk would) leaves no half file."""
    import resource
    import signal

    config = write_meal_config(tmp_path)
    fit = cli_process("fit", config, "--trainer.limit_train_batches=2")
    fit += ["--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    subprocess.run([*fit, "--trainer.max_epochs=1"], cwd=tmp_path, check=True, capture_output=True)
    run = tmp_path / "runs/meal/version_0"
    before = {path: path.read_bytes() for path in run.rglob("*.ckpt")}

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))  # the export fits, a checkpoint not

    result = subprocess.run(
        [*fit, "--trainer.max_epochs=2", "--ckpt_path=last"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: Cannot write '")
        and ".ckpt' into" in line
        and f"' into '{run}" in line
        and "File too large" in line
    ), line
    assert "resume with --ckpt_path last" in line
    assert {path: path.read_bytes() for path in before} == before, "a previous checkpoint was damaged"
    for export in run.rglob("*.safetensors"):  # the students' exports fit the limit: rewritten, whole
        load_file(str(export))
    assert not [path for path in run.rglob("*partial*")], "a partial file was left behind"


def test_a_config_yaml_that_cannot_be_written_is_one_line_before_any_training(tmp_path, monkeypatch):
    from lightning.pytorch.cli import SaveConfigCallback

    from storage.atomic_files import WriteError

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SaveConfigCallback, "setup", full_disk)
    with pytest.raises(WriteError, match=r"config.yaml could not be written in .*: No space left on device\.$"):
        main(["fit", "--config", str(write_meal_config(tmp_path)), "--trainer.max_epochs=1"])
    assert not list(tmp_path.glob("runs/**/last.ckpt"))


def test_nothing_is_selected_on_the_test_images_when_val_is_the_test_set(tmp_path, monkeypatch):
    """Fashion-MNIST's val is its test split unless val_size holds training images out: then only the last epoch is kept."""
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    run = tmp_path / "runs/meal/version_0"
    assert [p.name for p in run.glob("checkpoints/*.ckpt")] == ["last.ckpt"]
    assert [p.name for p in run.glob("student/*")] == ["last"]
    with pytest.raises(CheckpointError, match="--ckpt_path best: no best"):
        main(["test", "--config", str(config), "--ckpt_path=best"])


def test_val_size_holds_out_training_images_for_validation_and_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path, data_args={"val_size": 16, "val_seed": 3})
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    data = cli.datamodule
    train, val, test = data.train_set, data.val_set, data.test_set
    assert (len(train), len(val), len(test)) == (80, 16, 32)
    pairs = {tuple(image.flatten().tolist()) for image in torch.cat([train.images, val.images])}
    assert len(pairs) == 96, "held-out images are also training images"
    assert torch.equal(val[0][0], data.finish(val.images[0])), "val images are augmented"
    assert torch.equal(data.raw_train_set().images, train.images), "the soft-label cache would see val images"
    run = tmp_path / "runs/meal/version_0"
    assert (
        len(list(run.glob("checkpoints/best-epoch*.ckpt"))) == 1 and (run / "student/best/model.safetensors").is_file()
    )


def test_image_folder_without_a_test_split_refuses_test_instead_of_scoring_val(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {
        "class_path": "ImageFolderData",
        "init_args": {"data_dir": str(write_image_folder(tmp_path / "images")), "image_size": 32, "batch_size": 4},
    }
    config = write_meal_config_for_data(tmp_path, data, num_classes=3)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    with pytest.raises(DataError, match="no test split .*set data.init_args.test_split, or use validate") as info:
        main(["test", "--config", str(config), "--ckpt_path=last"])
    one_line(info)


def test_validate_test_and_predict_record_beside_the_run_never_into_its_config_or_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/main"
    record = {path: path.read_bytes() for path in [run / "config.yaml", *run.glob("events.out.tfevents.*")]}

    student = run / "student/last/model.safetensors"  # the exported student, as a Classifier (docs/reliability.md)
    args = ["--model", "Classifier", "--model.model.name", "cifar_resnet8", "--model.model.checkpoint", str(student)]
    main(["validate", "--config", str(config), *args])
    main(["validate", "--config", str(config)])  # no checkpoint: the untrained student
    main(["test", "--config", str(config), "--ckpt_path=last"])

    assert {path: path.read_bytes() for path in [run / "config.yaml", *run.glob("events.out.tfevents.*")]} == record
    assert yaml.safe_load((run / "validate/config.yaml").read_text())["model"]["class_path"].endswith("MealV2")
    assert list((run / "validate").glob("events.out.tfevents.*")) and list((run / "test").glob("events.out.tfevents.*"))


def test_a_resume_that_fails_leaves_the_runs_config_as_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    saved = (tmp_path / "runs/meal/version_0/config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="discriminator"):
        main(["fit", "--config", str(config), "--model.init_args.discriminator=none", "--ckpt_path=last"])
    assert (tmp_path / "runs/meal/version_0/config.yaml").read_bytes() == saved


def test_a_resume_from_another_runs_checkpoint_continues_that_run_and_leaves_the_configs_run_alone(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--trainer.logger.init_args.version=v2"])
    finished = (tmp_path / "runs/meal/main/checkpoints/last.ckpt").read_bytes()
    other = tmp_path / "runs/meal/v2/checkpoints/last.ckpt"
    with caplog.at_level("INFO"):
        main(["fit", "--config", str(config), "--trainer.max_epochs=2", f"--ckpt_path={other}"])
    assert f"belongs to the run '{other.parent.parent}': this fit continues that run" in caplog.text
    assert (tmp_path / "runs/meal/main/checkpoints/last.ckpt").read_bytes() == finished
    assert torch.load(other, weights_only=True)["epoch"] == 1  # the resumed run went on to its second epoch


def test_a_validate_before_the_first_fit_does_not_block_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["validate", "--config", str(config)])
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    assert (tmp_path / "runs/meal/main/checkpoints/last.ckpt").is_file()


def test_a_fit_that_stopped_before_its_first_checkpoint_does_not_block_the_next(tmp_path, monkeypatch):
    from callbacks import NonFiniteTrainingError

    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    with pytest.raises(NonFiniteTrainingError):
        main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--model.init_args.lr=1e30"])
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/main"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1, "the stopped run's curve was mixed into the new one"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4


def test_overwrite_deletes_the_old_run_on_global_rank_zero_only(tmp_path, monkeypatch):
    """Under torchrun or srun every rank runs the CLI; only rank 0 may delete (the others would race it)."""
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/main"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--overwrite=true"]
    monkeypatch.setattr(pl.Trainer, "fit", lambda *args, **kwargs: None)  # the CLI's checks alone, no process group
    for rank in (1, 0):
        for key, value in {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "TORCHELASTIC_RUN_ID": "t"}.items():
            monkeypatch.setenv(key, value)
        cli = main(["fit", "--config", str(config), *ddp])
        assert cli.trainer.global_rank == rank
        assert (run / "checkpoints/last.ckpt").exists() == (rank == 1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_the_docs_cache_commands_run_as_written(tmp_path):
    """docs/speed.md's predict-then-fit lines, run by bash in a copy's layout, shrunk by appended options only."""
    block = (ROOT / "docs/speed.md").read_text().split("```bash\nCACHE=")[1].split("```")[0]
    lines = ("CACHE=" + block).strip().splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [["python", "cli.py", "predict"], ["python", "cli.py", "fit"]]
    shrink = " --data.init_args.train_subset=256 --trainer.max_epochs=1 --trainer.limit_val_batches=2 --trainer.enable_progress_bar=false"
    shrink += " --soft_label_writer.check_batches=2"  # the ensemble's check before generation: 2 val batches
    script = "\n".join([lines[0], *(line + shrink for line in lines[1:])])
    for name in (
        "cli.py",
        "private_apis.py",
        "configs",
        "zoo",
        "callbacks",
        "datamodules",
        "lightning_modules",
        "models",
        "storage",
    ):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs/fashion_mnist/resnet8_from_resnet20+wrn_16_2/main"
    assert (tmp_path / "cache/fmnist/meta.json").is_file() and (run / "checkpoints/last.ckpt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["soft_labels"]["crops"] == 8
    assert (run / "predict/config.yaml").is_file()


@pytest.mark.parametrize("where", ["no logger, the current folder", "default_root_dir"])
def test_fit_never_deletes_or_writes_into_a_folder_it_did_not_make_a_run_of(tmp_path, monkeypatch, where):
    config = write_meal_config(tmp_path)
    mine = tmp_path / "my_project"
    for name in ("test/img.png", "validate/notes.txt", "config.yaml", "hparams.yaml"):
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("mine")
    monkeypatch.chdir(mine if where.startswith("no logger") else tmp_path)
    args = ["fit", "--config", str(config), "--trainer.logger=false", "--trainer.max_epochs=1"]
    if where == "default_root_dir":
        args.append(f"--trainer.default_root_dir={mine}")
    with pytest.raises(
        RunFolderError, match="is not a run folder this project made .* nothing there is touched"
    ) as info:
        main(args)
    one_line(info)
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*") if p.is_file()) == [
        "config.yaml",
        "hparams.yaml",
        "test/img.png",
        "validate/notes.txt",
    ]
    assert all(p.read_text() == "mine" for p in mine.rglob("*") if p.is_file())


def test_a_run_folder_is_marked_and_overwritten_only_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/main"
    assert (run / ".meal_v2_run").is_file()
    (run / ".meal_v2_run").unlink()  # e.g. a folder someone filled by hand
    with pytest.raises(RunFolderError, match="not a run folder this project made"):
        main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--overwrite=true"])
    assert (run / "checkpoints/last.ckpt").is_file()


TAKE_LOCK = """
import sys
from pathlib import Path
from errors import RunFolderError
from storage.run_folder import acquire_lock
try:
    acquire_lock(Path(sys.argv[1]))
    print("won" if "torch" not in sys.modules else "imported torch", flush=True)
except RunFolderError as error:
    print("lost: " + str(error), flush=True)
sys.stdin.read()  # hold it until told
"""


def take_lock(run: Path) -> subprocess.Popen:
    """A process (no torch) that tries to take ``run``'s lock, prints won / lost, and holds on until its stdin closes."""
    return subprocess.Popen(
        [sys.executable, "-c", TAKE_LOCK, str(run)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_a_fit_into_a_run_folder_in_use_stops_in_one_line_and_a_dead_ones_lock_is_free(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fixed_version(write_meal_config(tmp_path))
    run = tmp_path / "runs/meal/main"
    holder = take_lock(run)
    try:
        assert holder.stdout.readline() == "won\n"
        with pytest.raises(
            RunFolderError, match=rf"runs/meal/main' is in use by another fit \(pid {holder.pid} "
        ) as info:
            main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
        assert "--trainer.logger.init_args.version=NAME" in one_line(info)
        assert not list(run.glob("checkpoints/*"))
    finally:
        holder.kill()  # dies without releasing anything: the kernel does
        holder.wait()
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    assert (run / "checkpoints/last.ckpt").is_file()
    after = take_lock(run)
    assert after.communicate("")[0] == "won\n", "the lock outlived the fit"


def test_of_eight_processes_racing_for_a_run_folder_exactly_one_wins_every_round(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".meal_v2_lock").write_text('{"pid": 999999999, "host": "here"}')  # a lock file of the old format: stale
    for _ in range(20):
        racers = [take_lock(run) for _ in range(8)]
        answers = [racer.stdout.readline().strip() for racer in racers]  # all have tried; the winner still holds
        assert sorted(a.split(":")[0] for a in answers) == ["lost"] * 7 + ["won"], answers
        for racer, answer in zip(racers, answers, strict=True):
            racer.kill() if answer == "won" else racer.communicate("")  # the winner crashes
            racer.wait()


@pytest.mark.slow
def test_two_fits_started_together_into_one_run_never_both_run(tmp_path):
    config = fixed_version(write_meal_config(tmp_path))
    fit = cli_process("fit", config, "--trainer.max_epochs=1")
    fit += ["--trainer.enable_progress_bar=false"]
    runs = [subprocess.Popen(fit, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 1], results
    refused = next(stderr for code, stderr in results if code == 1).strip().splitlines()[-1]
    assert refused.startswith("error: ") and ("is in use by another fit" in refused or "already holds a run" in refused)
    assert take_lock(tmp_path / "runs/meal/main").communicate("")[0] == "won\n"  # released with the fits


def test_a_checkpoint_trained_for_other_classes_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    three, four = write_image_folder(tmp_path / "three", 3, 4, 2), write_image_folder(tmp_path / "four", 4, 4, 2)
    data = {"class_path": "ImageFolderData", "init_args": {"data_dir": str(three), "image_size": 32, "batch_size": 4}}
    model = {"class_path": "Classifier", "init_args": {"model": {"name": "test_resnet"}}}
    logger = {"class_path": "TensorBoardLogger", "init_args": {"save_dir": str(tmp_path / "runs"), "name": "c"}}
    config = tmp_path / "classifier.yaml"
    config.write_text(yaml.safe_dump({"model": model, "data": data, "trainer": {"logger": logger}}))
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    with pytest.raises(ConfigError, match=r"does not fit this model: .* \(num_classes 3 there, 4 here\)") as info:
        main(["validate", "--config", str(config), f"--data.init_args.data_dir={four}", "--ckpt_path=last"])
    one_line(info)


def image_folder_config(tmp_path, root, **data_args):
    data = {"data_dir": str(root), "image_size": 32, "batch_size": 4, "num_workers": 0, **data_args}
    return write_meal_config_for_data(tmp_path, {"class_path": "ImageFolderData", "init_args": data}, num_classes=3)


def test_a_truncated_jpeg_stops_the_run_before_training_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    truncated = root / "train" / "class_2" / "1.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:-300])
    with pytest.raises(
        DataError,
        match=r"^1 of 18 images cannot be read; the first: Cannot read image '.*1.JPEG' \(image file is truncated",
    ) as info:
        main(["fit", "--config", str(image_folder_config(tmp_path, root)), "--trainer.max_epochs=1"])
    one_line(info)
    assert not list(tmp_path.glob("runs/meal/*/checkpoints")), "training started"


def test_an_image_too_large_to_decode_safely_is_named(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    Image.new("L", (200, 200)).save(root / "train" / "class_0" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 is over twice that: PIL's bomb error
    with pytest.raises(
        DataError, match=r"Image '.*huge.png' is too large to decode safely .*shrink or remove it"
    ) as info:
        main(["fit", "--config", str(image_folder_config(tmp_path, root)), "--trainer.max_epochs=1"])
    one_line(info)


def test_gifs_and_images_in_sub_folders_of_a_class_are_read_and_other_files_listed_once(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    Image.new("P", (40, 40)).save(root / "train" / "class_0" / "frame.gif")
    nested = root / "train" / "class_1"
    (nested / "2024").mkdir()
    for image in list(nested.glob("*.JPEG")):
        image.rename(nested / "2024" / image.name)  # class_1's images only in a sub-folder
    (nested / "notes.txt").write_text("not an image")
    with pytest.warns(
        UserWarning, match=r"1 files are not images this project reads and are skipped \(.txt; e.g. '.*notes.txt'\)"
    ):
        cli = main(["fit", "--config", str(image_folder_config(tmp_path, root)), "--trainer.max_epochs=1"])
    samples = [Path(path).relative_to(root / "train").as_posix() for path, _ in cli.datamodule.train_set.samples]
    assert "class_0/frame.gif" in samples and sum(s.startswith("class_1/2024/") for s in samples) == 4


def test_a_class_folder_without_images_anywhere_says_so_accurately(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    for image in (root / "train" / "class_2").glob("*.JPEG"):
        image.unlink()
    ((root / "train" / "class_2") / "empty_sub").mkdir()
    with pytest.raises(DataError, match=r"class_2' has no images, in it or its sub-folders") as info:
        main(["fit", "--config", str(image_folder_config(tmp_path, root)), "--trainer.max_epochs=1"])
    one_line(info)


def test_validate_without_a_logger_writes_nothing_into_the_current_folder(tmp_path, monkeypatch):
    config = write_meal_config(tmp_path)
    work = tmp_path / "my_project"
    work.mkdir()
    monkeypatch.chdir(work)
    main(["validate", "--config", str(config), "--trainer.logger=false"])
    assert list(work.iterdir()) == []


def read_only(path: Path, on: bool) -> bool:
    """Make a folder tree unwritable (chmod; for root, which chmod does not stop, the immutable attribute)."""
    if os.geteuid() != 0:
        for item in [path, *path.rglob("*")]:
            item.chmod(item.stat().st_mode & ~0o222 if on else item.stat().st_mode | 0o200)
        return True
    return subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_read_only_run_folder_stops_in_one_line_before_any_work(tmp_path, monkeypatch, subcommand):
    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "runs/meal/version_0"
    if not read_only(run, True):
        pytest.skip("cannot make a folder read-only for root here (chattr +i needs ext4 and CAP_LINUX_IMMUTABLE)")
    try:
        with pytest.raises(RunFolderError, match=rf"Cannot write into '{run}' \(.*\): make it writable") as info:
            main([subcommand, "--config", str(config), "--ckpt_path=last", "--trainer.max_epochs=2"])
        one_line(info)
    finally:
        read_only(run, False)
