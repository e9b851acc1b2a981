"""CIFAR-style ResNets (``resnet10``, ``resnet18``, ``resnet34``) and the ResNet-18 encoder for contrastive learning.

Architecture (He et al. 2016, "Deep Residual Learning", BasicBlock; CIFAR adaptation as in
kuangliu/pytorch-cifar ``models/resnet.py`` -- the ResNet used by the TRADES, AWP and OA-AT code bases):

* stem: 3x3 conv, stride 1, padding 1, no bias -> BatchNorm -> ReLU; no max-pool;
* four stages of BasicBlocks (3x3 conv-BN-ReLU-3x3 conv-BN, + shortcut, ReLU) with widths
  ``width * (1, 2, 4, 8)`` and strides (1, 2, 2, 2); the shortcut is a 1x1 conv (no bias) + BN when the stride or
  width changes, the identity otherwise;
* global average pooling (``AdaptiveAvgPool2d(1)``, so 28x28 inputs work too; on 32x32 inputs it equals the
  reference ``avg_pool2d(out, 4)``) -> linear classifier.

Blocks per stage: ResNet-18 (2, 2, 2, 2); ResNet-34 (3, 4, 6, 3).  ``width`` is the stem/first-stage width
(64 in the reference, giving 11,173,962 parameters for ResNet-18 with 10 classes).

ResNet-10 (the sonet paper, ``/work/shared/papers/002_2e73039d38e64e01.txt``): the paper (slides) says only
"We apply the ResNet with 10 layers as the baseline model, denoted by ResNet10" (line 178), that SONet replaces
"each residual basic block in the ResNet10 architecture" (line 179), and that the capacity is scaled "by changing
the input channel from 32 to 64" (line 182; Tables 1-2 list Channel 32 and 64).  Its code was not found (searched
the code and pages corpora for SONet/ResNet10).  We therefore use the common ResNet-10 = BasicBlock with one block
per stage (1, 1, 1, 1): 1 stem conv + 4 x 2 block convs + 1 linear = 10 weighted layers (1x1 shortcut convs not
counted, as for ResNet-18/34), and read "input channel" 32/64 as the stem width ``width`` (stages 32-64-128-256 or
64-128-256-512).  This is our reading, not a fact from the paper.

``resnet18_encoder``: the same ResNet-18 without the classifier; ``forward`` returns the ``8 * width`` (512)
pooled features.  ``.head`` is the SimCLR-style projection MLP ``Linear(512, 512) - ReLU - Linear(512, 128)`` used
only by the contrastive loss (abstain paper, line 111: setups follow Chen et al. 2020 and Khosla et al. 2020;
Table 1 caption: "512-dimensional representations").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model

WIDTH_DOC = "stem / first-stage channels; stages are width x (1, 2, 4, 8)"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with BasicBlocks; ``num_classes=None`` gives a feature extractor (``forward`` -> features)."""

    def __init__(self, blocks: tuple[int, ...], *, in_channels: int = 3, num_classes: int | None = 10,
                 width: int = 64):
        super().__init__()
        width = int(width)
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width}")
        self.blocks = tuple(blocks)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        in_planes = width
        for i, n in enumerate(self.blocks):
            planes = width * 2 ** i
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.linear = nn.Linear(in_planes, num_classes) if num_classes is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        return feats if self.linear is None else self.linear(feats)


class ResNetEncoder(CifarResNet):
    """ResNet feature extractor with a projection head (``.head``) that ``forward`` does not apply."""

    def __init__(self, blocks, *, in_channels: int = 3, width: int = 64, proj_dim: int = 128):
        super().__init__(blocks, in_channels=in_channels, num_classes=None, width=width)
        d = self.feature_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, int(proj_dim)))


@register_model(default_width=64, tiny_width=8, width_doc=WIDTH_DOC + " (sonet: 32 or 64)")
def resnet10(*, in_shape, num_classes, width=64):
    """ResNet-10 (BasicBlock, 1-1-1-1), the sonet paper's baseline; width 32 or 64 ("input channel")."""
    return CifarResNet((1, 1, 1, 1), in_channels=in_shape[0], num_classes=num_classes, width=width)


@register_model(default_width=64, tiny_width=8, width_doc=WIDTH_DOC)
def resnet18(*, in_shape, num_classes, width=64):
    """ResNet-18, CIFAR stem (3x3, stride 1, no max-pool), BasicBlock 2-2-2-2."""
    return CifarResNet((2, 2, 2, 2), in_channels=in_shape[0], num_classes=num_classes, width=width)


@register_model(default_width=64, tiny_width=8, width_doc=WIDTH_DOC)
def resnet34(*, in_shape, num_classes, width=64):
    """ResNet-34, CIFAR stem (3x3, stride 1, no max-pool), BasicBlock 3-4-6-3."""
    return CifarResNet((3, 4, 6, 3), in_channels=in_shape[0], num_classes=num_classes, width=width)


@register_model(default_width=64, tiny_width=8, width_doc=WIDTH_DOC + "; features are 8 x width (512)",
                kind="encoder")
def resnet18_encoder(*, in_shape, num_classes=None, width=64, proj_dim=128):
    """ResNet-18 encoder (CIFAR stem) -> 512-d features; .head = projection MLP 512-512-128 (num_classes ignored)."""
    return ResNetEncoder((2, 2, 2, 2), in_channels=in_shape[0], width=width, proj_dim=proj_dim)
