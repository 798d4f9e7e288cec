"""Which reduced precision the hardware runs faster than fp32: bf16 on CUDA with bf16 and on CPUs with AMX."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

FastPrecision = Literal["bf16", "16", "32"]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(
        word for line in text.splitlines() if line.startswith("flags") for word in line.split(":", 1)[1].split()
    )


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX-BF16 tiles, where bf16 runs 2-6x faster than fp32. AVX-512-BF16 alone measured no
    faster than fp32 with channels-last (issue 19), and without either bf16 is emulated and slower."""
    return "amx_bf16" in cpu_flags()


def cpu_description() -> str:
    """The bf16-relevant CPU flags, for reports: 'AMX', 'AVX-512-BF16 (no AMX)' or 'no bf16 units'."""
    flags = cpu_flags()
    return "AMX" if "amx_bf16" in flags else "AVX-512-BF16 (no AMX)" if "avx512_bf16" in flags else "no bf16 units"


def fast_precision(device: torch.device | str = "cpu") -> FastPrecision:
    """bf16 where it is faster than fp32 (CUDA with bf16, AMX CPUs), fp16 on CUDA without bf16, else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "32"
    return "32"


def fast_trainer_precision() -> str:
    """The Trainer ``precision`` for the device Lightning's ``accelerator: auto`` picks: mixed where it pays off."""
    precision = fast_precision("cuda" if torch.cuda.is_available() else "cpu")
    return {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}[precision]
