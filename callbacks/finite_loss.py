"""Stop on a non-finite training loss without a host sync every step; never save a non-finite tensor."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from errors import NonFiniteTrainingError, require_non_negative


class FiniteLossGuard(pl.Callback):
    """Records the first step whose loss is not finite in a device tensor (no sync), and raises
    at the next check (every ``check_every_n_steps``) or before any checkpoint is written,
    so the last checkpoint on disk is always a good one.
    """

    def __init__(self, check_every_n_steps: int = 50):
        super().__init__()
        require_non_negative(check_every_n_steps=check_every_n_steps)
        self.check_every_n_steps = check_every_n_steps
        self._first_bad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & (self._first_bad < 0), trainer.global_step, self._first_bad)
        if self.check_every_n_steps > 0 and trainer.global_step % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check(trainer)
        trained = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teachers.")
        }  # frozen: not saved
        refuse_non_finite(trained, "checkpoint", trainer)

    def check(self, trainer) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step >= 0:
            raise NonFiniteTrainingError(
                f"Training loss became non-finite at step {step} (epoch {trainer.current_epoch}); stopped. "
                f"Last good checkpoint: {last_good_checkpoint(trainer)}. Lower the learning rate or check the data, "
                "then resume from it."
            )


def last_good_checkpoint(trainer) -> str:
    """The newest file any checkpoint callback of this run has written (best or last), or 'none written yet'.

    Every file on disk is good: the guard refuses to write one past the first non-finite step."""
    paths = {
        path
        for callback in trainer.checkpoint_callbacks
        for path in (callback.last_model_path, callback.best_model_path, *callback.best_k_models)
        if path
    }
    files = [Path(path) for path in paths if Path(path).is_file()]
    return str(max(files, key=lambda file: file.stat().st_mtime)) if files else "none written yet"


def non_finite_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf (one host sync per call: for saves, not steps)."""
    names = [name for name, value in state_dict.items() if value.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state_dict[name]).all().to(state_dict[names[0]].device) for name in names])
    return [name for name, ok in zip(names, finite.tolist(), strict=True) if not ok]


def refuse_non_finite(state_dict: dict[str, torch.Tensor], what: str, trainer) -> None:
    """Raise before a checkpoint or an export would hold non-finite weights."""
    bad = non_finite_names(state_dict)
    if bad:
        raise NonFiniteTrainingError(
            f"The {what} at step {trainer.global_step} would hold non-finite values ({len(bad)} tensors, e.g. '{bad[0]}'); "
            f"nothing was written. Last good checkpoint: {last_good_checkpoint(trainer)}. Lower the learning rate or "
            "check the data, then resume from it."
        )
