"""The part of ``make xla-check`` that needs no torch_xla: its models and its step run eagerly on the CPU."""

from __future__ import annotations

import sys

import pytest
import torch
from fixtures import ROOT  # noqa: F401  (puts the project on the path)

sys.path.insert(0, str(ROOT / "checks"))
import xla_check  # noqa: E402


@pytest.mark.parametrize(
    "precision, soft_targets, discriminator, cutmix",
    [("bf16-true", "cached", "official", False), ("32-true", "online", "none", True)],
)
def test_the_xla_check_steps_the_recipes_architectures_eagerly(precision, soft_targets, discriminator, cutmix):
    teachers, student = xla_check.recipe_models()
    assert (teachers, student) == (["senet154", "resnet152s"], "resnet50")
    module = xla_check.build_module(precision, soft_targets, discriminator, cutmix)
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    batches = xla_check.make_batches(module, 2, 4, dtype)
    optimizer = xla_check.optimizer_of(module)
    losses = [xla_check.step(module, optimizer, batch, index, 2) for index, batch in enumerate(batches)]
    assert all(torch.isfinite(loss) for loss in losses) and losses[0].shape == ()
    assert (module.discriminator is None) == (discriminator == "none")


def test_the_xla_check_without_torch_xla_says_how_to_run_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_xla", None)  # import torch_xla raises ImportError
    monkeypatch.setattr(sys, "argv", ["xla_check.py"])
    assert xla_check.main() == 2
    assert capsys.readouterr().err.strip() == (
        "error: torch_xla is not installed here: run `make xla-check` (its own environment)."
    )
