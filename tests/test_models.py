"""Tests of advrep.models: the registry, in-model normalisation, every architecture on 28x28x1 and 32x32x3 inputs,
parameter counts worked out by hand from the layer shapes, the tulip ResNeXt structure, Madry's models, the
contrastive encoder and its linear probe, and determinism."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import transforms

from advrep.models import (DATASET_STATS, LinearProbe, Normalize, PerImageStandardization, create_model,
                           list_models, model_info, register_model, wide_resnet)
from advrep.models.resnext import BranchBlock, ConvUnit, LinearUnit
from advrep.models.wrn import Conv2dSame, same_padding

EXPECTED_NAMES = {"resnet10", "resnet18", "resnet34", "wrn34_10", "wrn28_10", "resnext34_2x32", "resnext34_4x32",
                  "madry_mnist_cnn", "madry_cifar_wrn", "mlp", "resnet18_encoder", "sonet", "soblock",
                  "odenet"}
IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32)]
FMNIST_TRAIN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: one intra-op thread avoids OpenMP oversubscription on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def full_params(name, shape=(3, 32, 32), **kw) -> int:
    """Parameter count of a full-width model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return n_params(create_model(name, in_shape=shape, **kw))


# ---------------------------------------------------------------- parameter arithmetic (by hand, from the shapes)

def conv(cin, cout, k, bias=False, groups=1):
    return (cin // groups) * cout * k * k + (cout if bias else 0)


def bn(c):       # affine BatchNorm: weight + bias
    return 2 * c


def fc(i, o):    # linear with bias
    return i * o + o


def resnet_cifar_params(blocks, width=64, in_ch=3, nc=10):
    total = conv(in_ch, width, 3) + bn(width)                        # 3x3 stem + BN
    in_p = width
    for i, n in enumerate(blocks):
        p = width * 2 ** i
        for _ in range(n):
            total += conv(in_p, p, 3) + bn(p) + conv(p, p, 3) + bn(p)
            if in_p != p:                                              # 1x1 projection shortcut + BN
                total += conv(in_p, p, 1) + bn(p)
            in_p = p
    return total + fc(in_p, nc)


def trades_wrn_params(depth, k, in_ch=3, nc=10):
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    total = conv(in_ch, 16, 3)
    for i in range(3):
        cin, cout = ch[i], ch[i + 1]
        total += bn(cin) + conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + conv(cin, cout, 1)  # first block
        total += (n - 1) * (bn(cout) + conv(cout, cout, 3) + bn(cout) + conv(cout, cout, 3))
    return total + bn(ch[3]) + fc(ch[3], nc)


# ------------------------------------------------------------------------------------------------------ registry

def test_registry_names():
    assert set(list_models()) == EXPECTED_NAMES
    assert list_models() == sorted(list_models())


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet999", in_shape=(3, 32, 32), num_classes=10)
    for name in EXPECTED_NAMES:
        assert name in str(err.value)


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda **kw: nn.Identity(), name="resnet18")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", in_shape=(3, 32, 32), width="tiny")
    with pytest.raises(ValueError, match="width"):
        create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="huge")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        create_model("resnet18", in_shape=(784,), num_classes=10)
    with pytest.raises(ValueError, match="unknown normalization"):
        create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="tiny", normalization="imagenet")
    with pytest.raises(ValueError, match="channel"):   # 1-channel stats on a 3-channel model
        create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="tiny", normalization="mnist")


# ------------------------------------------------------------- every model: both input shapes, tiny, fwd + bwd

CASES = [(name, shape) for name in sorted(EXPECTED_NAMES - {"mlp"}) for shape in IMAGE_SHAPES] + [("mlp", (12,))]


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_builds_forward_backward_tiny(name, shape):
    torch.manual_seed(0)
    nc = 2 if name == "mlp" else 7
    m = create_model(name, in_shape=shape, num_classes=nc, width="tiny", seed=0)
    assert m.in_shape == shape
    assert next(iter(m.children())) is m.normalize          # the normalisation is the first layer
    m.train()
    x = torch.rand(8, *shape, requires_grad=True)            # inputs in [0, 1]
    out_dim = m.feature_dim if name == "resnet18_encoder" else nc
    assert n_params(m) < 600_000                              # tiny really is tiny
    for _ in range(2):
        m.zero_grad(set_to_none=True)
        x.grad = None
        y = m(x)
        loss = y.square().mean()
        if name == "resnet18_encoder":           # the projection head is trained through the contrastive loss
            loss = loss + m.project(x).square().mean()
        loss.backward()
    assert y.shape == (8, out_dim)
    assert torch.isfinite(y).all()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    m.eval()
    with torch.no_grad():
        assert m(x[:3]).shape == (3, out_dim)


# ------------------------------------------------------------------------------------------------ normalisation

@pytest.mark.parametrize("key", [k for k, v in DATASET_STATS.items() if v is not None])
def test_normalize_matches_torchvision(key):
    mean, std = DATASET_STATS[key]
    x = torch.rand(5, len(mean), 9, 11)
    ours = Normalize(mean, std)(x)
    ref = transforms.Normalize(mean, std)(x)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # and by hand for one pixel / channel
    c = len(mean) - 1
    assert ours[2, c, 3, 4].item() == pytest.approx((x[2, c, 3, 4].item() - mean[c]) / std[c], rel=1e-5)


@pytest.mark.parametrize("name,shape,expected", [
    ("resnet18", (3, 32, 32), "cifar10"), ("madry_mnist_cnn", (1, 28, 28), "mnist"),
    ("resnext34_2x32", (3, 32, 32), "cifar10"), ("wrn34_10", (1, 28, 28), "mnist"),
    ("resnet10", (3, 32, 32), "digits32"), ("resnet34", (1, 28, 28), "fashion_mnist")])
def test_model_equals_core_of_standardised_input(name, shape, expected):
    explicit = None if expected in ("cifar10", "mnist") else expected   # cifar10 / mnist: picked by channel count
    m = create_model(name, in_shape=shape, num_classes=10, width="tiny", seed=1, normalization=explicit).eval()
    assert m.normalization == expected
    mean, std = DATASET_STATS[expected]
    assert isinstance(m.normalize, Normalize)
    torch.testing.assert_close(m.state_dict()["normalize.mean"].flatten(), torch.tensor(mean))
    x = torch.rand(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.core(transforms.Normalize(mean, std)(x)))
        # the normalisation does something: the core on raw x gives other outputs
        assert not torch.allclose(m(x), m.core(x))


def test_none_and_custom_normalization():
    m = create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="tiny", normalization="none").eval()
    assert isinstance(m.normalize, nn.Identity)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.core(x))
    m = create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="tiny",
                     normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.core((x - 0.5) / 0.25))


def tf_per_image_standardization(x: np.ndarray, scale=255.0) -> np.ndarray:
    """tf.image.per_image_standardization on scale * x, written out with numpy (TF docs: (x - mean) /
    max(stddev, 1/sqrt(num_elements)))."""
    out = np.empty_like(x, dtype=np.float64)
    for i, img in enumerate(np.asarray(x, dtype=np.float64) * scale):
        out[i] = (img - img.mean()) / max(img.std(), 1.0 / math.sqrt(img.size))
    return out


def test_madry_cifar_per_image_standardization():
    m = create_model("madry_cifar_wrn", in_shape=(3, 32, 32), num_classes=10, width="tiny", seed=0).eval()
    assert m.normalization == "per_image" and isinstance(m.normalize, PerImageStandardization)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    x[1] = 0.5                                     # constant image: the 1/sqrt(N) floor binds, output all zeros
    x[2] = 0.5 + 1e-6 * torch.rand(3, 32, 32, dtype=torch.float64)   # tiny std: floor binds only at 0..255 scale
    ref = torch.from_numpy(tf_per_image_standardization(x.numpy()))
    ours = m.normalize(x)
    torch.testing.assert_close(ours, ref)
    assert ours[1].abs().max() == 0
    m = m.double()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.core(ref))


def test_dataset_stats_digits_recomputed():
    from advrep.data.synthetic import make_digits
    for size, channels, key in ((28, 1, "digits28"), (32, 3, "digits32")):
        x_train = make_digits(size, channels)[0].astype(np.float64) / 255.0     # (N, H, W, C)
        mean, std = DATASET_STATS[key]
        np.testing.assert_allclose(x_train.mean(axis=(0, 1, 2)), mean, atol=1e-4)
        np.testing.assert_allclose(x_train.std(axis=(0, 1, 2)), std, atol=1e-4)


@pytest.mark.skipif(not FMNIST_TRAIN.exists(), reason="Debian's dataset-fashion-mnist files not installed")
def test_dataset_stats_fashion_mnist_recomputed():
    raw = gzip.open(FMNIST_TRAIN).read()
    x = np.frombuffer(raw, np.uint8, offset=16).astype(np.float64) / 255.0
    assert x.size == 60000 * 784
    mean, std = DATASET_STATS["fashion_mnist"]
    assert x.mean() == pytest.approx(mean[0], abs=1e-4)
    assert x.std() == pytest.approx(std[0], abs=1e-4)


# ------------------------------------------------------------------------ parameter counts at published widths

def test_param_counts_by_hand():
    # ResNet-18 (CIFAR): stem 1,728 + 128; stage 1: 2 x (2 x 36,864 + 256) = 147,968; stage 2: 525,568;
    # stage 3: 2,099,712; stage 4: 8,393,728; fc 5,130  ->  11,173,962 (the published 11.17M).
    r18 = resnet_cifar_params((2, 2, 2, 2))
    assert (conv(3, 64, 3) + bn(64), 2 * (2 * conv(64, 64, 3) + 2 * bn(64)), fc(512, 10)) == (1856, 147968, 5130)
    assert r18 == 11_173_962 and round(r18 / 1e6, 2) == 11.17
    assert n_params(create_model("resnet18", in_shape=(3, 32, 32), num_classes=10)) == r18
    assert full_params("resnet34", (3, 32, 32), num_classes=10) \
        == resnet_cifar_params((3, 4, 6, 3)) == 21_282_122
    # ResNet-10 (1-1-1-1) at the sonet widths 64 and 32
    for w, expected in ((64, 4_903_242), (32, 1_228_970)):
        assert resnet_cifar_params((1, 1, 1, 1), width=w) == expected
        assert full_params("resnet10", (3, 32, 32), num_classes=10, width=w) == expected

    # WRN-34-10 (TRADES): stem 432; stage 1 (16->160): 256,352 + 4 x 461,440; stage 2: 1,434,560 + 4 x 1,844,480;
    # stage 3: 5,736,320 + 4 x 7,375,360; final BN 1,280; fc 6,410  ->  46,160,474 (46.16M).
    assert (bn(16) + conv(16, 160, 3) + bn(160) + conv(160, 160, 3) + conv(16, 160, 1)) == 256_352
    wrn34 = trades_wrn_params(34, 10)
    assert wrn34 == 432 + 256_352 + 4 * 461_440 + 1_434_560 + 4 * 1_844_480 + 5_736_320 + 4 * 7_375_360 + 1280 + 6410
    assert wrn34 == 46_160_474 and round(wrn34 / 1e6, 2) == 46.16
    assert full_params("wrn34_10", (3, 32, 32), num_classes=10) == wrn34
    wrn28 = trades_wrn_params(28, 10)
    assert wrn28 == 36_479_194 and round(wrn28 / 1e6, 2) == 36.48
    assert full_params("wrn28_10", (3, 32, 32), num_classes=10) == wrn28
    with torch.device("meta"):
        assert n_params(wide_resnet(28, 10, num_classes=10)) == wrn28

    # Madry MNIST CNN: 5*5*1*32+32 + 5*5*32*64+64 + 3136*1024+1024 + 1024*10+10 = 3,274,634 (3.27M)
    madry_mnist = conv(1, 32, 5, bias=True) + conv(32, 64, 5, bias=True) + fc(7 * 7 * 64, 1024) + fc(1024, 10)
    assert madry_mnist == 832 + 51_264 + 3_212_288 + 10_250 == 3_274_634 and round(madry_mnist / 1e6, 2) == 3.27
    assert full_params("madry_mnist_cnn", (1, 28, 28), num_classes=10) == madry_mnist
    # on 32x32x3 the flattened size is 8*8*64
    assert full_params("madry_mnist_cnn", (3, 32, 32), num_classes=10) \
        == conv(3, 32, 5, True) + conv(32, 64, 5, True) + fc(8 * 8 * 64, 1024) + fc(1024, 10)

    # Madry CIFAR-10: init conv 432; units without shortcut parameters: BN(in) + conv(in,out) + BN(out) + conv(out,out)
    f = [16, 160, 320, 640]
    madry = conv(3, 16, 3)
    for i in range(3):
        madry += bn(f[i]) + conv(f[i], f[i + 1], 3) + bn(f[i + 1]) + conv(f[i + 1], f[i + 1], 3)
        madry += 4 * (2 * bn(f[i + 1]) + 2 * conv(f[i + 1], f[i + 1], 3))
    madry += bn(640) + fc(640, 10)
    assert madry == 45_901_914
    assert full_params("madry_cifar_wrn", (3, 32, 32), num_classes=10) == madry


def resnext_params(branches, base=32, nc=10, in_ch=3, branch_bn_affine=True):
    total = conv(in_ch, base, 3) + base                      # stem conv + separate bias (BN affine-free)
    c_prev = None
    for i in range(3):
        c = base * 2 ** i
        if c_prev is not None:
            total += conv(c_prev, c, 1) + c                  # 1x1 transition unit (+ bias)
        wide = c * branches
        block = conv(c, wide, 3) + conv(wide, wide, 3, groups=branches)
        if branch_bn_affine:
            block += 2 * bn(wide)
        total += 5 * block
        c_prev = c
    return total + c_prev * nc + nc                          # linear (no bias) + separate bias


def test_resnext_param_counts():
    # 2x32: stem 896; stage 1: 5 x (18,432 + 18,432 + 256); transition 2,112; stage 2: 5 x 147,968; transition 8,320;
    # stage 3: 5 x 590,848; fc 1,290  ->  3,892,298
    assert resnext_params(2) == 896 + 5 * 37_120 + 2_112 + 5 * 147_968 + 8_320 + 5 * 590_848 + 1_290 == 3_892_298
    assert full_params("resnext34_2x32", (3, 32, 32), num_classes=10) == resnext_params(2)
    assert full_params("resnext34_4x32", (3, 32, 32), num_classes=100) \
        == resnext_params(4, nc=100)
    assert full_params("resnext34_2x32", (3, 32, 32), num_classes=10, branch_bn_affine=False) \
        == resnext_params(2, branch_bn_affine=False) == 3_892_298 - 5 * (4 * 64 + 4 * 128 + 4 * 256)


# --------------------------------------------------------------------------------------------- ResNeXt (tulip)

@pytest.mark.parametrize("name,branches", [("resnext34_2x32", 2), ("resnext34_4x32", 4)])
def test_resnext_structure(name, branches):
    m = create_model(name, in_shape=(3, 32, 32), num_classes=10, width=8, seed=0)
    core = m.core
    blocks = [b for b in core.modules() if isinstance(b, BranchBlock)]
    assert len(blocks) == 15
    assert [b.channels for b in blocks] == [8] * 5 + [16] * 5 + [32] * 5
    for b in blocks:
        assert b.branches == branches
        assert b.conv0.out_channels == b.channels * branches and b.conv0.groups == 1
        assert b.conv1.groups == branches                        # one group per branch (cardinality)
        assert b.conv1.weight.shape == (b.channels * branches, b.channels, 3, 3)
    # depth 34 = weighted layers: stem + 15 x 2 + 2 transitions + fc
    weighted = [mod for mod in core.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 34
    # down-sampling by average pooling, never by a strided conv
    assert sum(isinstance(mod, nn.AvgPool2d) for mod in core.modules()) == 2
    assert all(c.stride == (1, 1) for c in core.modules() if isinstance(c, nn.Conv2d))
    # affine-free BN in the Conv/Linear units (stem, 2 transitions, logits), each followed by its own bias
    units = [u for u in core.modules() if isinstance(u, (ConvUnit, LinearUnit))]
    assert len(units) == 4
    for u in units:
        assert not u.bn.affine and list(u.bn.parameters()) == []
        assert u.bias.shape == (u.bn.num_features,)
        assert (u.conv if isinstance(u, ConvUnit) else u.linear).bias is None
    # the branch-block BNs follow tulip's code (blocks.py lines 278-279: affine=True) unless turned off
    assert all(b.bn0.affine and b.bn1.affine for b in blocks)
    m2 = create_model(name, in_shape=(3, 32, 32), num_classes=10, width=8, branch_bn_affine=False)
    bns = [mod for mod in m2.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 4 + 2 * 15
    assert all(list(b.parameters()) == [] for b in bns)


def test_resnext_branches_are_averaged():
    torch.manual_seed(0)
    block = BranchBlock(6, branches=3).eval()
    for b in (block.bn0, block.bn1):                     # non-trivial BN statistics and affine params
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
        b.weight.data.uniform_(0.5, 1.5)
        b.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        h = F.relu(block.bn0(block.conv0(x)))            # (2, 18, 5, 5): 3 branches of 6 channels
        outs = []
        for k in range(3):                               # run each branch on its own slice with its own weights
            w = block.conv1.weight[6 * k:6 * (k + 1)]
            y = F.conv2d(h[:, 6 * k:6 * (k + 1)], w, padding=1)
            sl = slice(6 * k, 6 * (k + 1))
            y = (y - block.bn1.running_mean[sl].view(1, -1, 1, 1)) / torch.sqrt(
                block.bn1.running_var[sl].view(1, -1, 1, 1) + block.bn1.eps)
            outs.append(y * block.bn1.weight[sl].view(1, -1, 1, 1) + block.bn1.bias[sl].view(1, -1, 1, 1))
        expected = F.relu(x + sum(outs) / 3)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_resnext_logit_relu_follows_tulip():
    x = torch.rand(16, 3, 32, 32)
    m = create_model("resnext34_2x32", in_shape=(3, 32, 32), num_classes=10, width=4, seed=0).eval()
    m_lin = create_model("resnext34_2x32", in_shape=(3, 32, 32), num_classes=10, width=4, seed=0,
                         logit_relu=False).eval()
    with torch.no_grad():
        y, y_lin = m(x), m_lin(x)
    assert (y >= 0).all() and (y_lin < 0).any()
    torch.testing.assert_close(y, F.relu(y_lin))


# ------------------------------------------------------------------------------------- ResNets / WRN / Madry

@pytest.mark.parametrize("name,depth", [("resnet10", 10), ("resnet18", 18), ("resnet34", 34)])
def test_resnet_depth_and_stem(name, depth):
    m = create_model(name, in_shape=(3, 32, 32), num_classes=10, width="tiny").core
    weighted = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear)) and
                not (isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1))]
    assert len(weighted) == depth
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())


def test_wrn_trades_facts():
    m = wide_resnet(34, 1, num_classes=10)
    assert not hasattr(m, "sub_block1")
    assert [len(m.block1), len(m.block2), len(m.block3)] == [5, 5, 5]
    assert m.block1[0].conv1.out_channels == 16 and m.block3[0].conv1.out_channels == 64
    assert m.block2[0].shortcut.kernel_size == (1, 1) and m.block2[0].shortcut.stride == (2, 2)
    assert all(b.weight.eq(1).all() and b.bias.eq(0).all() for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    assert m.fc.bias.eq(0).all()
    # pre-activation wiring: the 1x1 shortcut takes the activated input where the width changes (TRADES l. 24-31)
    blk = m.block2[0].eval()
    for b in (blk.bn1, blk.bn2):
        b.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        a = F.relu(blk.bn1(x))
        torch.testing.assert_close(blk(x), blk.conv2(F.relu(blk.bn2(blk.conv1(a)))) + blk.shortcut(a))
        blk2 = m.block2[1].eval()
        x2 = torch.randn(2, 32, 4, 4)
        torch.testing.assert_close(blk2(x2), x2 + blk2.conv2(F.relu(blk2.bn2(blk2.conv1(F.relu(blk2.bn1(x2)))))))
    with pytest.raises(ValueError):
        wide_resnet(30, 10)


def test_madry_cifar_facts():
    m = create_model("madry_cifar_wrn", in_shape=(3, 32, 32), num_classes=10, width=2).core
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 5 * 2                      # no shortcut convs: parameter-free shortcuts
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [m.unit_1[0].conv1.out_channels, m.unit_2[0].conv1.out_channels, m.unit_3[0].conv1.out_channels] \
        == [32, 64, 128]
    assert [u.activate_before_residual for u in (m.unit_1[0], m.unit_2[0], m.unit_3[0])] == [True, False, False]
    assert all(b.eps == 1e-3 for b in m.modules() if isinstance(b, nn.BatchNorm2d))


def test_tf_same_padding():
    assert same_padding(32, 3, 2) == (0, 1) and same_padding(32, 3, 1) == (1, 1) and same_padding(7, 3, 2) == (1, 1)
    torch.manual_seed(0)
    c = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 8)
    y = c(x)
    assert y.shape == (1, 3, 4, 4)
    torch.testing.assert_close(y, F.conv2d(F.pad(x, (0, 1, 0, 1)), c.weight, stride=2))
    assert not torch.allclose(y, F.conv2d(x, c.weight, stride=2, padding=1))


def test_madry_mnist_cnn_layers():
    m = create_model("madry_mnist_cnn", in_shape=(1, 28, 28), num_classes=10).core
    assert (m.conv1.weight.shape, m.conv2.weight.shape) == ((32, 1, 5, 5), (64, 32, 5, 5))
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (3136, 1024, 10)
    assert m.conv1.bias.eq(0.1).all() and m.fc1.weight.abs().max() <= 0.2      # Madry's init


def test_mlp_is_one_hidden_layer():
    d = 12
    m = create_model("mlp", in_shape=(d,), num_classes=2, hidden=100, seed=0).eval()
    assert isinstance(m.normalize, nn.Identity) and m.normalization == "none"
    assert n_params(m) == fc(d, 100) + fc(100, 2)
    x = torch.rand(5, d)
    c = m.core
    with torch.no_grad():
        torch.testing.assert_close(m(x), F.relu(x @ c.fc1.weight.T + c.fc1.bias) @ c.fc2.weight.T + c.fc2.bias)
    assert create_model("mlp", in_shape=(d,), num_classes=2).core.fc1.out_features == 100
    assert create_model("mlp", in_shape=(d,), num_classes=2, width=7).core.fc1.out_features == 7


# ---------------------------------------------------------------------------------------- encoder and probe

def test_resnet18_encoder_full_width():
    enc = create_model("resnet18_encoder", in_shape=(3, 32, 32))
    assert enc.feature_dim == 512
    lins = [mod for mod in enc.head.modules() if isinstance(mod, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == [(512, 512), (512, 128)]
    assert n_params(enc) == resnet_cifar_params((2, 2, 2, 2)) - fc(512, 10) + fc(512, 512) + fc(512, 128)


def test_linear_probe():
    enc = create_model("resnet18_encoder", in_shape=(3, 32, 32), width="tiny", seed=0)
    probe = LinearProbe(enc, 10).train()
    assert not enc.training and probe.training
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.rand(8, 3, 32, 32, requires_grad=True)
    logits = probe(x)
    assert logits.shape == (8, 10)
    F.cross_entropy(logits, torch.arange(8) % 10).backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert probe.fc.weight.grad is not None and x.grad is not None and x.grad.abs().sum() > 0
    for k, v in enc.state_dict().items():            # frozen: BN running stats untouched in train mode
        torch.testing.assert_close(v, before[k])
    with torch.no_grad():
        assert enc.project(x).shape == (8, 128)
        torch.testing.assert_close(probe(x), probe.fc(enc(x)))


# ---------------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", ["resnext34_2x32", "wrn34_10", "madry_mnist_cnn"])
def test_same_seed_same_weights(name):
    shape = (1, 28, 28)
    rng_before = torch.get_rng_state()
    a = create_model(name, in_shape=shape, num_classes=10, width="tiny", seed=123).state_dict()
    b = create_model(name, in_shape=shape, num_classes=10, width="tiny", seed=123).state_dict()
    c = create_model(name, in_shape=shape, num_classes=10, width="tiny", seed=124).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)      # the caller's RNG is untouched
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    # without seed=, the global seed decides
    torch.manual_seed(5)
    d = create_model(name, in_shape=shape, num_classes=10, width="tiny").state_dict()
    torch.manual_seed(5)
    e = create_model(name, in_shape=shape, num_classes=10, width="tiny").state_dict()
    assert all(torch.equal(d[k], e[k]) for k in d)


def test_model_info():
    info = model_info("resnet10")
    assert info.default_width == 64 and info.tiny_width == 8 and "32 or 64" in info.width_doc
    assert model_info("madry_cifar_wrn").normalization == "per_image"
