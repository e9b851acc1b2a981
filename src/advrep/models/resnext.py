"""ResNeXt-34 (2x32) and (4x32) as in Chris Finlay's ``tulip`` code (the lipreg paper's architecture).

The lipreg paper (``/work/shared/papers/001_92ec5d875816d6ad.txt``) names the models only: "We used the ResNeXt
architecture [64]" (line 440), "ResNeXt-34 (2x32)" for CIFAR-10 (lines 488, 492, 513, 525) and "ResNeXt-34 (4x32)"
for CIFAR-100 (Table 3 caption, line 466).  The layer-level facts below are read from cfinlay/tulip, commit
92c83e794127 (HEAD; the model files are unchanged since the initial commit 65e5df0d709c), files
``cifar10/models/resnet.py`` and ``cifar10/models/blocks.py``.  Note that tulip accompanies Finlay & Oberman,
"Scaleable input gradient regularization for adversarial robustness" (arXiv:1905.11468, README line 1-4), the
follow-up of the lipreg paper by the same first author; it is the public code that defines ``ResNeXt34_2x32``.
Implemented here from these facts (no code copied):

* ``ResNeXt34_2x32 = ResNet([5, 5, 5], block='BranchBlock', base_channels=32)`` (resnet.py lines 93-96): three
  stages of 5 branch blocks, widths 32, 64, 128 (``base_channels * 2**i``, lines 59-66).  Depth 34 = stem conv +
  15 blocks x 2 convs + 2 transition convs + final linear.  There is no ``ResNeXt34_4x32`` in tulip; we build it
  as the same network with 4 branches ("CxW" = branches x base channels), following the paper's naming.
* stem ``layer0``: ``Conv(in_channels, base_channels, kernel_size 3x3, stride 1)`` with ReLU (resnet.py line 52,
  defaults line 28); no max-pool (``conv0_pool=None``, line 29).
* stage transition (``make_layer``, resnet.py lines 34-47): when the width changes, a 1x1 ``Conv`` unit (with ReLU)
  first, then ``nn.AvgPool2d(stride)`` -- **average-pool downsampling** (``downsample_pool=nn.AvgPool2d``, line 29),
  no strided convs, and identity shortcuts inside every block.
* ``Conv`` / ``Linear`` units (blocks.py lines 13-160): conv (or linear) *without* bias -> **affine-free BatchNorm**
  (``BatchNorm2d/1d(out, affine=False)``, lines 36 and 114) -> plus a separately learned bias (lines 58-60,
  138-140) -> ReLU.  Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (lines 45-50, 123-129).
* ``BranchBlock`` (blocks.py lines 247-305): ``conv0`` 3x3, C -> C*branches, groups=1, no bias; BN; ReLU;
  ``conv1`` 3x3, C*branches -> C*branches, **groups=branches** (one group per branch), no bias; BN; the branches
  are then **averaged** (channel chunks k*C..(k+1)*C, lines 297-300: "like a simplified ResNeXt block, without the
  1x1 convolution layer aggregating the channels, using a mean to aggregate instead", lines 254-256); identity
  shortcut ``x + y``; ReLU.  Caution: these two BNs are ``nn.BatchNorm2d(channels * branches, affine=True)``
  (lines 278-279) -- tulip's BN is affine-free only in the Conv/Linear units.  We follow the code by default
  (``branch_bn_affine=True``); ``branch_bn_affine=False`` makes every BN in the network affine-free.
* head: global mean over H, W (``Avg2d``, lines 15-22) -> ``Linear(128, classes, nonlinear=nonlinear)`` (line 73).
  That ``Linear`` unit is the same one as above, so the logits pass through affine-free ``BatchNorm1d``, a bias
  **and a ReLU** (blocks.py line 62-63 with ``nonlinear='relu'``).  We reproduce this by default
  (``logit_relu=True``; logits are then non-negative); ``logit_relu=False`` drops the ReLU.
* the input is not normalised in tulip (``transforms.ToTensor()`` only, ``cifar10/dataloader.py`` lines 67-73); our
  zoo adds its ``normalization`` layer as for every model (``normalization="none"`` matches tulip exactly).
* a batch of one cannot go through the model in train mode (BatchNorm1d on the logits needs > 1 sample), as in
  tulip; eval mode is fine.

``width`` is ``base_channels`` (32); parameters at 10 classes: 3,892,298 (2 branches) and 7,771,978 (4 branches)
with the affine branch BNs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


class ConvUnit(nn.Module):
    """tulip's ``Conv`` unit: conv (no bias) -> BatchNorm2d(affine=False) -> + bias -> optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, affine=False)
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.relu = relu
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.conv.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) + self.bias.view(1, -1, 1, 1)
        return F.relu(y) if self.relu else y


class LinearUnit(nn.Module):
    """tulip's ``Linear`` unit: linear (no bias) -> BatchNorm1d(affine=False) -> + bias -> optional ReLU."""

    def __init__(self, in_features: int, out_features: int, relu: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features, affine=False)
        self.bias = nn.Parameter(torch.empty(out_features))
        self.relu = relu
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.linear.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.linear(x)) + self.bias.view(1, -1)
        return F.relu(y) if self.relu else y


class BranchBlock(nn.Module):
    """``branches`` parallel 2-conv paths (a grouped conv), averaged, plus the identity; then ReLU."""

    def __init__(self, channels: int, branches: int = 2, bn_affine: bool = True):
        super().__init__()
        self.channels, self.branches = channels, branches
        wide = channels * branches
        self.conv0 = nn.Conv2d(channels, wide, 3, padding=1, groups=1, bias=False)
        self.bn0 = nn.BatchNorm2d(wide, affine=bn_affine)
        self.conv1 = nn.Conv2d(wide, wide, 3, padding=1, groups=branches, bias=False)
        self.bn1 = nn.BatchNorm2d(wide, affine=bn_affine)

    def branch_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, branches, C, H, W): the output of each branch before averaging."""
        y = self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x)))))
        b, _, h, w = y.shape
        return y.view(b, self.branches, self.channels, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.branch_outputs(x).mean(1))


class TulipResNeXt(nn.Module):
    def __init__(self, layers=(5, 5, 5), *, branches: int = 2, base_channels: int = 32, in_channels: int = 3,
                 num_classes: int = 10, branch_bn_affine: bool = True, logit_relu: bool = True):
        super().__init__()
        base_channels, branches = int(base_channels), int(branches)
        if base_channels < 1 or branches < 1:
            raise ValueError(f"base_channels and branches must be positive, got {base_channels}, {branches}")
        self.branches = branches
        self.layer0 = ConvUnit(in_channels, base_channels, 3, 1, relu=True)
        stages = []
        channels = base_channels
        for i, n in enumerate(layers):
            out = base_channels * 2 ** i
            sub: list[nn.Module] = []
            if out != channels:
                sub.append(ConvUnit(channels, out, 1, 1, relu=True))
            if i > 0:
                sub.append(nn.AvgPool2d(2))
            sub += [BranchBlock(out, branches, bn_affine=branch_bn_affine) for _ in range(n)]
            stages.append(nn.Sequential(*sub))
            channels = out
        self.layers = nn.Sequential(*stages)
        self.feature_dim = channels
        self.fc = LinearUnit(channels, num_classes, relu=logit_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.layer0(x))
        return self.fc(y.mean(dim=(2, 3)))


WIDTH_DOC = "base channels (stages width, 2 width, 4 width); tulip: 32"


@register_model(default_width=32, tiny_width=4, width_doc=WIDTH_DOC)
def resnext34_2x32(*, in_shape, num_classes, width=32, branch_bn_affine=True, logit_relu=True):
    """ResNeXt-34 (2x32) from cfinlay/tulip: 3x5 branch blocks, 2 branches, affine-free BN units, avg-pool downs."""
    return TulipResNeXt((5, 5, 5), branches=2, base_channels=width, in_channels=in_shape[0],
                        num_classes=num_classes, branch_bn_affine=branch_bn_affine, logit_relu=logit_relu)


@register_model(default_width=32, tiny_width=4, width_doc=WIDTH_DOC)
def resnext34_4x32(*, in_shape, num_classes, width=32, branch_bn_affine=True, logit_relu=True):
    """ResNeXt-34 (4x32): tulip's ResNeXt-34 with 4 branches (lipreg Table 3, CIFAR-100)."""
    return TulipResNeXt((5, 5, 5), branches=4, base_channels=width, in_channels=in_shape[0],
                        num_classes=num_classes, branch_bn_affine=branch_bn_affine, logit_relu=logit_relu)
