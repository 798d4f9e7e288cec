"""Random-number-generator states in checkpoints, so a resumed run draws what the straight run drew."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch


class RestoreRandomState(pl.Callback):
    """Saves the torch (CPU and CUDA), numpy and Python RNG states with every checkpoint and restores
    them on resume: augmentation, CutMix and dropout then continue exactly (single process; under DDP
    each rank restores rank 0's state). States are stored as tensors and ints (weights_only-safe).
    """

    def state_dict(self) -> dict:
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

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        numpy_state = state_dict["numpy"]
        np.random.set_state(
            (
                numpy_state["name"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached"],
            )
        )
        python_state = state_dict["python"]
        random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
