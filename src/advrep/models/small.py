"""Small models: Madry et al.'s MNIST CNN (``madry_mnist_cnn``) and the one-hidden-layer MLP (``mlp``).

Madry MNIST CNN -- facts from MadryLab/mnist_challenge ``model.py`` (commit 3ee3643c4a8c):

* conv 5x5, 1 -> 32, stride 1, 'SAME' padding, + bias, ReLU (lines 19-22, 69); max-pool 2x2 stride 2 'SAME'
  (lines 23, 72-76);
* conv 5x5, 32 -> 64, 'SAME', + bias, ReLU; max-pool 2x2 (lines 26-30);
* fully connected 7*7*64 -> 1024, ReLU (lines 33-37); fully connected 1024 -> 10 (lines 40-43), logits.
* init: weights ~ truncated normal, std 0.1 (line 59); biases 0.1 (line 64).
* the model takes the raw [0, 1] MNIST pixels (no normalisation in the graph); our zoo adds the ``normalization``
  layer as for every model (``normalization="none"`` reproduces Madry's input exactly).
* 'SAME' 2x2/2 max-pooling = ``ceil_mode=True`` pooling; for other input sizes the flattened size is
  ``64 * ceil(ceil(H/2)/2) * ceil(ceil(W/2)/2)`` (8*8*64 = 4096 on 32x32 inputs); we size fc1 from ``in_shape``
  rather than pooling adaptively, which keeps the 28x28 model exact.
* Not reproduced: TF's NHWC flatten order of fc1 (matters only for porting TF checkpoints).
* parameters at width 1: 832 + 51,264 + 3,212,288 + 10,250 = 3,274,634.

``width`` is a multiplier on (32, 64, 1024).

MLP -- the voronoi paper (``/work/shared/papers/003_ecf3e37839b8b53b.txt`` line 84): "a fully connected network with
1 hidden layer, 100 hidden units, and ReLU activations" for the PLANES experiments.  ``hidden`` (or ``width``) sets
the hidden units; the input is flattened, so any ``in_shape`` works; default normalisation ``none``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


class MadryMnistCNN(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        c, h, w = in_shape
        c1, c2, f1 = (max(1, int(round(n * width))) for n in (32, 64, 1024))
        self.conv1 = nn.Conv2d(c, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        hh, ww = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        self.fc1 = nn.Linear(c2 * hh * ww, f1)
        self.fc2 = nn.Linear(f1, num_classes)
        for m in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-0.2, b=0.2)
            nn.init.constant_(m.bias, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 100):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden}")
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@register_model(default_width=1.0, tiny_width=0.125, width_doc="multiplier on (32, 64, 1024) channels/units")
def madry_mnist_cnn(*, in_shape, num_classes, width=1.0):
    """Madry et al. MNIST CNN: conv5x5x32-maxpool-conv5x5x64-maxpool-fc1024-fc (ReLU)."""
    return MadryMnistCNN(in_shape, num_classes, width)


@register_model(default_width=None, tiny_width=16, inputs="any", normalization="none",
                width_doc="hidden units (same as hidden=; default 100)")
def mlp(*, in_shape, num_classes, width=None, hidden=None):
    """One-hidden-layer ReLU MLP (voronoi paper, PLANES: 100 hidden units); input flattened."""
    if width is not None and hidden is not None and int(width) != int(hidden):
        raise ValueError(f"mlp: width={width} and hidden={hidden} disagree; pass one of them")
    units = hidden if hidden is not None else (width if width is not None else 100)
    return MLP(math.prod(in_shape), num_classes, int(units))
