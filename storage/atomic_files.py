"""Files that appear complete or not at all, and are checked when read: checkpoints, exported students, cache metadata.

Checkpoints are zip archives whose every member carries a CRC-32 written with it (torch's format); exported
``model.safetensors`` carry the sha256 of their tensors in their own header. Both are verified before use.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils import serialization

from errors import DamagedFileError, WriteError, reason


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
        folder = os.open(path.parent, os.O_RDONLY)  # the new name itself survives a crash right after
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except Exception as error:
        temporary.unlink(missing_ok=True)
        why = _os_reason(error)
        if why is None:
            raise  # not the disk (e.g. an object that cannot be pickled): the error as it is
        previous = " (the previous file is intact)" if path.exists() else ""
        raise WriteError(
            f"Cannot write '{path.name}' into '{path.parent}' ({why}){previous}: free space there or "
            "choose another folder (trainer.logger.init_args.save_dir), then resume with --ckpt_path last."
        ) from None


def _os_reason(error: BaseException) -> Optional[str]:
    """The operating system's reason (e.g. 'No space left on device'), also where torch wraps the OSError in its
    own error; None when the disk did not cause it."""
    chain, cause = [], error
    while cause is not None and len(chain) < 20:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if isinstance(cause, OSError):
            return cause.strerror or reason(cause)
    for cause in chain:  # torch's zip writer can fail with no errno attached
        if isinstance(cause, RuntimeError) and any(
            m in str(cause) for m in ("inline_container", "PytorchStreamWriter")
        ):
            return "the file write stopped short: a full disk or a file size limit"
    return None


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write(path, lambda name: Path(name).write_text(text))


def is_local_path(path) -> bool:
    """A plain file-system path (no ``s3://``-style protocol): the files this project writes itself."""
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through :func:`atomic_write` for local folders.

    Lightning's own writes into a temporary file in TMPDIR and moves it: across file systems that
    is a copy into the final name, so a full disk leaves a truncated ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if not is_local_path(path):
            return super().save_checkpoint(checkpoint, path, storage_options)

        def write(name: str) -> None:
            with open(name, "wb") as handle:  # a Python file: a failed write keeps its OSError
                torch.save(checkpoint, handle)

        serialization.config.save.compute_crc32 = True  # the checksums verify_file reads (torch: on by default)
        atomic_write(path, write)


def damaged_member(path: Path) -> Optional[str]:
    """The first member of a checkpoint (a zip archive) whose CRC-32 fails, or None when all agree."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except zipfile.BadZipFile as error:
        return f"the archive itself ({error})"
    except (OSError, EOFError, ValueError) as error:
        return f"the archive itself ({type(error).__name__})"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and bytes, by name): what an export's header records."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``model.safetensors`` with the sha256 of its tensors in its header, written atomically."""
    from safetensors.torch import save

    data = save(tensors, metadata={"sha256": tensors_sha256(tensors)})
    atomic_write(path, lambda name: Path(name).write_bytes(data))


def is_intact(path: Path) -> bool:
    try:
        verify_file(path)
    except DamagedFileError:
        return False
    return True


def verify_file(path: Path, tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Refuse a checkpoint whose checksums fail, or an export whose tensors differ from the sha256 in its header,
    in one line naming the newest intact checkpoint or export of the same run. ``tensors``: the export as loaded."""
    path = Path(path)
    if path.suffix == ".safetensors":
        problem = _safetensors_problem(path, tensors)
    elif zipfile.is_zipfile(path):
        member = damaged_member(path)
        problem = None if member is None else f"{member} fails its checksum"
    else:
        return  # not this project's format: its reader decides
    if problem is None:
        return
    raise DamagedFileError(f"'{path}' is damaged ({problem}): its bytes are not those written; {_instead(path)}.")


def _instead(path: Path) -> str:
    """What to use instead of a damaged file: the newest intact checkpoint of its run, else its newest intact export."""
    others = sorted((p for p in _run_weights(path) if p.resolve() != path.resolve()), key=_mtime, reverse=True)
    checkpoint = next((p for p in others if p.suffix == ".ckpt" and is_intact(p)), None)
    if checkpoint is not None:
        return f"the newest intact checkpoint of this run is '{checkpoint}' (--ckpt_path {checkpoint})"
    export = next((p for p in others if p.suffix == ".safetensors" and is_intact(p)), None)
    if export is not None:
        return f"no intact checkpoint of this run is left; its newest intact export is '{export}' (usable as weights)"
    return "no intact checkpoint or export of this run is left: train it again"


def _safetensors_problem(path: Path, tensors: Optional[dict[str, torch.Tensor]]) -> Optional[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            recorded = (handle.metadata() or {}).get("sha256")
            if recorded is None:
                return None  # a file from elsewhere carries no checksum
            if tensors is None:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types on a broken header
        return f"unreadable: {reason(error)}"
    return None if tensors_sha256(tensors) == recorded else "its tensors differ from the sha256 in its header"


def _run_weights(path: Path) -> list[Path]:
    """Checkpoints and exports of the run ``path`` belongs to (a run folder holds ``checkpoints/``)."""
    run = next((p for p in list(path.parents)[:3] if (p / "checkpoints").is_dir()), path.parent)
    return [*run.glob("checkpoints/*.ckpt"), *run.glob("*/*/model.safetensors"), *path.parent.glob("*.ckpt")]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
