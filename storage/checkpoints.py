"""Checkpoints of a run: ``--ckpt_path last/best/hpc`` resolved to a file of this config's run, and a missing, corrupt
or foreign checkpoint refused in one line before anything is built."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from errors import CheckpointError, reason
from storage.atomic_files import verify_file
from storage.run_folder import is_marked

NAMED_CHECKPOINTS = {"last", "best", "hpc", "registry"}


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


def resume_in_its_run(config) -> None:
    """``fit --ckpt_path`` of a checkpoint in another run's folder continues that run, in its folder, and says so:
    a resume never writes into (and so never replaces) the run the config names."""
    args, ckpt = tensorboard_args(config), config.get("ckpt_path")
    if args is None or not ckpt or ckpt in ("last", "best", "hpc"):
        return
    file = Path(ckpt).resolve()
    run = file.parent.parent
    configured = run_directories(config)
    if file.parent.name != "checkpoints" or not is_marked(run) or [p.resolve() for p in configured] == [run]:
        return
    args.save_dir, args.name, args.version = str(run.parent.parent), run.parent.name, run.name
    rank_zero_info(f"--ckpt_path belongs to the run '{run}': this fit continues that run, in its folder.")


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
        raise CheckpointError(
            f"--ckpt_path '{path}' cannot be read ({reason(err)}): it is corrupt or not a Lightning checkpoint."
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


def resolve_ckpt_path(config, subcommand: str) -> None:
    """``--ckpt_path`` checked before anything is built: ``last``/``best``/``hpc`` become this run's file (a missing one
    is an error, not Lightning's warning and an untrained model), the file is verified and must fit the model, and
    the logger continues in the checkpoint's run folder."""
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
