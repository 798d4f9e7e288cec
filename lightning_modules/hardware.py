"""Which reduced precision the hardware runs fast: bf16 on CUDA with bf16 and on CPUs with AVX-512-BF16 or AMX."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

FastPrecision = Literal["bf16", "16", "32"]


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 units (AVX-512-BF16 or AMX-BF16); elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_precision(device: torch.device | str = "cpu") -> FastPrecision:
    """bf16 where the device has bf16 units, fp16 on CUDA without them, else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "16"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "32"
    return "32"


def fast_trainer_precision() -> str:
    """The Trainer ``precision`` for the device Lightning's ``accelerator: auto`` picks: mixed where it pays off."""
    precision = fast_precision("cuda" if torch.cuda.is_available() else "cpu")
    return {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}[precision]
