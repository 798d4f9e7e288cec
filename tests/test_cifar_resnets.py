"""The small-image backbones are ordinary timm models."""

from __future__ import annotations

import pytest
import timm
import torch

import lightning_modules  # noqa: F401


@pytest.mark.parametrize(
    "name, params_m",
    [
        ("cifar_resnet20", 0.27),
        ("cifar_resnet56", 0.86),
        ("cifar_resnet8x4", 1.23),
        ("cifar_resnet32x4", 7.43),
        ("cifar_wrn_40_2", 2.25),
        ("cifar_wrn_16_2", 0.70),
    ],
)
def test_backbones_build_through_timm_with_literature_sizes(name, params_m):
    model = timm.create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.02)
    assert name in timm.list_models("cifar_*")


@pytest.mark.parametrize("in_chans, size", [(1, 28), (3, 32)])
def test_backbones_take_one_or_three_channels(in_chans, size):
    model = timm.create_model("cifar_wrn_16_1", num_classes=10, in_chans=in_chans)
    assert model(torch.randn(2, in_chans, size, size)).shape == (2, 10)
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 32, 32)
