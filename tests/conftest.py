"""Every Trainer built by a test is shrunk: CPU, a few batches, at most two epochs, no progress bar."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # pytest-xdist: one worker per core

pytest_plugins = ["pytester"]  # tests/test_harness.py runs this harness on dummy tests

LIMITS = {"limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2, "max_epochs": 2}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where torch sees a CUDA GPU (CI is CPU-only)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def small_trainer(request, monkeypatch):
    """Caps every ``Trainer`` (direct or through the CLI) and runs it on the CPU, except in ``gpu``-marked tests;
    a ``trainer`` marker raises the caps."""
    limits = dict(LIMITS)
    marker = request.node.get_closest_marker("trainer")
    if marker:
        limits.update(marker.kwargs)
    on_gpu = request.node.get_closest_marker("gpu") is not None
    original = pl.Trainer.__init__

    @functools.wraps(original)  # the CLI reads the Trainer's signature
    def shrunk(self, *args, **kwargs):
        for key, cap in limits.items():
            value = kwargs.get(key)
            keep = (
                isinstance(value, int) and not isinstance(value, bool) and value <= cap and value != -1
            )  # -1: unlimited
            kwargs[key] = value if keep else cap
        if not on_gpu:  # gpu-marked tests keep their accelerator and precision: they run where a GPU exists
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
def onnx_only_when_marked(request, monkeypatch):
    """ONNX export at the end of fit costs ~1.5 s: in-process fits skip it unless the test is marked ``onnx``."""
    if request.node.get_closest_marker("onnx"):
        return
    from callbacks import ExportStudent

    original = ExportStudent.__init__

    @functools.wraps(original)  # the CLI reads the signature
    def without_onnx(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.onnx = False

    monkeypatch.setattr(ExportStudent, "__init__", without_onnx)


@pytest.fixture(autouse=True)
def expected_warnings_quiet():
    """The warnings cli.py keeps off the console are kept out of the test report too (by message, nothing else)."""
    from console import quiet_expected_warnings

    quiet_expected_warnings()


@pytest.fixture(autouse=True)
def deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def offline_hub(monkeypatch):
    """``pretrained=True`` checks that the hub entry exists, then builds a tiny random model instead."""
    import models.loading as model_loading

    requested = []
    real_create = timm.create_model

    def create(name, pretrained=False, **kwargs):
        if not pretrained:
            return real_create(name, **kwargs)
        cfg = get_pretrained_cfg(name)
        assert cfg is not None and (cfg.hf_hub_id or cfg.url), f"{name} has no hub weights"
        requested.append(name)
        return real_create("test_resnet", num_classes=kwargs["num_classes"], in_chans=kwargs.get("in_chans", 3))

    monkeypatch.setattr(model_loading.timm, "create_model", create)
    monkeypatch.setattr(model_loading, "check_hub_weights_reachable", lambda name: None)  # this fake hub is reachable
    return requested


@pytest.fixture(scope="session")
def imagenet_1000(tmp_path_factory):
    """1000 classes, one tiny image per class and split: the recipes' hub teachers predict 1000 classes."""
    from fixtures import write_image_folder

    return write_image_folder(
        tmp_path_factory.mktemp("imagenet"), num_classes=1000, train_per_class=1, val_per_class=1, size=8
    )
