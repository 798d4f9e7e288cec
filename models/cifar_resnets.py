"""Small-image ResNets (3x3 stem, no max-pool) registered in timm's model registry.

``timm.create_model("cifar_resnet56", num_classes=100, in_chans=3)`` builds them like any timm model:
- ``cifar_resnet{8,14,20,32,44,56,110}``: He et al. 2016, widths 16/32/64, depth 6n+2.
- ``cifar_resnet8x4`` / ``cifar_resnet32x4``: the 4x wider variants common in CIFAR distillation papers.
- ``cifar_wrn_{16_1,16_2,40_1,40_2,28_10}``: Wide ResNets (pre-activation), depth 6n+4, widen factor k.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)


class BasicBlock(nn.Module):
    """Post-activation 3x3-3x3 residual block with a 1x1 projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActWideBlock(nn.Module):
    """Pre-activation wide block of Zagoruyko & Komodakis (2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.dropout(F.relu(self.bn2(out)), p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarResNet(nn.Module):
    """ResNet for small images; follows timm's classifier interface (forward_features / forward_head)."""

    def __init__(
        self,
        blocks_per_stage: int,
        widths: tuple[int, ...],
        stem_width: int,
        wide: bool = False,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        **_: object,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.wide = wide
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.Identity() if wide else nn.BatchNorm2d(stem_width)
        stages, in_planes = [], stem_width
        for index, width in enumerate(widths):
            layers = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(
                    PreActWideBlock(in_planes, width, stride, drop_rate)
                    if wide
                    else BasicBlock(in_planes, width, stride)
                )
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final_norm = nn.BatchNorm2d(in_planes) if wide else nn.Identity()
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.conv1(x)
        x = x if self.wide else F.relu(self.bn1(x))
        x = self.stages(x)
        return F.relu(self.final_norm(x)) if self.wide else x

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs):
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


_ARCHS = {
    "cifar_resnet8": dict(blocks_per_stage=1, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet14": dict(blocks_per_stage=2, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet20": dict(blocks_per_stage=3, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet32": dict(blocks_per_stage=5, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet44": dict(blocks_per_stage=7, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet56": dict(blocks_per_stage=9, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet110": dict(blocks_per_stage=18, widths=(16, 32, 64), stem_width=16),
    "cifar_resnet8x4": dict(blocks_per_stage=1, widths=(64, 128, 256), stem_width=32),
    "cifar_resnet32x4": dict(blocks_per_stage=5, widths=(64, 128, 256), stem_width=32),
    "cifar_wrn_16_1": dict(blocks_per_stage=2, widths=(16, 32, 64), stem_width=16, wide=True),
    "cifar_wrn_16_2": dict(blocks_per_stage=2, widths=(32, 64, 128), stem_width=16, wide=True),
    "cifar_wrn_40_1": dict(blocks_per_stage=6, widths=(16, 32, 64), stem_width=16, wide=True),
    "cifar_wrn_40_2": dict(blocks_per_stage=6, widths=(32, 64, 128), stem_width=16, wide=True),
    "cifar_wrn_28_10": dict(blocks_per_stage=4, widths=(160, 320, 640), stem_width=16, wide=True),
}

default_cfgs = generate_default_cfgs({name: _cfg() for name in _ARCHS})


def _create(name: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, name, pretrained, **_ARCHS[name], **kwargs)


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs) -> CifarResNet:
        return _create(name, pretrained, **kwargs)

    entry.__name__ = name
    entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{name}: small-image ResNet, see module docstring."
    register_model(entry)


for _name in _ARCHS:
    _register(_name)
