"""A SIGTERM that reaches any one process of a multi-process run stops every rank at the same step."""

from __future__ import annotations

import signal

import lightning.pytorch as pl
import torch
import torch.distributed as dist


class SigtermOnEveryRank(pl.Callback):
    """Lightning stops a DDP run on SIGTERM only when global rank 0 receives it: it broadcasts rank 0's flag each
    step, and the handler of a rank > 0 starts a broadcast of its own that no other rank joins. A pre-empted node
    other than the first (or ``kill`` of one process) then hangs the run or loses it unsaved.

    Here each process only notes the signal; after every training step the ranks agree (an all-reduce MAX of one
    CPU int over a gloo group, so no device sync) and, if any was signalled, all of them hand the signal to
    Lightning's own handler at once: ``last.ckpt`` is saved at that step and every rank stops (exit 143 from
    ``cli.py``). Single-process runs keep Lightning's handling unchanged.
    """

    def __init__(self):
        self._signalled = False
        self._lightning_handler = None
        self._group = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() not in ("gloo", "nccl"):
            return  # XLA and others: Lightning's handling as it is
        self._lightning_handler = signal.getsignal(signal.SIGTERM)  # installed by the Trainer before training starts
        self._group = dist.new_group(backend="gloo")
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        self._signalled = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if self._group is None:
            return
        flag = torch.tensor([int(self._signalled)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        if flag.item() and not trainer.received_sigterm and callable(self._lightning_handler):
            self._lightning_handler(signal.SIGTERM, None)  # on every rank at once: its broadcast is matched

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._group, self._signalled = None, False  # the Trainer puts the handlers it found back
