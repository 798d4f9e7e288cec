"""Run the frozen teachers faster than the student: reduced precision, channels-last, folded BatchNorm."""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.fx.experimental import optimization as fx_optimization

from errors import reason
from lightning_modules.hardware import FastPrecision, fast_precision

TeacherPrecision = FastPrecision
_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm that follows a convolution in the traced graph into the conv's weights.

    torch.fx's ``fuse`` follows the real data flow, so it is exact up to float rounding for a frozen
    network; a model that cannot be traced keeps its BatchNorm, with a warning naming it and why.
    """
    try:
        return fx_optimization.fuse(model.eval(), inplace=False)
    except Exception as error:  # noqa: BLE001  (torch.fx raises many kinds on untraceable code)
        rank_zero_warn(
            f"FastTeachers: {type(model).__name__} keeps its BatchNorm layers (torch.fx cannot trace it: {reason(error)})."
        )
        return model


class FastTeachers(pl.Callback):
    """Teachers in ``precision`` (independent of the student's), channels-last, BatchNorm folded.

    The soft targets stay in fp32 (teachers return fp32 logits); the throughput benchmark reports
    their argmax agreement and mean KL against the plain fp32 teachers. ``precision`` None picks what
    the device runs faster than fp32 (``lightning_modules.hardware``): bf16 on CUDA with bf16, on CPUs with AMX
    and on AMD CPUs with AVX-512-BF16, fp16 on older CUDA, fp32 elsewhere. ``compile`` wraps each
    teacher's inference in ``torch.compile`` (inductor, static shapes: one graph per input shape; the
    first batch of each shape pays the compile time, which the throughput benchmark reports apart).
    """

    def __init__(
        self,
        precision: Optional[TeacherPrecision] = None,
        channels_last: bool = True,
        fold_bn: bool = True,
        compile: bool = False,
        compile_mode: Optional[str] = None,
    ):
        super().__init__()
        if precision is not None and precision not in _DTYPES:
            raise ValueError(
                f"precision must be one of {sorted(_DTYPES)} or null (from the hardware), got '{precision}'."
            )
        self.precision = precision
        self.channels_last = channels_last
        self.fold_bn = fold_bn
        self.compile = compile
        self.compile_mode = compile_mode

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        teachers = getattr(pl_module, "teachers", None)
        if teachers is None:
            return
        precision = self.precision or fast_precision(trainer.strategy.root_device)
        for teacher in teachers:
            accelerate_teacher(teacher, precision, self.channels_last, self.fold_bn)
            if self.compile:
                teacher.model = torch.compile(teacher.model, dynamic=False, mode=self.compile_mode)


def accelerate_teacher(teacher: nn.Module, precision: TeacherPrecision, channels_last: bool, fold_bn: bool) -> None:
    """In-place: the wrapped model of a FrozenTeacher gets the fast settings."""
    model = teacher.model
    if fold_bn:
        model = fold_batchnorm(model)
    model = model.to(dtype=_DTYPES[precision])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)
    teacher.model = model.eval()
