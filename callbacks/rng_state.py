"""Random-number-generator states in checkpoints, so a resumed run draws what the straight run drew."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn


class RestoreRandomState(pl.Callback):
    """Saves the torch (CPU and CUDA), numpy and Python RNG states of every process with every checkpoint and
    restores each rank's own on resume: augmentation, CutMix and dropout then continue exactly, under DDP too.
    Resumed on another number of processes, rank r takes the state of saved rank r mod n and says in one line
    that the run cannot repeat the straight one. States are stored as tensors and ints (weights_only-safe).
    """

    def state_dict(self) -> dict:
        state = own_state()
        if not _distributed():
            return {"ranks": [state]}
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, state)  # every rank saves (the checkpoint is written by rank 0)
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["ranks"] if "ranks" in state_dict else [state_dict]  # older checkpoints: one process
        rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        if len(saved) != world:
            rank_zero_warn(
                f"Resumed on {world} process(es) from a checkpoint of {len(saved)}: the random streams and the rest "
                "of the interrupted epoch's data order are those of other processes, so this run cannot repeat an "
                "uninterrupted one exactly (it continues correctly otherwise)."
            )
        restore_state(saved[rank % len(saved)])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def own_state() -> dict:
    """This process's torch, CUDA, numpy and Python RNG states."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
