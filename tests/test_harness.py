"""The test harness itself: CPU tests run on the CPU, ``gpu``-marked tests keep their accelerator and precision."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

TESTS = Path(__file__).resolve().parent

DUMMIES = """
import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException


@pytest.mark.gpu
def test_gpu_marked_dummy_keeps_its_accelerator():
    if torch.cuda.is_available():
        trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", logger=False)
        assert type(trainer.accelerator).__name__ == "CUDAAccelerator"
        return
    with pytest.raises(MisconfigurationException, match="gpu|GPU|CUDA"):  # no GPU here: refused, not rewritten
        pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", logger=False)


@pytest.mark.gpu
def test_gpu_marked_dummy_keeps_its_precision():
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-true", logger=False)
    assert trainer.precision == "bf16-true"


def test_unmarked_dummy_runs_on_the_cpu():  # CPU tests: the harness moves them
    trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False)
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
"""


HARNESS = """
import importlib.util
import sys

sys.path.insert(0, {tests!r})
spec = importlib.util.spec_from_file_location("project_conftest", {tests!r} + "/conftest.py")
project = importlib.util.module_from_spec(spec)
spec.loader.exec_module(project)
small_trainer = project.small_trainer  # the fixture under test, without the CPU-only skip of gpu tests
"""


def test_gpu_marked_tests_keep_their_accelerator_and_precision_under_the_harness(pytester):
    """The harness's Trainer fixture, without the CPU-only skip, on three dummies: the gpu-marked ones see exactly
    what they asked for (without a GPU Lightning refuses it), the unmarked one is moved to the CPU."""
    pytester.makeconftest(HARNESS.format(tests=str(TESTS)))
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n    trainer: limits\n")
    pytester.makepyfile(test_dummies=DUMMIES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


@pytest.mark.gpu
def test_gpu_marked_tests_run_on_the_gpu():
    trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False)
    assert type(trainer.accelerator).__name__ == "CUDAAccelerator"


def gpu_tests() -> set[str]:
    """``file::test`` of every gpu-marked test (module ``pytestmark`` or decorator)."""
    import ast

    found = set()
    for path in TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        module_marked = any(
            isinstance(node, ast.Assign) and "pytestmark" in ast.unparse(node) and "mark.gpu" in ast.unparse(node)
            for node in tree.body
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if module_marked or any("mark.gpu" in ast.unparse(d) for d in node.decorator_list):
                    found.add(f"{path.name}::{node.name}")
    return found


def test_docs_list_every_gpu_test_with_what_it_asserts():
    import re

    table = (TESTS.parent / "docs" / "scale_out.md").read_text()
    listed = set(re.findall(r"`(test_\w+\.py::\w+)`", table))
    assert listed == gpu_tests() and len(listed) >= 8
