"""Which reduced precision the hardware runs faster than fp32: bf16 on CUDA with bf16, on CPUs with AMX and on AMD
CPUs with AVX-512-BF16."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

FastPrecision = Literal["bf16", "16", "32"]


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ('vendor_id', 'model name', 'flags', ...); empty where unreadable."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if key.strip()}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return frozenset(cpu_info().get("flags", "").split())


def cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... ('' where /proc/cpuinfo cannot be read)."""
    return cpu_info().get("vendor_id", "")


def cpu_has_fast_bf16() -> bool:
    """True where bf16 training measured faster than fp32: CPUs with AMX-BF16 tiles (2-6x), and AMD CPUs with
    AVX-512-BF16 (Zen 4: the demo's student step 1.24x on 2 threads, 1.50x on one). An Intel Xeon with
    AVX-512-BF16 and no AMX measured no faster than fp32 with channels-last; without bf16 units it
    is emulated and slower."""
    flags = cpu_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and cpu_vendor() == "AuthenticAMD")


def machine() -> str:
    """The machine a figure was measured on, e.g. 'AMD EPYC 7B13, 2 cores, AuthenticAMD, AVX-512-BF16, no AMX'."""
    model = cpu_info().get("model name") or platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores, {cpu_description()}"


def cpu_description() -> str:
    """The bf16-relevant CPU facts, for reports, e.g. 'AuthenticAMD, AVX-512-BF16, no AMX'."""
    flags = cpu_flags()
    units = "AMX" if "amx_bf16" in flags else "AVX-512-BF16, no AMX" if "avx512_bf16" in flags else "no bf16 units"
    return f"{cpu_vendor() or 'unknown vendor'}, {units}"


def fast_precision(device: torch.device | str = "cpu") -> FastPrecision:
    """bf16 where it is faster than fp32 (CUDA with bf16, see ``cpu_has_fast_bf16``), fp16 on CUDA without bf16, else fp32."""
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
