"""Every error the project reports in one line: the class names what failed, the message says what to do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ProjectError(Exception):
    """What every error below shares: a run stops with its one line (cli.py), never a traceback."""


class ConfigError(ValueError, ProjectError):
    """A run that cannot start as configured (a non-positive lr, a cache missing for cached soft targets, ...)."""


class DataError(ValueError, ProjectError):
    """The data on disk cannot be used as configured."""


class ModelLoadingError(ValueError, ProjectError):
    """A model or its weights could not be built from the given source."""


class ExportInputError(ValueError, ProjectError):
    """Weights or an export folder that cannot be converted."""


class CheckpointError(ValueError, ProjectError):
    """A --ckpt_path that cannot be used."""


class RunFolderError(ValueError, ProjectError):
    """A run folder that cannot be used: someone else's, or in use by another fit."""


class DamagedFileError(ValueError, ProjectError):
    """A checkpoint or exported weights file whose bytes differ from those written."""


class WriteError(OSError, ProjectError):
    """A file could not be written (full disk, read-only or unwritable folder, file size limit)."""


class NonFiniteTrainingError(RuntimeError, ProjectError):
    """The training loss became NaN or infinite, or a checkpoint or export would hold non-finite weights."""


class ZooError(RuntimeError, ProjectError):
    """The zoo is missing, incomplete, or does not match its manifests."""


class DemoError(RuntimeError, ProjectError):
    """A step of the demo failed: its log's last lines say why."""


def require_positive(**values: float) -> None:
    """One line naming the first knob that is not > 0 (None: not set)."""
    _require(lambda v: v > 0, "positive", values)


def require_non_negative(**values: float) -> None:
    _require(lambda v: v >= 0, "0 or more", values)


def require_fraction(**values: float) -> None:
    _require(lambda v: 0 <= v <= 1, "between 0 and 1", values)


def _require(holds, what: str, values: dict) -> None:
    for name, value in values.items():
        if value is not None and not holds(value):
            raise ConfigError(f"{name} is {value}: it must be {what}.")


def reason(error: BaseException, limit: int = 200) -> str:
    """What went wrong in one line: the error's first line (for torch's weights-only refusal, the line naming the
    forbidden global), at most ``limit`` characters, or the error's type when it has no message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines if "GLOBAL" in line][:1] or lines
    return lines[0][:limit] if lines else type(error).__name__


@contextmanager
def downloading(what: str, folder: str, instead: str) -> Iterator[None]:
    """torchvision's downloads raise URLError / RuntimeError / OSError with long messages: one line, and what to do."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  (every download failure means the same to the user)
        raise DataError(f"Cannot download {what} into '{folder}' ({reason(err)}): no network? {instead}.") from None
