"""Wide ResNets: the TRADES/AWP/OA-AT ``WideResNet`` (``wrn34_10``, ``wrn28_10``, :func:`wide_resnet`) and Madry's
CIFAR-10 challenge model (``madry_cifar_wrn``).

TRADES ``WideResNet`` -- facts from yaodongyu/TRADES ``models/wideresnet.py`` (commit 6e8e11b7c281):

* ``nChannels = [16, 16k, 32k, 64k]`` (line 53), ``n = (depth - 4) / 6`` blocks per stage; stem 3x3 conv 3 -> 16,
  stride 1, no bias; stages with strides 1, 2, 2.
* pre-activation BasicBlock: BN-ReLU-conv3x3(stride)-BN-ReLU-(dropout)-conv3x3; when in != out channels the
  shortcut is a 1x1 conv with the block's stride, no bias (line 20), applied to the *activated* input, otherwise the
  identity on the raw input (lines 23-31).
* after the last stage BN-ReLU, ``avg_pool2d(out, 8)``, linear (lines 84-91).  We pool adaptively (identical on
  32x32 inputs; on 28x28 the last map is 7x7).
* init (lines 74-82): conv weights ~ N(0, sqrt(2 / (k*k*out_channels))), BN weight 1 bias 0, linear bias 0.
* the file also builds ``self.sub_block1`` (line 63), a copy of stage 1 that ``forward`` never uses.  We leave it
  out: the published 46.16M (WRN-34-10) / 36.48M (WRN-28-10) parameter counts exclude it (it would add 2,102,112 /
  1,640,672 parameters).  Loading a TRADES checkpoint therefore needs its ``sub_block1.*`` keys dropped.

Madry CIFAR-10 model -- facts from MadryLab/cifar10_challenge ``model.py`` (commit f15682d9f1e2):

* input: ``tf.image.per_image_standardization`` of the raw 0..255 pixels (line 40) -> our default
  ``normalization="per_image"`` (:class:`~advrep.models.registry.PerImageStandardization`).
* ``init_conv`` 3x3, 3 -> 16, stride 1 (line 42); ``filters = [16, 160, 320, 640]`` (line 52; "use filters = [16,
  16, 32, 64] for a non-wide version", line 51), i.e. ``[16, 16w, 32w, 64w]`` with ``width`` w = 10; strides
  [1, 2, 2] (line 46).
* 5 residual units per stage: ``unit_i_0`` plus ``for i in range(1, 5)`` (lines 56-75).  NB: the comment says
  "w28-10", but 5 units per stage is depth 6*5+4 = 34 in WRN counting (WRN-28 has 4); the parameter count
  (45,901,914) matches 5 units.
* residual unit (lines 112-143): pre-activation BN -> leaky ReLU(0.1); in the first unit of stage 1
  (``activate_before_residual = [True, False, False]``, line 47) the shortcut takes the activated input, otherwise
  the raw input; conv3x3(stride) -> BN -> leaky ReLU(0.1) -> conv3x3.  The shortcut has **no parameters**: when
  in != out it is ``avg_pool(ksize=stride, stride, 'VALID')`` followed by zero-padding the channels by
  (out - in) // 2 on each side (lines 135-139).
* ``unit_last``: BN -> leaky ReLU(0.1) -> global average pool (lines 78-81); ``logit``: linear 640 -> 10 with bias
  (line 84).
* BN: ``tf.contrib.layers.batch_norm(decay=.9, center=True, scale=True)`` (lines 100-110) -> torch momentum 0.1 and
  TF's default epsilon 0.001.
* convs use TF 'SAME' padding (line 161): for the stride-2 3x3 convs on even sizes TF pads 0 before and 1 after;
  we reproduce that (``Conv2dSame``) rather than torch's symmetric padding=1.  Conv init N(0, sqrt(2/(k*k*out)))
  (lines 157-160); linear weights ``uniform_unit_scaling(factor=1.0)`` = U(-sqrt(3/in), sqrt(3/in)), bias 0
  (lines 170-178).
* Not reproduced: TF's NHWC weight layout (irrelevant unless porting TF checkpoints).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


# ------------------------------------------------------------------------------------------ TRADES WideResNet

def _init_conv_bn(model: nn.Module) -> None:
    """He-normal convolutions (fan-out, as both reference implementations), BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_planes == out_planes
        self.shortcut = (None if self.equal_in_out
                         else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen: int = 10, *, in_channels: int = 3, num_classes: int = 10,
                 drop_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (n >= 1), got {depth}")
        widen = int(widen)
        if widen < 1:
            raise ValueError(f"widen must be a positive int, got {widen}")
        n = (depth - 4) // 6
        self.depth, self.widen = depth, widen
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            stages.append(nn.Sequential(*[
                WideBasicBlock(ch[i] if j == 0 else ch[i + 1], ch[i + 1], stride if j == 0 else 1, drop_rate)
                for j in range(n)]))
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)
        self.feature_dim = ch[3]
        _init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def wide_resnet(depth: int = 34, widen: int = 10, *, in_channels: int = 3, num_classes: int = 10,
                drop_rate: float = 0.0) -> WideResNet:
    """The TRADES-style WideResNet-``depth``-``widen`` (core only, no normalisation)."""
    return WideResNet(depth, widen, in_channels=in_channels, num_classes=num_classes, drop_rate=drop_rate)


WRN_WIDTH_DOC = "widen factor k (stages 16k, 32k, 64k)"


@register_model(default_width=10, tiny_width=1, width_doc=WRN_WIDTH_DOC)
def wrn34_10(*, in_shape, num_classes, width=10, depth=34, drop_rate=0.0):
    """WideResNet-34-10 as in the TRADES / AWP / OA-AT code (pre-activation, 1x1 conv shortcuts)."""
    return wide_resnet(depth, width, in_channels=in_shape[0], num_classes=num_classes, drop_rate=drop_rate)


@register_model(default_width=10, tiny_width=1, width_doc=WRN_WIDTH_DOC)
def wrn28_10(*, in_shape, num_classes, width=10, depth=28, drop_rate=0.0):
    """WideResNet-28-10 (same code as wrn34_10, depth 28)."""
    return wide_resnet(depth, width, in_channels=in_shape[0], num_classes=num_classes, drop_rate=drop_rate)


# --------------------------------------------------------------------------------------- Madry CIFAR-10 model

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A square-kernel Conv2d with TensorFlow 'SAME' padding (asymmetric when the total padding is odd)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0)


def _madry_bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class MadryResidual(nn.Module):
    def __init__(self, in_filter: int, out_filter: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.in_filter, self.out_filter, self.stride = in_filter, out_filter, stride
        self.activate_before_residual = activate_before_residual
        self.init_bn = _madry_bn(in_filter)
        self.conv1 = Conv2dSame(in_filter, out_filter, 3, stride)
        self.bn2 = _madry_bn(out_filter)
        self.conv2 = Conv2dSame(out_filter, out_filter, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu(self.init_bn(x), 0.1)
        orig = act if self.activate_before_residual else x
        out = self.conv1(act)
        out = self.conv2(F.leaky_relu(self.bn2(out), 0.1))
        if self.in_filter != self.out_filter:
            if self.stride > 1:
                orig = F.avg_pool2d(orig, self.stride, self.stride)
            pad = (self.out_filter - self.in_filter) // 2
            orig = F.pad(orig, (0, 0, 0, 0, pad, pad))
        return out + orig


class MadryCifarWRN(nn.Module):
    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, width: int = 10, units: int = 5):
        super().__init__()
        width = int(width)
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width}")
        filters = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = Conv2dSame(in_channels, filters[0], 3, 1)
        stages = []
        for i, (stride, abr) in enumerate(zip((1, 2, 2), (True, False, False))):
            stage = [MadryResidual(filters[i], filters[i + 1], stride, abr)]
            stage += [MadryResidual(filters[i + 1], filters[i + 1], 1, False) for _ in range(1, units)]
            stages.append(nn.Sequential(*stage))
        self.unit_1, self.unit_2, self.unit_3 = stages
        self.final_bn = _madry_bn(filters[3])
        self.fc = nn.Linear(filters[3], num_classes)
        self.feature_dim = filters[3]
        _init_conv_bn(self)
        bound = math.sqrt(3.0 / filters[3])
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.unit_3(self.unit_2(self.unit_1(self.init_conv(x))))
        out = F.leaky_relu(self.final_bn(out), 0.1)
        return self.fc(out.mean(dim=(2, 3)))


@register_model(default_width=10, tiny_width=1, normalization="per_image",
                width_doc="widen factor w (filters 16, 16w, 32w, 64w; Madry: w=10, 'non-wide' w=1)")
def madry_cifar_wrn(*, in_shape, num_classes, width=10, units=5):
    """Madry et al. CIFAR-10 challenge model: WRN-style, 5 units/stage, filters 16-160-320-640, per-image std."""
    return MadryCifarWRN(in_channels=in_shape[0], num_classes=num_classes, width=width, units=units)
