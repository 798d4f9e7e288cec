"""Command line: ``python cli.py {fit,validate,test,predict} --config configs/...yaml [--ckpt_path last]``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import callbacks  # noqa: F401  (makes the short class names resolvable)
import datamodules  # noqa: F401
import lightning_modules  # noqa: F401
from callbacks import (
    ClassPredictionWriter,
    ExportStudent,
    FiniteLossGuard,
    HParamsWithResults,
    LastCheckpoint,
    NonFiniteLossError,
    RestoreRandomState,
    SigtermOnEveryRank,
    SoftLabelWriter,
)
from callbacks.atomic_files import AtomicCheckpointIO, DamagedFileError, WriteError, verify_file
from datamodules.base import ClassificationDataModule, DataError
from datamodules.exported import find_trained_network
from lightning_modules.errors import ConfigError
from lightning_modules.model_loading import ModelLoadingError
from run_folder import (
    RUN_MARKER,
    RunFolderError,
    acquire_lock,
    check_writable,
    is_marked,
    mark,
    release_locks,
    run_files,
    run_records,
)

# Expected in this project and nothing a user can act on, so kept off the console (narrowly, by message):
# MealV2's frozen teachers are in eval mode at the start of training by design (they ignore .train());
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
# Lightning 2.6's model summary cannot size bf16/fp16 mixed precision (only its MB estimate is off);
warnings.filterwarnings("ignore", message=r"Precision \S+ is not supported by the model summary")
# Lightning's own use of a torch pytree API that torch deprecated (Lightning's code, not ours or the user's).
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class _WithoutAdvert(logging.Filter):
    """Lightning's tip advertising a cloud logger on every run is not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_WithoutAdvert())

DEFAULTS = {
    # best student by val/top1
    "checkpoint.monitor": "val/top1",
    "checkpoint.mode": "max",
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
    # last.ckpt for resume, rewritten every epoch (or every_n_train_steps when set). Monitoring "step"
    # makes it save on every trigger; Lightning's save_last alone only follows saves of the same callback.
    "last_checkpoint.monitor": "step",
    "last_checkpoint.mode": "max",
    "last_checkpoint.save_top_k": 1,
    "last_checkpoint.filename": "last",
    "last_checkpoint.enable_version_counter": False,
    # every group's lr (student and discriminator), once per epoch
    "lr_monitor.logging_interval": "epoch",
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
    },
}
NAMED_CHECKPOINTS = {"last", "best", "hpc", "registry"}
# DataModule facts linked into the model: (data attribute, model argument)
LINKS = (("num_classes", "num_classes"), ("in_chans", "in_chans"), ("mean", "data_mean"), ("std", "data_std"))


class CheckpointError(ValueError):
    """A --ckpt_path that cannot be used."""


# Lightning's MisconfigurationException: one-line refusals such as accelerator 'gpu' without a GPU, max_epochs -2.
USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DamagedFileError,
    DataError,
    ModelLoadingError,
    NonFiniteLossError,
    RunFolderError,
    WriteError,
    MisconfigurationException,
)


def _user_error(error: BaseException):
    """The project's own one-line error inside jsonargparse's wrapping, if there is one."""
    while error is not None:
        if isinstance(error, USER_ERRORS):
            return error
        error = error.__cause__ or error.__context__
    return None


class SaveConfigOnceTrainingStarts(SaveConfigCallback):
    """``fit`` writes the run's ``config.yaml`` when training starts, after a resume's checkpoint has loaded:
    a fit that fails before (a wrong checkpoint, bad data) leaves the run's record as it was. ``validate``,
    ``test`` and ``predict`` record theirs in the logger's sub-folder; without a logger, nowhere (not the current folder)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" and trainer.logger is not None:
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")


class MealCLI(LightningCLI):
    """LightningCLI whose DataModule facts (classes, channels, normalization) flow into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(ExportStudent, "export_student")
        parser.add_lightning_class_args(FiniteLossGuard, "finite_loss_guard")
        parser.add_lightning_class_args(RestoreRandomState, "restore_random_state")
        parser.add_lightning_class_args(SigtermOnEveryRank, "sigterm_on_every_rank")
        parser.add_lightning_class_args(SoftLabelWriter, "soft_label_writer")
        parser.add_lightning_class_args(ClassPredictionWriter, "predictions")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(HParamsWithResults, "hparams_with_results")
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: replace the run already in the run directory (its checkpoints, exported student and logs)",
        )
        parser.set_defaults(DEFAULTS)
        try:
            parser.set_defaults({"return_predictions": False})  # predict's writers write; keep nothing in memory
        except KeyError:  # only the predict subcommand's parser has it
            pass
        for source, target in LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        for key in ("monitor", "mode"):  # one notion of "best": the exported best is the best checkpoint's epoch
            parser.link_arguments(f"checkpoint.{key}", f"export_student.{key}")

    def _subcommand_config(self):
        return self.config.get(self.subcommand) if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        args = tensorboard_args(config)
        if self.subcommand in ("validate", "test", "predict") and args is not None and not args.get("sub_dir"):
            args.sub_dir = self.subcommand  # its record sits beside the run's, never in its curves or config
        accelerator = str(config.get("trainer.accelerator") or "auto")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator is '{accelerator}' but torch sees no CUDA GPU on this machine "
                "(torch.cuda.is_available() is False): use --trainer.accelerator cpu (or auto), or install a CUDA build of torch."
            )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = _user_error(error)
            if cause is None or cause is error:
                raise
            raise cause from None
        self._check_linked_values()
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's or a TPU's own writer
            strategy.checkpoint_io = AtomicCheckpointIO()

    def _check_linked_values(self) -> None:
        """The data's classes, channels and normalization win over a model value the user set: say so instead of ignoring it."""
        config = self._subcommand_config()
        for source, target in LINKS:
            given, actual = config.get(f"model.init_args.{target}"), getattr(self.datamodule, source, None)
            if given is not None and actual is not None and _plain(given) != _plain(actual):
                raise ConfigError(
                    f"model.init_args.{target} is {_plain(given)} but the data gives {_plain(actual)}: the data's value is "
                    f"linked into the model and wins; set it on the data (data.init_args) or drop model.init_args.{target}."
                )

    def _parse_ckpt_path(self) -> None:
        """Check --ckpt_path before anything is built, and keep the given config.

        ``last`` and ``best`` are resolved here to the file of this config's run, so a checkpoint that
        does not exist is an error instead of Lightning's warning and an untrained model. LightningCLI
        (2.5.5+) would also overwrite the model's config with the checkpoint's hyperparameters, silently
        ignoring what the user passed (e.g. a moved teacher file or a new lr): here the config wins.
        This overrides LightningCLI's private hook of that name (there is no public one before the model
        is built); tests/test_run_safety.py and tests/test_resume.py pin both behaviours.
        """
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return
        ckpt_path = str(config["ckpt_path"])
        if ckpt_path in ("last", "best"):
            ckpt_path = str(find_named_checkpoint(config, ckpt_path, subcommand))
            config["ckpt_path"] = ckpt_path
        elif ckpt_path == "hpc":
            ckpt_path = str(find_hpc_checkpoint(config))
            config["ckpt_path"] = ckpt_path
        if ckpt_path not in NAMED_CHECKPOINTS:
            checkpoint = check_checkpoint_file(ckpt_path)
            check_checkpoint_fits_model(checkpoint, ckpt_path, str(config.get("model.class_path", "")))
        continue_logger_version(config, ckpt_path)  # resumed curves, and evaluations, go to the checkpoint's run

    def before_fit(self) -> None:
        """A run directory that holds a run is resumed or replaced on request, never overwritten silently."""
        config = self.config[self.subcommand]
        if self.trainer.max_epochs is not None and (self.trainer.max_epochs == 0 or self.trainer.max_epochs < -1):
            raise ConfigError(
                f"trainer.max_epochs is {self.trainer.max_epochs}: give a positive number of epochs (or -1 for no limit)."
            )
        self._select_nothing_on_test_images()
        stop_on_interrupt_like_a_preemption()
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        check_writable(run_dir)
        if config.get("ckpt_path"):
            if first_process(self.trainer):
                acquire_lock(run_dir)
            return
        found = run_files(run_dir) + run_records(run_dir)
        if found and not is_marked(run_dir):
            raise ConfigError(
                f"'{run_dir}' holds {found[0].relative_to(run_dir)} but is not a run folder this project made (no "
                f"{RUN_MARKER}), so nothing there is touched: give the run its own folder (a logger, or "
                "--trainer.default_root_dir NEW_FOLDER)."
            )
        if first_process(self.trainer):  # one fit writes into a run folder; a second one started beside it stops here
            acquire_lock(run_dir)
        previous = run_files(run_dir)
        if previous and not config.get("overwrite"):
            resume = "resume it with --ckpt_path last, " if list(run_dir.glob("checkpoints/last*.ckpt")) else ""
            raise ConfigError(
                f"Run directory '{run_dir}' already holds a run ({previous[0].relative_to(run_dir)}): {resume}"
                "start another with --trainer.logger.init_args.version=NAME (or another name), or replace it with --overwrite true."
            )
        if not first_process(self.trainer):  # under torchrun or srun every rank runs this; one deletes
            return
        for path in previous + run_records(run_dir):  # a fit that stopped before saving anything leaves records only
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        mark(run_dir)

    def before_validate(self) -> None:
        self._check_record_folder()

    def before_test(self) -> None:
        self._check_record_folder()

    def before_predict(self) -> None:
        self._check_record_folder()

    def _check_record_folder(self) -> None:
        """validate, test and predict record into the run's sub-folder: say so now if it cannot be written."""
        if self.trainer.logger is not None and self.trainer.log_dir:
            check_writable(Path(self.trainer.log_dir))

    def _select_nothing_on_test_images(self) -> None:
        """Where validation scores the test images, no checkpoint or export is chosen on them: only the last is kept."""
        if not getattr(self.datamodule, "val_is_test", False):
            return
        for callback in list(self.trainer.callbacks):
            if type(callback) is ModelCheckpoint and str(callback.monitor).startswith("val/"):
                self.trainer.callbacks.remove(callback)
            elif isinstance(callback, ExportStudent):
                callback.monitor = None
        rank_zero_info(
            "Validation runs on the test images (no held-out split), so no 'best' checkpoint or export is selected: "
            "last.ckpt and the last export hold the final epoch. Hold out training images with data.init_args.val_size N."
        )


def first_process(trainer) -> bool:
    """Global rank 0 before ``fit`` starts: Lightning's own launcher starts the other ranks as copies of this command
    whose trainer does not know its rank yet, but whose environment does (``LOCAL_RANK``, ``NODE_RANK``)."""
    launched = any(int(os.environ.get(name, "0") or 0) != 0 for name in ("LOCAL_RANK", "NODE_RANK"))
    return trainer.is_global_zero and not launched


def _plain(value):
    return [round(float(v), 6) for v in value] if isinstance(value, (list, tuple)) else value


def tensorboard_args(config):
    """The TensorBoardLogger's init_args in the parsed config, or None for another logger or none."""
    logger = config.get("trainer.logger")
    if (
        logger is None
        or isinstance(logger, bool)
        or not str(logger.get("class_path", "")).endswith("TensorBoardLogger")
    ):
        return None
    return logger.get("init_args")


def tensorboard_run_root(args) -> Path:
    """save_dir/name: the folder holding a TensorBoardLogger's version folders."""
    return Path(args.get("save_dir") or "runs") / (args.get("name") or "lightning_logs")


def run_directories(config) -> list[Path]:
    """Where this config's runs live: the TensorBoard version folders (the fixed one, or all), else default_root_dir."""
    args = tensorboard_args(config)
    if args is not None:
        run_root = tensorboard_run_root(args)
        version = args.get("version")
        if version is not None:
            return [run_root / (version if isinstance(version, str) else f"version_{version}")]
        return sorted(p for p in run_root.glob("*") if p.is_dir())
    return [Path(config.get("trainer.default_root_dir") or ".")]


def find_named_checkpoint(config, name: str, subcommand: str) -> Path:
    """The newest ``last*.ckpt`` / ``best*.ckpt`` of this config's runs, or a one-line error saying what to do."""
    candidates = [p for folder in run_directories(config) for p in folder.glob(f"checkpoints/{name}*.ckpt")]
    if not candidates:
        where = ", ".join(str(p) for p in run_directories(config)) or "the logger's folder"
        fresh = " (drop --ckpt_path to start a new run)" if subcommand == "fit" else ""
        raise CheckpointError(
            f"--ckpt_path {name}: no {name}*.ckpt under {where}: check the config's logger name/version{fresh}."
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def find_hpc_checkpoint(config) -> Path:
    """Lightning's SLURM requeue checkpoint: the highest ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir``."""
    folder = Path(config.get("trainer.default_root_dir") or ".")
    found = [
        (int(p.stem.rsplit("_", 1)[1]), p) for p in folder.glob("hpc_ckpt_*.ckpt") if p.stem.rsplit("_", 1)[1].isdigit()
    ]
    if not found:
        raise CheckpointError(
            f"--ckpt_path hpc: no hpc_ckpt_N.ckpt in '{folder}' (where SLURM requeue saves): give the file, or 'last'."
        )
    return max(found)[1]


def check_checkpoint_file(path: str) -> dict:
    """Refuse a missing, corrupt or foreign --ckpt_path in one line, before anything is built; returns it memory-mapped."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(
            f"--ckpt_path '{path}' does not exist: give a .ckpt file written by this project, or 'last'."
        )
    verify_file(file)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"--ckpt_path '{path}' cannot be read ({reason[:200]}): it is corrupt or not a Lightning checkpoint."
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "state_dict" not in checkpoint
        or "pytorch-lightning_version" not in checkpoint
    ):
        raise CheckpointError(
            f"--ckpt_path '{path}' is not a Lightning checkpoint: for plain weights use model.*.checkpoint instead."
        )
    return checkpoint


def check_checkpoint_fits_model(checkpoint: dict, path: str, model_class: str) -> None:
    """A Classifier checkpoint does not resume MealV2, nor the reverse: say how to start from its weights instead."""
    prefixes = {key.split(".", 1)[0] for key in checkpoint["state_dict"]}
    if model_class.endswith("MealV2") and "student" not in prefixes and "model" in prefixes:
        raise CheckpointError(
            f"--ckpt_path '{path}' is a Classifier checkpoint and cannot resume MealV2: to start the student "
            f"from its weights set model.init_args.student.checkpoint: {path} and drop --ckpt_path."
        )
    if model_class.endswith("Classifier") and "model" not in prefixes and "student" in prefixes:
        raise CheckpointError(
            f"--ckpt_path '{path}' is a MealV2 checkpoint and cannot resume a Classifier: to start from its "
            f"student set model.init_args.model.checkpoint: {path} and drop --ckpt_path."
        )


def continue_logger_version(config, ckpt_path: str) -> None:
    """Log into the run directory the checkpoint came from: resumed curves continue, evaluations sit with their run."""
    args = tensorboard_args(config)
    if args is None or args.get("version") is not None:
        return
    version = _version_of(Path(ckpt_path), tensorboard_run_root(args))
    if version is not None:
        args.version = version


def _version_of(ckpt: Path, run_root: Path) -> Optional[str]:
    try:
        relative = ckpt.resolve().relative_to(run_root.resolve())
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) >= 3 else None


_interrupted = {"by": None, "previous": None}


def stop_on_interrupt_like_a_preemption() -> None:
    """During ``fit``, Ctrl+C (SIGINT) stops as SIGTERM does: the current step ends, ``last.ckpt`` is saved and the
    command exits non-zero saying how to resume. A second Ctrl+C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        return

    def as_sigterm(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # Lightning's handler is not in place yet
            raise KeyboardInterrupt
        _interrupted["by"] = "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)

    _interrupted["previous"] = signal.signal(signal.SIGINT, as_sigterm)


def predict_from(args: list[str]) -> list[str]:
    """``predict --from PATH`` (an export folder, a run folder, or a checkpoint in one) is shorthand for the network
    alone as a ``Classifier`` and ``FilesToClassify`` with that network's preprocessing and class names: no training
    data and no teacher. Predictions go to the run's ``predict/`` folder, or ``./predictions`` for a lone export."""
    at = next((i for i, a in enumerate(args) if a == "--from" or a.startswith("--from=")), None)
    if not args or args[0] != "predict" or at is None:
        return args
    path = args[at].split("=", 1)[1] if "=" in args[at] else (args[at + 1] if at + 1 < len(args) else "")
    rest = args[:at] + args[at + (1 if "=" in args[at] else 2) :]
    network = find_trained_network(path)
    output = network.run / "predict" if network.run is not None else Path("predictions")
    expanded = ["--model", "Classifier", "--model.model.name", network.architecture]
    expanded += ["--model.model.checkpoint", str(network.weights), "--data", "FilesToClassify", "--data.network", path]
    expanded += ["--trainer.logger", "false", "--predictions.output_dir", str(output)]
    return [rest[0], *expanded, *rest[1:]]


def main(args=None, run: bool = True) -> MealCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates."""
    if args is None:
        sys.argv[1:] = predict_from(sys.argv[1:])  # LightningCLI reads sys.argv itself
    else:
        args = predict_from(list(args))
    try:
        return _cli(args, run)
    finally:
        release_locks()
        if _interrupted["previous"] is not None:
            signal.signal(signal.SIGINT, _interrupted["previous"])
            _interrupted["previous"] = None


def _cli(args, run: bool) -> MealCLI:
    return MealCLI(
        model_class=None,
        datamodule_class=ClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigOnceTrainingStarts,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,  # the optimizer knobs live in the modules
    )


def one_line(error: BaseException) -> str:
    """The error's own message; a DataLoader worker's re-raise adds the worker's traceback, of which the last line is it."""
    message = str(error).strip()
    if message.startswith("Caught ") and "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def preempted_line(error: SIGTERMException) -> str:
    """What a SIGTERM (or Ctrl+C) left behind, and how to go on."""
    path, step = getattr(error, "checkpoint", ("", 0))
    why = "SIGINT (Ctrl+C)" if _interrupted["by"] == "SIGINT" else "SIGTERM (pre-empted)"
    if not path:
        return f"error: stopped by {why} before the first checkpoint: run the same command again."
    return f"error: stopped by {why}: {path} holds step {step}; continue with the same command and --ckpt_path last."


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    except SIGTERMException as error:  # Lightning's is a SystemExit with status 0: `fit && test` would go on
        print(preempted_line(error), file=sys.stderr)
        sys.exit(128 + (signal.SIGINT if _interrupted["by"] == "SIGINT" else signal.SIGTERM))
