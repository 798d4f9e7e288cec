"""What a run folder is: the project's mark on it, the files a run leaves there, and one writer at a time."""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from errors import RunFolderError

RUN_MARKER = ".meal_v2_run"  # written into every folder fit makes a run of; only such folders are ever cleared
LOCK = ".meal_v2_lock"  # locked by the one fit writing into a run folder (POSIX; see docs/reliability.md)


def run_files(run_dir: Path) -> list[Path]:
    """What ``fit`` saved in a run directory: checkpoints and exported students (what --overwrite deletes)."""
    if not run_dir.is_dir():
        return []
    return sorted([*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("student"), *run_dir.glob("model")])


def run_records(run_dir: Path) -> list[Path]:
    """A run's curves, config and evaluations (``validate/``, ``test/``): they describe its checkpoints and go with them.
    ``predict/`` (the soft-label cache's record) stays."""
    if not run_dir.is_dir():
        return []
    names = ("events.out.tfevents.*", "config.yaml", "hparams.yaml", "validate", "test")
    return sorted(path for name in names for path in run_dir.glob(name))


def is_marked(run_dir: Path) -> bool:
    return (run_dir / RUN_MARKER).is_file()


def mark(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("A run folder made by `cli.py fit`: --overwrite may replace what is in it.\n")


def foreign_files(folder: Path, marker: str, names: Optional[tuple[str, ...]] = None) -> list[str]:
    """Files in ``folder`` (of ``names``, when given) this project did not write: none where the folder carries
    ``marker``, which the project puts into each folder it writes such files into (a run's is ``RUN_MARKER``)."""
    if not folder.is_dir() or (folder / marker).is_file():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != marker and (names is None or p.name in names))


def check_writable(folder: Path) -> None:
    """Stop in one line, before any work, when a run's folder (or the nearest one that exists) cannot be written."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    targets = [existing] + [existing / "checkpoints"] * (existing / "checkpoints").is_dir()
    for target in targets:
        probe = target / f".meal_v2_probe.{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise RunFolderError(
                f"Cannot write into '{target}' ({error.strerror or type(error).__name__}): make it writable, or give "
                "the run a folder you can write (--trainer.logger.init_args.save_dir DIR)."
            ) from None


_held: dict[Path, int] = {}  # lock file -> the open descriptor that holds its kernel lock


def acquire_lock(run_dir: Path) -> None:
    """Take the run folder's lock for this process, or stop in one line naming the fit that holds it.

    The lock is the kernel's (``flock`` on the open lock file): one winner however many start together, held
    while this process lives and released by the kernel when it ends, however it ends, so no stale lock is left
    to take over. The file records the owner for the message; it is never deleted (a deleted lock file would let
    two processes lock two files of one name).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = (run_dir / LOCK).resolve()
    if lock in _held:
        return
    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process (EWOULDBLOCK)
        holder = _read_lock(handle)
        os.close(handle)
        raise RunFolderError(
            f"Run folder '{run_dir}' is in use by another fit (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started', 'just now')}): wait for it to end, or give "
            "this run its own name with --trainer.logger.init_args.version=NAME."
        ) from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(handle, 0)
    os.pwrite(handle, json.dumps(owner).encode(), 0)
    _held[lock] = handle


def release_locks() -> None:
    """Release the locks this process holds (at the end of a command; the kernel does it at exit anyway)."""
    for lock in list(_held):
        os.close(_held.pop(lock))


atexit.register(release_locks)


def _read_lock(handle: int) -> dict:
    try:
        holder = json.loads(os.pread(handle, 4096, 0))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):  # being written just now
        return {}


def first_process(trainer) -> bool:
    """Global rank 0 before ``fit`` starts: Lightning's own launcher starts the other ranks as copies of this command
    whose trainer does not know its rank yet, but whose environment does (``LOCAL_RANK``, ``NODE_RANK``)."""
    launched = any(int(os.environ.get(name, "0") or 0) != 0 for name in ("LOCAL_RANK", "NODE_RANK"))
    return trainer.is_global_zero and not launched


def prepare_fit_folder(run_dir: Path, resuming: bool, overwrite: bool, first: bool) -> None:
    """Before ``fit`` writes anything: the folder must be writable and, for a new run, hold no run unless
    ``overwrite`` (then the first process deletes the old run) and no files this project did not make. The first
    process takes the folder's lock for the whole fit (resumes too)."""
    check_writable(run_dir)
    if resuming:
        if first:
            acquire_lock(run_dir)
        return
    found = run_files(run_dir) + run_records(run_dir)
    if found and not is_marked(run_dir):
        raise RunFolderError(
            f"'{run_dir}' holds {found[0].relative_to(run_dir)} but is not a run folder this project made (no "
            f"{RUN_MARKER}), so nothing there is touched: give the run its own folder (a logger, or "
            "--trainer.default_root_dir NEW_FOLDER)."
        )
    if first:  # one fit writes into a run folder; a second one started beside it stops here
        acquire_lock(run_dir)
    previous = run_files(run_dir)
    if previous and not overwrite:
        resume = "resume it with --ckpt_path last, " if list(run_dir.glob("checkpoints/last*.ckpt")) else ""
        raise RunFolderError(
            f"Run directory '{run_dir}' already holds a run ({previous[0].relative_to(run_dir)}): {resume}"
            "start another with --trainer.logger.init_args.version=NAME (or another name), or replace it with --overwrite true."
        )
    if not first:  # under torchrun or srun every rank runs this; one deletes
        return
    for path in previous + run_records(run_dir):  # a fit that stopped before saving anything leaves records only
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    mark(run_dir)
