"""Files that appear complete or not at all: checkpoints, exported students, cache metadata."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


class WriteError(OSError):
    """A file could not be written (full disk, read-only or unwritable folder, file size limit)."""


def atomic_write(path: os.PathLike | str, write: Callable[[str], Any]) -> None:
    """``write(temporary_name)`` beside ``path``, flushed to disk, then renamed onto ``path``.

    A rename within one folder replaces the file in one step, so readers (and a resume after a crash)
    see the previous file or the new one, never a part; the previous one survives a failed write.
    Failures are one line naming the folder.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(str(temporary))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except Exception as error:
        temporary.unlink(missing_ok=True)
        reason = _reason(error)
        previous = " (the previous file is intact)" if path.exists() else ""
        raise WriteError(
            f"Cannot write '{path.name}' into '{path.parent}' ({reason}){previous}: free space there or "
            "choose another folder (trainer.logger.init_args.save_dir), then resume with --ckpt_path last."
        ) from None


def _reason(error: BaseException) -> str:
    """The operating system's reason (e.g. 'No space left on device'), which torch wraps in its own error."""
    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(error).strip().splitlines()[0][-160:]


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write(path, lambda name: Path(name).write_text(text))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through :func:`atomic_write` for local folders.

    Lightning's own writes into a temporary file in TMPDIR and moves it: across file systems that
    is a copy into the final name, so a full disk leaves a truncated ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)

        def write(name: str) -> None:
            with open(name, "wb") as handle:  # a Python file: a failed write keeps its OSError
                torch.save(checkpoint, handle)

        atomic_write(path, write)
