"""What the benchmarks share: exact timing on asynchronous devices, the device's name, and writing the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_modules.hardware import machine


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock reads the time the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({machine()}; {torch.get_num_threads()} threads)"


def save_and_print(report: dict, out: Path, markdown: Callable[[dict], str]) -> dict:
    """Write the report as JSON to ``out`` and print its Markdown table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report
