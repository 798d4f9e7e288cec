"""Every Trainer built by a test is shrunk: CPU, a few batches, at most two epochs, no progress bar."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(2)

LIMITS = {"limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2, "max_epochs": 2}


def pytest_configure(config):
    config.addinivalue_line("markers", "trainer(**limits): raise the shrunk Trainer limits for one test")


@pytest.fixture(autouse=True)
def small_trainer(request, monkeypatch):
    """Caps every ``Trainer`` (direct or through the CLI); a ``trainer`` marker raises the caps."""
    limits = dict(LIMITS)
    marker = request.node.get_closest_marker("trainer")
    if marker:
        limits.update(marker.kwargs)
    original = pl.Trainer.__init__

    @functools.wraps(original)  # the CLI reads the Trainer's signature
    def shrunk(self, *args, **kwargs):
        for key, cap in limits.items():
            value = kwargs.get(key)
            keep = isinstance(value, int) and not isinstance(value, bool) and value <= cap and value != -1  # -1: unlimited
            kwargs[key] = value if keep else cap
        kwargs.setdefault("accelerator", "cpu")
        if kwargs.get("accelerator") in (None, "auto", "gpu", "cuda"):
            kwargs["accelerator"] = "cpu"
        kwargs["enable_progress_bar"] = False
        kwargs["enable_model_summary"] = False
        kwargs.setdefault("num_sanity_val_steps", 1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", shrunk)
    yield


@pytest.fixture(autouse=True)
def deterministic():
    torch.manual_seed(0)
    yield
